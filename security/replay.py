"""A replay cache shared by every server worker process and surviving a restart.

Keyed on a digest of the signer's certificate and the signed SignedInfo (``wssec.replay_key``,
which no re-spelling of the signature escapes); an entry lives until the message's Timestamp
would be refused anyway (its honoured expiry plus the clock skew). SQLite in WAL mode gives one
file that several processes can write at once; entries are bounded and purged as they expire.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ..errors import SecurityError
from .wssec import ReplayCacheProtocol

_SCHEMA = "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
_PURGE_EVERY_S = 30.0


class SqliteReplayCache(ReplayCacheProtocol):
    def __init__(self, path: Path, *, entries_max: int = 2_000_000, busy_timeout_s: float = 5.0) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._entries_max = entries_max
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._next_purge = 0.0
        connection = self._connection()
        # Several workers open the cache at once; switching to WAL needs a moment alone with the file
        # and does not wait on the busy timeout, so try a few times (it persists once set).
        for attempt in range(50):
            try:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 49:
                    raise SecurityError(f"the replay cache {self._path} cannot be opened ({error})", "InvalidSecurity") from None
                time.sleep(0.02 * (attempt + 1))

    def close(self) -> None:
        """Close this thread's connection. SQLite must not carry an open connection across a fork:
        whoever makes the cache before forking workers closes it first (the workers open their own)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # autocommit mode: each INSERT is its own transaction. synchronous=NORMAL in WAL mode
            # survives a crash of the process (our restart case); a power loss may forget the last entries.
            connection = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def check_and_store(self, key: str, expires_at: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        connection = self._connection()
        try:
            if now >= self._next_purge:
                self._next_purge = now + _PURGE_EVERY_S
                connection.execute("DELETE FROM seen WHERE expires_at < ?", (now,))
                count = connection.execute("SELECT count(*) FROM seen").fetchone()[0]
                if count >= self._entries_max:
                    raise SecurityError("the replay cache is full; try again later", "InvalidSecurity")
            inserted = connection.execute(
                "INSERT INTO seen (key, expires_at) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET expires_at = excluded.expires_at WHERE seen.expires_at < ?",
                (key, expires_at, now),
            ).rowcount
        except sqlite3.Error as error:
            raise SecurityError(f"the replay cache is unavailable ({error})", "InvalidSecurity") from None
        return inserted == 1
