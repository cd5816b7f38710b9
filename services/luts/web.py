"""The LUTS's page of the web view (issue 15): usage summaries by month, VO and site as bar charts.

The page asks ``Luts.summary`` with the person's principal, so the LUTS's policy (``choose_scope``:
their own records, a VO they manage, their site's machines, or everything for administrators) is the
one that decides what is counted — as for the Summary operation.
"""
from __future__ import annotations

from gridcredit.web import Markup, WebPage, WebRequest, bar_chart, credits, join, link, section, table, tag, url

from .luts import Luts, Summary

BASE = "/web/luts"
SCOPES = ("own", "vo", "site", "all")
US_PER_HOUR = 3_600_000_000


def _hours(microseconds: int) -> int:
    return microseconds // US_PER_HOUR


def _hours_text(microseconds: int) -> str:
    """Hours to a tenth, rounded down (integer arithmetic)."""
    tenths = microseconds * 10 // US_PER_HOUR
    return f"{tenths // 10:,}.{tenths % 10}"


def _micro_text(micro: int) -> str:
    """An amount in millionths, exactly (no trailing zeros)."""
    sign, micro = ("-", -micro) if micro < 0 else ("", micro)
    fraction = f"{micro % 1_000_000:06d}".rstrip("0")
    return f"{sign}{credits(micro // 1_000_000)}{'.' + fraction if fraction else ''}"


def _charge_text(row) -> str:
    return ", ".join(f"{_micro_text(charge.charge_micro)} {charge.unit or '(no unit)'}" for charge in row.charges)


def _by(summary: Summary, dimension: str, what: str) -> Markup:
    rows = summary.rows
    labels = [row.key.get(dimension) or "(none)" for row in rows]
    return section(
        f"By {what}",
        bar_chart(f"Jobs by {what}", [(label, row.jobs) for label, row in zip(labels, rows)]),
        bar_chart(f"Wall-clock hours by {what}", [(label, _hours(row.wall_us)) for label, row in zip(labels, rows)],
                  unit=" h"),
        table((what, "jobs", "wall hours", "CPU hours", "charges"),
              [(label, f"{row.jobs:,}", _hours_text(row.wall_us), _hours_text(row.cpu_us), _charge_text(row))
               for label, row in zip(labels, rows)], numeric=(1, 2, 3), empty="no usage recorded",
              class_=f"usage-by-{dimension}"),
        id_=f"by-{dimension}")


def _usage_page(request: WebRequest) -> Markup:
    luts: Luts = request.part
    scope = request.param("scope") or None
    from_month, to_month = request.param("from") or None, request.param("to") or None
    summaries = {dimension: luts.summary(request.principal, [dimension], from_month=from_month, to_month=to_month,
                                         scope=scope)
                 for dimension in ("month", "vo", "site")}
    chosen = summaries["month"].scope
    choices = join(*[join(tag("strong", name) if name == chosen else
                          link(url(f"{BASE}/usage", scope=name, **{"from": from_month, "to": to_month}), name), " ")
                     for name in SCOPES])
    period = (f"{from_month or 'the first month'} to {to_month or 'now'}" if from_month or to_month else "all months")
    return join(
        tag("p", "Usage records of the jobs you may see here: ", tag("strong", chosen, class_="scope"),
            " (your own jobs; a VO you manage; your site's machines; everything for administrators). "
            "Other scopes: ", choices, ". Period: ", period, "."),
        tag("form", tag("label", "from month ", tag("input", type="text", name="from", value=from_month or "",
                                                     size=8, placeholder="2026-01")),
            " ", tag("label", "to month ", tag("input", type="text", name="to", value=to_month or "", size=8,
                                               placeholder="2026-12")),
            tag("input", type="hidden", name="scope", value=scope or ""),
            " ", tag("button", "Show", type="submit"), method="get", action=f"{BASE}/usage", class_="query"),
        _by(summaries["month"], "month", "month"),
        _by(summaries["vo"], "vo", "VO"),
        _by(summaries["site"], "site", "site"))


def web_pages(luts: Luts, config) -> list[WebPage]:
    return [WebPage("usage", "Your usage", _usage_page, summary="jobs, hours and charges by month, VO and site")]
