"""JARM's domain types: frozen, slotted dataclasses, each valid by construction.

Every type checks its own fields when it is made (``__post_init__``) and refuses bad values with a
``DomainError`` whose code names what was wrong (``InvalidPriceTable``, ``InvalidJobRequest``,
``InvalidUsage``, ``InvalidOccupancy``, ``InvalidQuote``): an instance that exists is within the
limits below, so the arithmetic in ``pricing.py`` never meets a negative price, a float or a job of
a billion cores.

* **Numbers** are Python ``int`` (``bool`` and ``float`` are refused, so is every other type): no
  floats anywhere. Names carry their unit last (``wall_s``, ``memory_mb``, ``price_micro``).
* **Time** is integer microseconds since the Unix epoch, UTC (``*_us``), as everywhere in
  gridcredit; durations of jobs are whole seconds (``*_s``) as Slurm gives them, CPU time
  milliseconds (``total_cpu_ms``: sacct's ``TotalCPU`` has millisecond digits).
* **Memory** is in MB as Slurm counts them (1 MB = 2**20 bytes; 1 GB = 1024 MB).

Limits (put a limit on everything; an absurd job is refused, never priced):

====================  ==========================  =============================================
what                  limit                       why
====================  ==========================  =============================================
cores (CPUs)          1 .. 1,048,576 (2**20)      larger than any Slurm cluster's job
nodes                 1 .. 65,536, ≤ cores        Slurm's own node-count range is similar
GPUs                  0 .. 65,536
memory                0 .. 2**30 MB (1 PiB)
time limit            1 s .. 366 days             an INFINITE time limit cannot be estimated
elapsed               0 .. 366 days
TotalCPU              ≤ cores max × elapsed max
MaxRSS                ≤ the memory limit
a price               0 .. 10**12 micro-credits   a million credits per price unit
rates in a table      1 .. 1024                   (partition, QoS) pairs
names                 1-64 of ``A-Za-z0-9_.+-``   partition, QoS, site; quote ids 1-128
version               1 .. 2**31 − 1
====================  ==========================  =============================================
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Mapping

from gridcredit.errors import DomainError

INVALID_PRICE_TABLE = "InvalidPriceTable"
INVALID_JOB_REQUEST = "InvalidJobRequest"
INVALID_USAGE = "InvalidUsage"
INVALID_OCCUPANCY = "InvalidOccupancy"
INVALID_QUOTE = "InvalidQuote"

CORES_MAX = 2**20
NODES_MAX = 65_536
GPUS_MAX = 65_536
MEMORY_MB_MAX = 2**30
SECONDS_PER_DAY = 86_400
TIME_LIMIT_S_MAX = 366 * SECONDS_PER_DAY
ELAPSED_S_MAX = 366 * SECONDS_PER_DAY
TOTAL_CPU_MS_MAX = CORES_MAX * ELAPSED_S_MAX * 1000
PRICE_MICRO_MAX = 10**12
RATES_MAX = 1024
VERSION_MAX = 2**31 - 1
TIME_US_MAX = 253_402_300_800 * 1_000_000       # 10000-01-01T00:00:00Z: beyond any datetime
PERMILLE = 1000
MULTIPLIER_PERMILLE_MAX = 10_000                # a load multiplier of at most 10×
OCCUPANCY_UNITS_MAX = 2**40                     # used and capacity of a partition (cores, nodes…)
MULTIPLIER_DENOMINATOR_MAX = PERMILLE * PERMILLE * OCCUPANCY_UNITS_MAX

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_QUOTE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")


class Metric(enum.Enum):
    """What a price table prices, in the order a breakdown lists them.

    The quantity of each is counted in a base unit; its price is stated per price unit (both below,
    in ``pricing.METRIC_UNITS``): core-seconds of wall time (price per core-hour), CPU milliseconds
    (per CPU-hour), MB-seconds of memory (per GB-hour), GPU-seconds (Slurm's TRES ``gres/gpu``; per
    GPU-hour), and one per job (a fee per job)."""

    CORE_WALL = "core-wall"
    CPU = "cpu"
    MEMORY = "memory"
    GPU = "gpu"
    JOB = "job"


class MemoryBasis(enum.Enum):
    """Which memory a measured job pays for: what it was allocated (``AllocTRES`` mem, held from
    other jobs), or the most it used (``MaxRSS``)."""

    ALLOCATED = "allocated"
    MAX_RSS = "max-rss"


def _whole(value, name: str, low: int, high: int, code: str) -> None:
    if type(value) is not int:  # noqa: E721 — bool and float are refused: a count is an int
        raise DomainError(f"{name} must be a whole number, not {value!r}", code)
    if not low <= value <= high:
        raise DomainError(f"{name} {value:,} is outside {low:,}..{high:,}", code)


def _whole_fields(value, code: str, limits: tuple[tuple[str, str, int, int], ...]) -> None:
    """Check each (field, what it is for people, least, greatest) of ``value`` with ``_whole``."""
    for name, what, low, high in limits:
        _whole(getattr(value, name), what, low, high, code)


def _name(value, what: str, code: str, pattern: re.Pattern = _NAME,
          form: str = "1-64 characters of A-Z a-z 0-9 _ . + -") -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise DomainError(f"{what} {value!r} is not a name: {form} (starting with a letter or digit)", code)


@dataclass(frozen=True, slots=True)
class LoadPricing:
    """DGAS's load-dependent price: a multiplier of the resource prices from the partition's
    occupancy, fixed when the job is reserved.

    At an occupancy at or below ``low_permille`` the multiplier is ``min_permille``/1000, at or
    above ``high_permille`` it is ``max_permille``/1000, and between them it rises linearly — an
    exact fraction, not rounded (``pricing.load_multiplier``)."""

    low_permille: int
    high_permille: int
    min_permille: int
    max_permille: int

    def __post_init__(self) -> None:
        code = INVALID_PRICE_TABLE
        _whole_fields(self, code, (
            ("low_permille", "the load pricing's low occupancy (permille)", 0, PERMILLE - 1),
            ("high_permille", "the load pricing's high occupancy (permille)", 1, PERMILLE),
            ("min_permille", "the load pricing's least multiplier (permille)", 1, MULTIPLIER_PERMILLE_MAX),
            ("max_permille", "the load pricing's greatest multiplier (permille)", 1, MULTIPLIER_PERMILLE_MAX)))
        if self.low_permille >= self.high_permille:
            raise DomainError(f"the load pricing's low occupancy ({self.low_permille}‰) must be below its high "
                              f"occupancy ({self.high_permille}‰)", code)
        if self.min_permille > self.max_permille:
            raise DomainError(f"the load pricing's least multiplier ({self.min_permille}‰) is above its greatest "
                              f"({self.max_permille}‰)", code)


@dataclass(frozen=True, slots=True)
class Rate:
    """The prices of one (partition, QoS): micro-credits per price unit of each metric.

    ``prices`` must name every metric (0 makes one free): a table that does not cover a metric is
    refused, so that nothing a job uses is priced by omission. Given as a mapping, it is kept as a
    tuple of (metric, price) in ``Metric`` order."""

    partition: str
    qos: str
    prices: tuple[tuple[Metric, int], ...] | Mapping[Metric, int]
    load: LoadPricing | None = None

    def __post_init__(self) -> None:
        code = INVALID_PRICE_TABLE
        _name(self.partition, "the partition", code)
        _name(self.qos, "the QoS", code)
        where = f"the rate of partition {self.partition!r}, QoS {self.qos!r}"
        try:
            pairs = tuple(self.prices.items() if isinstance(self.prices, Mapping) else self.prices)
            given = dict(pairs)
        except (TypeError, ValueError):
            raise DomainError(f"{where}: its prices must be a metric → price mapping, not {self.prices!r}",
                              code) from None
        if len(given) != len(pairs):
            raise DomainError(f"{where} prices a metric twice", code)
        unknown = [key for key in given if not isinstance(key, Metric)]
        if unknown:
            raise DomainError(f"{where} prices {unknown[0]!r}, which is not a metric "
                              f"({', '.join(m.value for m in Metric)})", code)
        missing = [metric.value for metric in Metric if metric not in given]
        if missing:
            raise DomainError(f"{where} does not price {', '.join(missing)}: every metric needs a price "
                              f"(0 makes it free)", code)
        for metric in Metric:
            _whole(given[metric], f"{where}: the {metric.value} price (micro-credits)", 0, PRICE_MICRO_MAX, code)
        if self.load is not None and not isinstance(self.load, LoadPricing):
            raise DomainError(f"{where}: its load pricing must be a LoadPricing, not {self.load!r}", code)
        object.__setattr__(self, "prices", tuple((metric, given[metric]) for metric in Metric))

    def price_micro(self, metric: Metric) -> int:
        return dict(self.prices)[metric]


@dataclass(frozen=True, slots=True)
class PriceTable:
    """One version of a site's prices: a rate per (partition, QoS), in force from ``effective_us``.

    A job is priced by the version in force when it was reserved: the reservation keeps the
    version number (``PricingBasis.version``), and its charge uses that same version."""

    site: str
    version: int
    effective_us: int
    rates: tuple[Rate, ...]
    memory_basis: MemoryBasis = MemoryBasis.ALLOCATED
    _index: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        code = INVALID_PRICE_TABLE
        _name(self.site, "the site", code)
        _whole(self.version, "the price table's version", 1, VERSION_MAX, code)
        _whole(self.effective_us, "the price table's effective time (µs)", 0, TIME_US_MAX, code)
        if not isinstance(self.memory_basis, MemoryBasis):
            raise DomainError(f"the memory basis must be one of {', '.join(b.value for b in MemoryBasis)}, "
                              f"not {self.memory_basis!r}", code)
        rates = tuple(self.rates) if isinstance(self.rates, (tuple, list)) else None
        if rates is None or not rates:
            raise DomainError("a price table needs at least one rate (a partition and QoS with its prices)", code)
        if len(rates) > RATES_MAX:
            raise DomainError(f"a price table has at most {RATES_MAX} rates, not {len(rates)}", code)
        index: dict[tuple[str, str], Rate] = {}
        for rate in rates:
            if not isinstance(rate, Rate):
                raise DomainError(f"a price table's rates are Rate values, not {rate!r}", code)
            key = (rate.partition, rate.qos)
            if key in index:
                raise DomainError(f"the price table has two rates for partition {rate.partition!r}, QoS {rate.qos!r}",
                                  code)
            index[key] = rate
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "_index", index)

    def rate(self, partition: str, qos: str) -> Rate | None:
        return self._index.get((partition, qos))


@dataclass(frozen=True, slots=True)
class Occupancy:
    """How full a partition is, exactly: ``used`` of ``capacity`` (e.g. allocated CPUs of all its
    CPUs, as ``sinfo``/``scontrol`` give them). ``used`` may exceed ``capacity`` (oversubscription):
    it counts as full."""

    used: int
    capacity: int

    def __post_init__(self) -> None:
        _whole(self.used, "the partition's used units", 0, OCCUPANCY_UNITS_MAX, INVALID_OCCUPANCY)
        _whole(self.capacity, "the partition's capacity", 1, OCCUPANCY_UNITS_MAX, INVALID_OCCUPANCY)


@dataclass(frozen=True, slots=True)
class Multiplier:
    """An exact fraction ``numerator/denominator`` (in lowest terms) scaling the resource prices."""

    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        _whole(self.denominator, "a multiplier's denominator", 1, MULTIPLIER_DENOMINATOR_MAX, INVALID_QUOTE)
        _whole(self.numerator, "a multiplier's numerator", 1,
               self.denominator * MULTIPLIER_PERMILLE_MAX // PERMILLE, INVALID_QUOTE)
        if _gcd(self.numerator, self.denominator) != 1:
            raise DomainError(f"the multiplier {self.numerator}/{self.denominator} is not in lowest terms",
                              INVALID_QUOTE)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


ONE = Multiplier(1, 1)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a job asks for, as Slurm's submission gives it: ``cores`` is the job's CPUs in all
    (``NumCPUs``), ``memory_mb`` its memory in all (``--mem`` × nodes, or ``--mem-per-cpu`` ×
    cores: the caller multiplies), ``time_limit_s`` its time limit (Slurm's minutes × 60), ``gpus``
    its GPUs in all (TRES ``gres/gpu``), ``nodes`` its nodes."""

    partition: str
    qos: str
    cores: int
    time_limit_s: int
    memory_mb: int = 0
    gpus: int = 0
    nodes: int = 1

    def __post_init__(self) -> None:
        code = INVALID_JOB_REQUEST
        _name(self.partition, "the partition", code)
        _name(self.qos, "the QoS", code)
        _whole_fields(self, code, (
            ("cores", "the job's cores", 1, CORES_MAX),
            ("time_limit_s", "the job's time limit (s)", 1, TIME_LIMIT_S_MAX),
            ("memory_mb", "the job's memory (MB)", 0, MEMORY_MB_MAX),
            ("gpus", "the job's GPUs", 0, GPUS_MAX),
            ("nodes", "the job's nodes", 1, NODES_MAX)))
        if self.nodes > self.cores:
            raise DomainError(f"the job asks for {self.nodes} nodes but only {self.cores} cores: every node "
                              f"gives it at least one", code)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a job used, as ``sacct`` gives it after the job: ``elapsed_s`` (``Elapsed``),
    ``total_cpu_ms`` (``TotalCPU``), the allocation (``AllocTRES``: ``cpu`` → ``cores``, ``mem``
    → ``memory_mb``, ``gres/gpu`` → ``gpus``, ``node`` → ``nodes``) and ``max_rss_mb``
    (``MaxRSS``, the largest of its steps). A job that never started has zeros."""

    partition: str
    qos: str
    elapsed_s: int
    total_cpu_ms: int
    cores: int
    memory_mb: int = 0
    gpus: int = 0
    nodes: int = 0
    max_rss_mb: int = 0

    def __post_init__(self) -> None:
        code = INVALID_USAGE
        _name(self.partition, "the partition", code)
        _name(self.qos, "the QoS", code)
        _whole_fields(self, code, (
            ("elapsed_s", "the job's elapsed time (s)", 0, ELAPSED_S_MAX),
            ("total_cpu_ms", "the job's CPU time (ms)", 0, TOTAL_CPU_MS_MAX),
            ("cores", "the job's allocated cores", 0, CORES_MAX),
            ("memory_mb", "the job's allocated memory (MB)", 0, MEMORY_MB_MAX),
            ("gpus", "the job's allocated GPUs", 0, GPUS_MAX),
            ("nodes", "the job's allocated nodes", 0, NODES_MAX),
            ("max_rss_mb", "the job's MaxRSS (MB)", 0, MEMORY_MB_MAX)))


@dataclass(frozen=True, slots=True)
class PricingBasis:
    """What a reservation keeps to price its job: the site's table version in force when it was
    reserved (or its guaranteed quote's) and the load multiplier fixed then. The charge uses the
    same."""

    site: str
    version: int
    partition: str
    qos: str
    multiplier: Multiplier = ONE


@dataclass(frozen=True, slots=True)
class CostLine:
    """One metric of a cost: ``quantity`` in the metric's base unit, ``price_micro`` per its price
    unit, and the exact amount ``numerator / Cost.denominator`` credits (not rounded)."""

    metric: Metric
    quantity: int
    price_micro: int
    numerator: int


@dataclass(frozen=True, slots=True)
class Cost:
    """A cost with its breakdown: the exact amount is ``numerator / denominator`` credits, the sum
    of its lines' numerators; ``credits`` is that amount rounded once, half up, to whole credits."""

    lines: tuple[CostLine, ...]
    numerator: int
    denominator: int
    credits: int
    multiplier: Multiplier

    def line(self, metric: Metric) -> CostLine:
        return next(line for line in self.lines if line.metric is metric)


@dataclass(frozen=True, slots=True)
class Quote:
    """A cost estimate of a request at a basis. Guaranteed when ``valid_until_us`` is set: a
    reservation presenting ``quote_id`` until then is priced by ``basis`` (its version and its
    multiplier) even after the prices or the load changed (``pricing.honour``)."""

    quote_id: str
    basis: PricingBasis
    request: JobRequest
    cost: Cost
    issued_us: int
    valid_until_us: int | None = None

    @property
    def guaranteed(self) -> bool:
        return self.valid_until_us is not None


def check_quote_id(quote_id: str) -> None:
    _name(quote_id, "the quote id", INVALID_QUOTE, _QUOTE_ID, "1-128 characters of A-Z a-z 0-9 _ . : + -")
