"""SGAS-compatible registration for reporters that exist: ``POST <luts.sgas_path>/ur``.

ARC's accounting publisher (``jura-ng``, SGAS target; see docs/arc-sgas.md) and other SGAS
reporters POST a ``UsageRecords`` document over HTTPS, authenticated by the site's TLS client
certificate, and count the batch as delivered when the answer is HTTP 200; any other status makes
them keep the records and send the same batch again later.

So the answer is:

* 200 when the document was read and every record got its result: stored, already there
  (``duplicate``), or one that can never be stored (unreadable, not this publisher's machine, a
  different record under a used id). Those last are logged here and listed in the body — answering
  non-200 for them would make the reporter re-send the same batch forever and block every later one;
* 403 when the certificate is missing or its holder may not publish;
* 200 also for a document that cannot be read at all: it is kept byte for byte, with the reason,
  in the ``sgas_quarantine`` collection for an operator, and logged — ARC 6.17 writes a ``&`` in a
  job name unescaped, so refusing would block that site's accounting for good;
* 503 when the store failed (nothing was stored for the chunk that failed; the reporter retries).

Encoding. ARC's publisher hands Python's ``http.client`` a ``str`` body, which goes out as
ISO-8859-1 although the document declares UTF-8 (docs/arc-sgas.md). A document that is not valid
UTF-8 but declares UTF-8 (or nothing) is therefore read as ISO-8859-1 — the only change made to
the bytes is that declaration — and the records' originals are kept as those characters in UTF-8.

The body is plain text, one line per record that was not stored, after a summary line.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from lxml import etree

from gridcredit.errors import DomainError, StoreError

from .luts import NS, Caller, Luts, key_hash

QUARANTINE = "sgas_quarantine"
_DECLARATION = re.compile(rb"^(\xef\xbb\xbf)?<\?xml[^>]*\?>")

log = logging.getLogger("gridcredit.luts.sgas")


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: str
    body: str
    content_type: str = "text/plain; charset=utf-8"


def register_usage_records(luts: Luts, data: bytes, caller: Caller | None) -> HttpAnswer:
    if caller is None:
        return HttpAnswer("403 Forbidden", "present the site's host certificate (TLS client authentication)\n")
    try:
        report = luts.publish(as_declared(data), caller)
    except DomainError as error:
        if error.code == "NotAuthorized":
            log.warning("SGAS registration from %s refused: %s", caller.dn, error)
            return HttpAnswer("403 Forbidden", f"{error}\n")
        try:
            doc_id = quarantine(luts, data, caller, str(error))
        except StoreError as store_error:
            log.error("SGAS registration from %s: cannot quarantine an unreadable document: %s", caller.dn, store_error)
            return HttpAnswer("400 Bad Request", f"{error}\n")
        log.warning("SGAS registration from %s: unreadable document kept as %s/%s for an operator: %s",
                    caller.dn, QUARANTINE, doc_id, error)
        return HttpAnswer("200 OK", f"not stored: the document cannot be read ({error}); it is kept as "
                                    f"{QUARANTINE}/{doc_id} for the LUTS operator\n")
    except StoreError as error:
        log.error("SGAS registration from %s failed in the store: %s", caller.dn, error)
        return HttpAnswer("503 Service Unavailable", "the usage-record store is unavailable; send again later\n")
    lines = [f"stored {report.count('stored')}, already stored {report.count('duplicate')}, "
             f"not stored {report.count('refused') + report.count('invalid')} of {len(report.results)} records"]
    for result in report.results:
        if result.status in ("refused", "invalid"):
            lines.append(f"{result.status}: {result.message}")
            log.warning("SGAS registration from %s: record %s %s: %s", caller.dn, result.record_id or result.index + 1,
                        result.status, result.message)
    log.info("SGAS registration from %s: %s", caller.dn, lines[0])
    return HttpAnswer("200 OK", "\n".join(lines) + "\n")


def as_declared(data: bytes) -> bytes:
    """``data``, or — when it is not UTF-8 yet claims to be (or claims nothing) — labelled ISO-8859-1."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    match = _DECLARATION.match(data)
    if match and not re.search(rb"encoding\s*=\s*[\"'](utf-8|utf8)[\"']", match.group(0), re.I) \
            and b"encoding" in match.group(0):
        return data  # it names another encoding: the parser follows it
    rest = data[match.end():] if match else data
    return b'<?xml version="1.0" encoding="ISO-8859-1"?>' + rest


def quarantine(luts: Luts, data: bytes, caller: Caller, reason: str) -> str:
    """Keep an unreadable document, exactly as received, with who sent it and why it was not read."""
    doc_id = key_hash(caller.dn)[:16] + "-" + hashlib.sha256(data).hexdigest()[:32]
    received = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    element = etree.Element(f"{{{NS}}}Quarantined", nsmap={"n": NS}, publisher=caller.dn, received=received,
                            reason=reason[:2000])
    if caller.host_names:        # the hosts its certificate was issued for: what a retry may publish for
        element.set("hosts", " ".join(caller.host_names))
    element.text = base64.b64encode(data).decode("ascii")
    luts.store.put(QUARANTINE, doc_id, etree.tostring(element, encoding="utf-8"))
    return doc_id


__all__ = ["HttpAnswer", "QUARANTINE", "as_declared", "quarantine", "register_usage_records"]
