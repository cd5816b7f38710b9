"""Local users to grid identities, the grid way: the grid-mapfile (and the proxies users delegated).

A grid-mapfile line maps a quoted DN to one or more local accounts::

    "/DC=org/DC=example/CN=Alice Smith" alice
    "/DC=org/DC=example/CN=Bob Jones" bob,bobj

Blank lines and lines starting with ``#`` are skipped; a line that is not of that shape is refused
with its number (a site's mistake must not silently map a user to nobody — or to somebody else). A
local user named on several lines (several DNs) is resolved to the DN that has a delegation at this
JARM when exactly one has; otherwise refused as ambiguous.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Callable

from gridcredit.errors import ConfigError, DomainError

GRIDMAP_BYTES_MAX = 16 * 1024 * 1024
AMBIGUOUS_USER = "AmbiguousUser"
_LINE = re.compile(r'"(/[^"]{1,1024})"\s+([A-Za-z0-9_.$-]{1,32}(?:,[A-Za-z0-9_.$-]{1,32})*)\s*')


def parse_gridmap(text: str, *, source: str = "grid-mapfile") -> dict[str, tuple[str, ...]]:
    """local user → the DNs mapped to it, in file order."""
    users: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.fullmatch(stripped)
        if match is None:
            raise ConfigError(f"{source} line {number} is not '\"/DN\" user[,user…]': {stripped[:120]!r}")
        dn = match.group(1)
        for user in match.group(2).split(","):
            if dn not in users.setdefault(user, []):
                users[user].append(dn)
    return {user: tuple(dns) for user, dns in users.items()}


class GridMap:
    """The grid-mapfile at ``path``, read again when it changes (its mtime and size)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._users: dict[str, tuple[str, ...]] = {}

    def dns_of(self, user: str) -> tuple[str, ...]:
        with self._lock:
            try:
                status = self.path.stat()
            except FileNotFoundError:
                self._seen, self._users = None, {}
                return ()
            if (status.st_mtime_ns, status.st_size) != self._seen:
                if status.st_size > GRIDMAP_BYTES_MAX:
                    raise ConfigError(f"{self.path} is larger than {GRIDMAP_BYTES_MAX:,} bytes")
                self._users = parse_gridmap(self.path.read_text(encoding="utf-8"), source=str(self.path))
                self._seen = (status.st_mtime_ns, status.st_size)
            return self._users.get(user, ())


def resolver(gridmap: GridMap, delegated: Callable[[str], object | None]) -> Callable[[str], str | None]:
    """``user → DN`` for the lifecycle: the one DN the grid-mapfile gives, or among several the one
    with a delegation; None when it gives none."""
    def user_dn(user: str) -> str | None:
        dns = gridmap.dns_of(user)
        if len(dns) <= 1:
            return dns[0] if dns else None
        with_delegation = [dn for dn in dns if delegated(dn) is not None]
        if len(with_delegation) == 1:
            return with_delegation[0]
        raise DomainError(f"local user {user} is mapped to {len(dns)} grid identities in {gridmap.path} and "
                          f"{len(with_delegation)} of them delegated a proxy here: which one pays is ambiguous; map "
                          f"the user to one DN", AMBIGUOUS_USER)
    return user_dn
