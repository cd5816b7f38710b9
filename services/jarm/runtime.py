"""The JARM as the host runs it: what each worker builds (the Price Authority over the shared store),
and the sweep of expired guaranteed quotes."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from gridcredit.contract import BuildContext, TaskContext
from gridcredit.errors import StoreError
from gridcredit.timeunits import now_us

from .policy import JarmPolicy
from .store import PriceStore

log = logging.getLogger("gridcredit.services.jarm")
QUOTE_SWEEP_S = 600            # how often expired guaranteed quotes are deleted


@dataclass(frozen=True, slots=True)
class Jarm:
    """What one worker holds for the JARM: its prices in the store, its policy and its site's settings
    (``runtime_of(ctx).jarm`` in the SOAP operations)."""

    prices: PriceStore
    policy: JarmPolicy
    site: str
    quote_guarantee_s_max: int
    quotes_per_requester_max: int


def build(context: BuildContext) -> Jarm:
    settings = context.config.jarm
    return Jarm(PriceStore(context.store), JarmPolicy(price_admins=frozenset(settings.price_admins)),
                site=settings.site, quote_guarantee_s_max=settings.quote_guarantee_s_max,
                quotes_per_requester_max=settings.quotes_per_requester_max)


def sweep_quotes_forever(context: TaskContext) -> None:
    """Every ``QUOTE_SWEEP_S``, delete the guaranteed quotes that expired before the previous hour
    (store.py); a store that cannot be written now is tried again at the next round."""
    prices, stop = context.part.prices, context.stop
    while not stop.wait(QUOTE_SWEEP_S):
        try:
            deleted = prices.sweep_expired_quotes(now_us=now_us())
        except StoreError as error:   # the store busy or behind: expected, and the next round does it
            log.warning("the sweep of expired quotes cannot use the store (%s); retrying in %d s", error, QUOTE_SWEEP_S)
            continue
        if deleted:
            log.info("deleted %d expired guaranteed quotes", deleted)
