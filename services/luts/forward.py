"""Forwarding usage records from this LUTS to a higher-level LUTS (``luts.forward_to``).

With forwarding on, the core queues every record it stores or replaces in the collection
``urfwd`` in the same transaction as the record (``<received µs>-<record hash>`` → ``n:Forward``
naming the record's month and hash). The :class:`Forwarder` works like the spool's sender:

* reads the queue in id order (``store.scan``), looks each record up (``Luts.stored``) and packs
  the originals — exactly as this LUTS received them — into ``UsageRecords`` batches
  (``spool.BatchSender``: the same containers, so the upstream LUTS sees the same canonical
  record, and re-sending one is a ``duplicate`` there);
* publishes each batch to the upstream LUTS with this host's certificate;
* when every record of a queue entry is settled upstream, deletes the entry — for a whole batch
  in one store transaction. A record the upstream refuses or finds invalid is not sent again:
  its entry moves, with the reason, to ``urfwd_rejected`` (and a warning is logged).
* the upstream unreachable, a server or security fault, or this host refused as a publisher:
  the round stops, every entry stays queued, and the next round (``forward_interval_s`` later)
  starts again from the oldest. A crash at any point leaves entries that are sent again,
  which the upstream answers ``duplicate``.

An entry whose record is gone (a replaced record that moved to another month; the new version has
an entry of its own) is deleted without sending.

One forwarder runs per host: the LUTS declares it a once-per-host background task
(services/luts/runtime.py), so every worker tries its host-wide lock (``gridcredit.singleton``,
held by server/runtime.py) and the one holding it runs ``run_forwarder``; a worker that dies hands
the work to another.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lxml import etree

from gridcredit.errors import GridcreditError
from gridcredit.singleton import SingletonLock, run_rounds

from .spool import BATCH_BYTES_DEFAULT, BATCH_RECORDS_DEFAULT, BatchSender, Outgoing, SendStopped, Settled

log = logging.getLogger("gridcredit.luts.forward")

REJECTED = "urfwd_rejected"
SCAN_PAGE = 1000
ROUND_ENTRIES_MAX = 100_000          # entries one round reads; the rest wait for the next round
NS = "urn:gridcredit:luts:1"


@dataclass(frozen=True, slots=True)
class ForwardReport:
    entries_done: int               # queue entries settled and deleted (incl. those whose record is gone)
    records_stored: int             # upstream answers
    records_duplicate: int
    records_rejected: int           # moved to urfwd_rejected
    more: bool                      # the round ended at ROUND_ENTRIES_MAX with entries left
    stopped: str | None             # why the round ended early (entries stay queued)


class Forwarder:
    """Sends the forwarding queue of one LUTS to the upstream LUTS (see the module docstring).

    ``client_factory()`` makes the upstream client (anything with ``publish``); it is made when a
    round first needs it and kept while it works.
    """

    def __init__(self, luts, client_factory: Callable[[], object], *, batch_records: int = BATCH_RECORDS_DEFAULT,
                 batch_bytes_max: int = BATCH_BYTES_DEFAULT, round_entries_max: int = ROUND_ENTRIES_MAX) -> None:
        self.luts = luts
        self.store = luts.store
        self.queue = luts.FORWARD_QUEUE
        self.client_factory = client_factory
        self.batch_records = batch_records
        self.batch_bytes_max = batch_bytes_max
        self.round_entries_max = round_entries_max
        self._client = None

    def _upstream(self):
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def forward(self) -> ForwardReport:
        """One round: every entry queued now (up to ``round_entries_max``), oldest first."""
        done = rejected = 0
        more = False

        def settled(batch: list[Settled]) -> None:
            nonlocal done, rejected
            self.store.transact(lambda tx: self._settle(tx, batch))
            done += len(batch)
            rejected += sum(len(one.rejected) + (one.error is not None) for one in batch)
            for one in batch:
                for result in one.rejected:
                    log.warning("forwarding: the upstream LUTS %s record %s: %s; kept in %s", result.status,
                                result.record_id, result.message, REJECTED)
                if one.error is not None:
                    log.warning("forwarding: queue entry %s cannot be sent: %s; kept in %s", one.document.name,
                                one.error, REJECTED)

        sender = replacer = None
        try:
            sender = BatchSender(_LazyClient(self._upstream), on_settled=settled, batch_records=self.batch_records,
                                 batch_bytes_max=self.batch_bytes_max)
            # Replacements go alone with replace=True, after everything queued before them was sent
            # (upstream must have the old version before it can take the new one in its place).
            replacer = BatchSender(_LazyClient(self._upstream), on_settled=settled, batch_records=1,
                                   batch_bytes_max=self.batch_bytes_max, replace=True)
            after, read = None, 0
            while read < self.round_entries_max:
                page = self.store.scan(self.queue, after_id=after, limit=min(SCAN_PAGE, self.round_entries_max - read))
                if not page:
                    break
                gone = []
                for document in page:
                    after = document.doc_id
                    read += 1
                    entry = etree.fromstring(document.xml)
                    record = self.luts.stored(entry.get("month"), entry.get("id"))
                    if record is None:
                        gone.append(document.doc_id)
                        continue
                    outgoing = Outgoing(document.doc_id, record.original, (entry.get("month"), entry.get("id")))
                    if entry.get("replace") == "true":
                        sender.flush()
                        replacer.add(outgoing)
                        replacer.flush()
                    else:
                        sender.add(outgoing)
                if gone:
                    self.store.transact(lambda tx: [tx.delete(self.queue, doc_id) for doc_id in gone])
                    done += len(gone)
            else:
                more = True
            sender.finish()
            stopped = None
        except SendStopped as error:
            stopped = str(error)
        except GridcreditError as error:  # the upstream client could not be made (unreachable, credential)
            stopped = f"{type(error).__name__}: {error}"
            self._client = None
        statuses: dict[str, int] = {}
        for one in (sender, replacer):
            for status, count in (one.statuses if one is not None else {}).items():
                statuses[status] = statuses.get(status, 0) + count
        return ForwardReport(entries_done=done, records_stored=statuses.get("stored", 0),
                             records_duplicate=statuses.get("duplicate", 0), records_rejected=rejected,
                             more=more and stopped is None, stopped=stopped)

    def _settle(self, tx, batch: list[Settled]) -> None:
        for one in batch:
            tx.delete(self.queue, one.document.name)
            problems = [(result.status, result.record_id, result.message) for result in one.rejected]
            if one.error is not None:
                problems.append(("unreadable", None, one.error))
            if problems:
                month, record_hash = one.document.context
                element = etree.Element(f"{{{NS}}}ForwardRejected", nsmap={"n": NS}, month=month, id=record_hash)
                for status, record_id, message in problems:
                    etree.SubElement(element, f"{{{NS}}}Reason", status=status, rid=record_id or "").text = message
                tx.put(REJECTED, one.document.name, etree.tostring(element, encoding="utf-8"))

    def queued(self) -> int:
        """Entries waiting (counted page by page; for tests and status)."""
        count, after = 0, None
        while True:
            page = self.store.scan(self.queue, after_id=after, limit=SCAN_PAGE)
            if not page:
                return count
            count += len(page)
            after = page[-1].doc_id


class _LazyClient:
    """Makes the upstream client on the first publish, so a round with nothing to send makes none."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory

    def publish(self, document: bytes, *, replace: bool = False):
        return self._factory().publish(document, replace=replace)


