"""What every service's policy module shares: a rule per operation, and a record of decisions.

Each ``services/<name>/policy.py`` is the one place its operations are decided (principal ×
operation × resource). It lists a ``Rule`` for every operation in a ``PolicyBook`` and makes every
decision through it: ``decide`` (allowed or refused with ``NotAuthorized``), ``refuse`` (a refusal
in words of its own) or ``allow``. The book counts decisions per (operation, allowed) in this
process, so a test can walk every operation of a service's WSDL and see each reach its policy;
a decision for an operation without a rule is a programming error and fails loudly.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Mapping

from .errors import DomainError

NOT_AUTHORIZED = "NotAuthorized"


@dataclass(frozen=True, slots=True)
class Rule:
    who: str                             # who may, in words (for people and the documentation)
    changes_state: bool                  # a limited proxy (RFC 3820, for data transfer) may not
    soap: bool = True                    # an operation of the service's WSDL (False: a route or its own work)


class PolicyBook:
    def __init__(self, service: str, rules: Mapping[str, Rule]) -> None:
        self.service = service
        self.rules = dict(rules)
        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def decisions(self) -> dict[tuple[str, bool], int]:
        """How many decisions this process made, by (operation, allowed)."""
        with self._lock:
            return dict(self._counts)

    def record(self, operation: str, allowed: bool) -> None:
        if operation not in self.rules:
            raise KeyError(f"the {self.service}'s policy has no rule for the operation {operation!r}")
        with self._lock:
            self._counts[operation, allowed] += 1

    def allow(self, operation: str) -> None:
        self.record(operation, True)

    def decide(self, operation: str, allowed: bool, message: str, code: str = NOT_AUTHORIZED) -> None:
        """Record the decision; refuse with ``message`` (a ``DomainError`` with ``code``) unless ``allowed``."""
        self.record(operation, allowed)
        if not allowed:
            raise DomainError(message, code)

    def refuse(self, operation: str, message: str, code: str = NOT_AUTHORIZED) -> DomainError:
        """A refusal (recorded as one) for the caller to raise."""
        self.record(operation, False)
        return DomainError(message, code)

    def require_full_credential(self, principal, operation: str, what: str) -> None:
        """A limited proxy may read but never change state (asked before anything else)."""
        if principal.limited and self.rules[operation].changes_state:
            raise self.refuse(operation, f"a limited proxy may not {what}; use a full proxy or your certificate")
