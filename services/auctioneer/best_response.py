"""The best response of a bidder: how to split a budget over hosts to get the most (Feldman, Lai & Zhang,
"A price-anticipating resource allocation mechanism for distributed shared clusters", EC 2005). Pure.

A bidder with ``budget`` X bids x_j on host j, where the others bid y_j in all; it gets the share
x_j / (x_j + y_j) of the host, which is worth w_j to it (e.g. the host's CPUs). It maximizes

    U(x) = Σ_j w_j · x_j / (x_j + y_j)      subject to  Σ_j x_j = X,  x_j ≥ 0.

**Real-valued optimum** (:func:`best_response_real`, FLZ's algorithm): sort the hosts by w_j / y_j,
largest first; keep the longest prefix k for which √(w_k / y_k) > S_k / (X + Y_k), with
S_k = Σ_{l≤k} √(w_l · y_l) and Y_k = Σ_{l≤k} y_l; then x_j = √(w_j · y_j) · (X + Y_k) / S_k − y_j on
those k hosts and 0 on the others. Computed in ``decimal`` with 60 significant digits (square roots
correctly rounded), so its error is far below one unit for any allowed input. It satisfies the KKT
conditions: w_j·y_j/(x_j+y_j)² is the same λ on every host with x_j > 0, and w_j/y_j ≤ λ on the others.

**Integer bids** (:func:`best_response`, what is actually bid: integers in the unit of ``others``,
µcr/s for rates): U is a sum of concave functions of each x_j, also on the integers, so an integer
split is optimal exactly when no single unit moved from one host to another raises U. The rounding:

1. start from the real optimum rounded down (less a margin of 10^-20 for the decimal error);
2. give the leftover units — at most one per host — one at a time to the host where one more unit
   raises U the most (exact fractions; ties to the earlier host in the order of the ``hosts`` given);
3. then, while moving one unit from the host where it is worth least to the host where one more is
   worth most raises U, move it. This makes the result optimal whatever steps 1-2 did: the rounded-down
   real optimum is NOT always below an integer optimum (one unit on a host with a small bid adds less
   than the derivative there, so the integer optimum moves a few units to hosts with large bids: a
   fraction of a move per host in random trials, at most 4·hosts + 64 moves allowed, an invariant);
   it is also what funds the uncontested hosts, below.

So Σ x_j == X exactly: no unit is lost. Edge cases, decided:

* **X = 0**: every host gets 0.
* **One host**: it gets X.
* **A host nobody else bids on (y_j = 0)**: one unit buys all of it (w_j), more buys nothing. The
  real-valued problem has no optimum there (any ε > 0 gets the whole host), so
  :func:`best_response_real` leaves such hosts out; the integer split gives them 1 unit each when that
  is worth more than the unit elsewhere (step 3). When every host is uncontested and each has its unit,
  the units left are worth nothing anywhere: they go to the funded host with the largest w_j (the
  first in the given order of those): the sum is still X — a bidder who does not want to spend them
  bids a smaller budget.
"""
from __future__ import annotations

import decimal
import heapq
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Mapping, Sequence

from gridcredit.errors import DomainError, invariant

INVALID_ARGUMENT = "InvalidArgument"
HOSTS_MAX = 1_000
BUDGET_MAX = 10**18
OTHERS_MAX = 10**20
WEIGHT_MAX = 10**9
_PRECISION = 60
_ROUNDING_MARGIN = Decimal("1e-20")


@dataclass(frozen=True, slots=True)
class HostOffer:
    """A host as a bidder sees it: ``weight`` w_j what the whole host is worth to it (≥ 1, e.g. its CPUs),
    ``others`` y_j the sum of the other bidders' bids on it (≥ 0, e.g. Σ rates in µcr/s)."""
    host_id: str
    weight: int
    others: int


