"""The JARM as the host runs it: what each worker builds (the Price Authority over the shared store)."""
from __future__ import annotations

from dataclasses import dataclass

from gridcredit.contract import BuildContext

from .policy import JarmPolicy
from .store import PriceStore


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
