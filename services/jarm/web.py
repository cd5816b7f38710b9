"""The JARM's page of the web view (issue 15): the person's own job reservations.

Asked as ListReservations of their own DN (``policy.authorize_list_reservations``), from the same
reservation store; shown only by a site that makes reservations.
"""
from __future__ import annotations

from gridcredit.web import Markup, WebPage, WebRequest, bar_chart, credits, join, moment, section, table

from . import policy

RESERVATIONS_SHOWN_MAX = 100


def _job(reservation) -> str:
    key = reservation.key
    task = f"_{key.array_task}" if key.array_task is not None else ""
    restarts = f" (restart {key.restarts})" if key.restarts else ""
    return f"{key.cluster}:{key.job_id}{task}{restarts}"


def _reservations_page(request: WebRequest) -> Markup:
    jarm = request.part
    principal = request.principal
    policy.authorize_list_reservations(jarm.policy, principal, principal.dn)
    offset = request.int_param("from", 0)
    found = list(jarm.lifecycle.reservations.of_user(principal.dn, offset=offset, limit=RESERVATIONS_SHOWN_MAX))
    rows = [(_job(r), r.state.value, r.account, credits(r.estimate), credits(r.hold_amount), credits(r.cost),
             credits(r.charged), r.hold_id or "", moment(r.created_us), r.note or "") for r in found]
    costs = [(_job(r), r.charged) for r in found if r.charged]
    return join(
        section("Your job reservations",
                bar_chart("Credits charged per job", costs) if costs else None,
                table(("job", "state", "account", "estimate", "held", "cost", "charged", "hold", "reserved", "note"),
                      rows, numeric=(3, 4, 5, 6), empty="You have no job reservations at this site.",
                      class_="reservations"), id_="reservations"))


def web_pages(jarm, config) -> list[WebPage]:
    """The reservations page, when this site makes reservations (its [jarm] section names a site_account)."""
    if jarm.lifecycle is None:
        return []
    return [WebPage("reservations", "Your job reservations", _reservations_page,
                    summary="what your batch jobs reserved and were charged")]