def _whole(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:  # noqa: E721 — bool is refused
        raise DomainError(f"{what} must be a whole number {low:,}..{high:,}, not {value!r}", INVALID_ARGUMENT)
    return value


def _check(budget: object, hosts: Sequence[HostOffer]) -> list[HostOffer]:
    _whole(budget, "a budget", 0, BUDGET_MAX)
    hosts = list(hosts)
    if not hosts:
        raise DomainError("a best response needs at least one host", INVALID_ARGUMENT)
    if len(hosts) > HOSTS_MAX:
        raise DomainError(f"a best response takes at most {HOSTS_MAX:,} hosts, not {len(hosts):,}", INVALID_ARGUMENT)
    seen = set()
    for host in hosts:
        if not isinstance(host, HostOffer) or not isinstance(host.host_id, str) or not host.host_id:
            raise DomainError(f"a host is a HostOffer with a host id, not {host!r}", INVALID_ARGUMENT)
        if host.host_id in seen:
            raise DomainError(f"host {host.host_id!r} is given twice", INVALID_ARGUMENT)
        seen.add(host.host_id)
        _whole(host.weight, f"host {host.host_id}'s weight", 1, WEIGHT_MAX)
        _whole(host.others, f"host {host.host_id}'s other bids", 0, OTHERS_MAX)
    return hosts


def _real(budget: int, hosts: list[HostOffer]) -> dict[str, Decimal]:
    contested = sorted((host for host in hosts if host.others > 0),
                       key=lambda host: Fraction(host.weight, host.others), reverse=True)   # stable: ties keep order
    result = {host.host_id: Decimal(0) for host in contested}
    if budget == 0 or not contested:
        return result
    roots = [Decimal(host.weight * host.others).sqrt() for host in contested]
    best_k, sum_roots, sum_others = 0, Decimal(0), 0
    for index, host in enumerate(contested):
        sum_roots += roots[index]
        sum_others += host.others
        # √(w_k/y_k) > S_k/(X + Y_k)  ⟺  √(w_k·y_k)·(X + Y_k) > S_k·y_k   (y_k > 0)
        if roots[index] * (budget + sum_others) > sum_roots * host.others:
            best_k = index + 1
    scale = (budget + sum(host.others for host in contested[:best_k])) / sum(roots[:best_k])
    for index in range(best_k):
        host = contested[index]
        result[host.host_id] = max(Decimal(0), roots[index] * scale - host.others)
    return result


def best_response_real(budget: int, hosts: Sequence[HostOffer]) -> dict[str, Decimal]:
    """FLZ's real-valued optimum over the hosts others bid on (``others`` > 0), 60 significant digits."""
    hosts = _check(budget, hosts)
    with decimal.localcontext() as context:
        context.prec = _PRECISION
        context.rounding = decimal.ROUND_HALF_EVEN
        return _real(budget, hosts)


def _value(host: HostOffer, amount: int) -> Fraction:
    total = amount + host.others
    return Fraction(host.weight * amount, total) if total else Fraction(0)


def _gain(host: HostOffer, amount: int) -> Fraction:
    """What one more unit on ``host`` adds when it holds ``amount``."""
    if host.others == 0:
        return Fraction(host.weight) if amount == 0 else Fraction(0)
    return Fraction(host.weight * host.others, (amount + host.others) * (amount + host.others + 1))


def _loss(host: HostOffer, amount: int) -> Fraction:
    """What one unit less on ``host`` takes away when it holds ``amount`` (≥ 1)."""
    return _gain(host, amount - 1)


def utility(split: Mapping[str, int], hosts: Sequence[HostOffer]) -> Fraction:
    """Σ w_j · x_j / (x_j + y_j), exact (a host with x_j = y_j = 0 counts 0)."""
    return sum((_value(host, split.get(host.host_id, 0)) for host in hosts), Fraction(0))


def best_response(budget: int, hosts: Sequence[HostOffer]) -> dict[str, int]:
    """The integer split of ``budget`` over ``hosts`` with the largest :func:`utility`; Σ == budget."""
    hosts = _check(budget, hosts)
    with decimal.localcontext() as context:
        context.prec = _PRECISION
        context.rounding = decimal.ROUND_HALF_EVEN
        real = _real(budget, hosts)
        split = {host.host_id: int(max(Decimal(0), real.get(host.host_id, Decimal(0)) - _ROUNDING_MARGIN)
                                   .to_integral_value(rounding=decimal.ROUND_FLOOR)) for host in hosts}
    leftover = budget - sum(split.values())
    invariant(0 <= leftover, f"the rounded-down split of {budget} does not exceed it")
    # 2. the leftover, unit by unit, where it adds most (at most about one per host when others bid)
    gains = [(-_gain(host, split[host.host_id]), index) for index, host in enumerate(hosts)]
    heapq.heapify(gains)                           # the largest gain first; ties to the earlier host
    while leftover > 0:
        negative_gain, index = gains[0]
        if negative_gain == 0:
            break                                  # nothing gains any more: every host is uncontested and funded
        best = hosts[index]
        split[best.host_id] += 1
        leftover -= 1
        heapq.heapreplace(gains, (-_gain(best, split[best.host_id]), index))
    if leftover > 0:
        funded = [host for host in hosts if split[host.host_id] > 0]
        keeper = max(funded or hosts, key=lambda host: host.weight)
        split[keeper.host_id] += leftover
        leftover = 0
    # 3. single-unit moves while one raises the utility (optimal for a separable concave objective)
    moves_max = 4 * len(hosts) + 64
    for _ in range(moves_max + 1):
        taker = max(hosts, key=lambda host: _gain(host, split[host.host_id]))
        givers = [host for host in hosts if split[host.host_id] > 0 and host is not taker]
        if not givers:
            break
        giver = min(givers, key=lambda host: _loss(host, split[host.host_id]))
        if _gain(taker, split[taker.host_id]) <= _loss(giver, split[giver.host_id]):
            break
        split[giver.host_id] -= 1
        split[taker.host_id] += 1
    else:
        invariant(False, f"a best response of {budget} over {len(hosts)} hosts settles within {moves_max} moves")
    invariant(sum(split.values()) == budget, "the split spends the budget exactly")
    return split
