"""Who may do what in the JARM: every operation's decision is made here (gridcredit/policy.py).

Today the JARM answers ``WhoAmI`` only, which anyone the host authenticated may call; the
operations to come get their rules here, next to it.
"""
from __future__ import annotations

from gridcredit.policy import PolicyBook, Rule

BOOK = PolicyBook("JARM", {
    "WhoAmI": Rule("anyone authenticated", False),
})


def authorize_anyone(operation: str) -> None:
    BOOK.allow(operation)
