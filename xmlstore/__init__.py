"""The XML store: documents in collections, XPath queries, atomic transactions; two backends.

``open_store(config, state_dir)`` picks the backend from ``config.backend``:

* ``embedded`` (default, nothing to install): SQLite in WAL mode with ``synchronous=FULL`` at
  ``config.path`` or ``<state_dir>/store.sqlite``; XPath 1.0 evaluated by lxml.
* ``basex``: one BaseX database per collection on the server in ``config``; our own fsynced
  journal at ``config.path`` or ``<state_dir>/basex-journal/`` is the record, BaseX a checked
  view rebuilt from it when damaged or behind (see ``_basex``).

``indexes`` declares attribute indexes (``AttributeIndex``; see ``_api``), used by ``query``/``count``
with ``where=``. ``read_only=True`` opens without creating, repairing, applying or writing anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gridcredit.config import StoreConfig
from gridcredit.errors import StoreError

from ._api import (AttributeIndex, Backlog, DEFAULT_LIMITS, Document, NormalXml, QueryPage, StoreLimits, Transaction,
                   XmlStore)

__all__ = ["open_store", "AttributeIndex", "Backlog", "Document", "NormalXml", "QueryPage", "StoreLimits", "Transaction",
           "XmlStore", "DEFAULT_LIMITS"]


def open_store(config: StoreConfig, state_dir: Path, *, limits: StoreLimits = DEFAULT_LIMITS,
               indexes: Sequence[AttributeIndex] = (), read_only: bool = False) -> XmlStore:
    state_dir = Path(state_dir)
    if config.backend == "embedded":
        from ._embedded import EmbeddedStore
        path = Path(config.path).expanduser() if config.path else state_dir / "store.sqlite"
        return EmbeddedStore(path, timeout_s=config.timeout_s, limits=limits, indexes=indexes, read_only=read_only)
    if config.backend == "basex":
        from ._basex import BaseXStore
        journal_dir = Path(config.path).expanduser() if config.path else state_dir / "basex-journal"
        return BaseXStore(journal_dir, host=config.basex_host, port=config.basex_port, user=config.basex_user,
                          password=config.basex_password, timeout_s=config.timeout_s, limits=limits,
                          indexes=indexes, read_only=read_only, backlog_bytes_max=config.basex_backlog_bytes_max)
    raise StoreError(f"unknown store backend {config.backend!r}")