# -- the task that runs it, once per host -----------------------------------------------------------


def upstream_client_factory(config, files) -> Callable[[], object]:
    """The upstream LutsClient, signing with this host's certificate."""

    def make():
        from gridcredit.security.credentials import load_credential

        from .client import LutsClient

        credential = load_credential(cert_path=str(files.host_cert), key_path=str(files.host_key))
        return LutsClient(config.luts.forward_to, credential=credential, trust_dir=Path(files.trust_dir),
                          timeout_s=120.0, retries=1)
    return make


def run_forwarder(forwarder: Forwarder, *, interval_s: float, stop: threading.Event,
                  lock: SingletonLock | None = None) -> None:
    """Forward every ``interval_s`` (at once again while a round leaves more) until ``stop``, in
    the one process of the host that holds ``lock`` (gridcredit/singleton.py; None: the caller
    runs this in one process of the host)."""
    failing = False

    def one_round() -> bool:
        nonlocal failing
        report = forwarder.forward()
        if report.stopped:
            if not failing:
                log.warning("forwarding to the upstream LUTS stopped (records stay queued, retried every %s s): "
                            "%s", interval_s, report.stopped)
            failing = True
        elif failing:
            log.info("forwarding to the upstream LUTS works again")
            failing = False
        if report.entries_done:
            log.info("forwarded %d queued records: %d stored upstream, %d already there, %d rejected",
                     report.entries_done, report.records_stored, report.records_duplicate, report.records_rejected)
        return report.more

    run_rounds(stop, interval_s=interval_s, work=one_round, name="forwarding round", lock=lock)


__all__ = ["ForwardReport", "Forwarder", "REJECTED", "run_forwarder", "upstream_client_factory"]
