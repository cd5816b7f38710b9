"""SGAS-compatible registration for reporters that exist: ``POST <luts.sgas_path>/ur``.

ARC's accounting publisher (``jura-ng``, SGAS target; see docs/arc-sgas.md) and other SGAS
reporters POST a ``UsageRecords`` document over HTTPS, authenticated by the site's TLS client
certificate, and count the batch as delivered when the answer is HTTP 200; any other status makes
them keep the records and send the same batch again later.

So the answer is:

* 200 when the document was read and every record got its result: stored, already there
  (``duplicate``), or one that can never be stored as sent (not this publisher's machine, a
  different record under a used id, unreadable: a bad duration, no record id, …). Those last are
  kept, each with its reason, for the operator (``luts held``, kind ``record``: retry once
  corrected, as the publisher), logged, and listed in the body — answering non-200 for them would
  make the reporter re-send the same batch forever and block every later one;
* 403 when the certificate is missing or its holder may not publish;
* 200 also for a document that cannot be read at all: it is kept byte for byte, whatever its size
  (held.py: in the store, or in a file under the state directory), with the reason, in the
  ``sgas_quarantine`` collection for an operator, and logged — ARC 6.17 writes a ``&`` in a job
  name unescaped, so refusing would block that site's accounting for good;
* 503 when the store failed, or what had to be kept could not be (nothing was stored for the chunk
  that failed; the reporter keeps the batch and sends it again: what was stored is then
  ``duplicate``, what is kept is kept once).

Encoding. ARC's publisher hands Python's ``http.client`` a ``str`` body, which goes out as
ISO-8859-1 although the document declares UTF-8 (docs/arc-sgas.md). A document with no byte order
mark that is not valid UTF-8 but declares UTF-8 (or nothing) is therefore read as ISO-8859-1 — the
only change made to the bytes is that declaration — and the records' originals are kept as those
characters in UTF-8. A document with a byte order mark, or in UTF-16/UTF-32 (XML 1.0 appendix F),
or declaring another encoding, is read as it says.

The body is plain text, one line per record that was not stored, after a summary line.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from gridcredit.errors import DomainError, StoreError

from . import held
from .held import QUARANTINE, REFUSED
from .luts import Caller, Luts

_DECLARATION = re.compile(rb"^<\?xml[^>]*\?>")
# XML 1.0 appendix F: a byte order mark, or "<?" in UTF-16/UTF-32 without one — the parser reads these right
_SELF_DESCRIBING = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff",
                    b"<\x00?\x00", b"\x00<\x00?", b"<\x00\x00\x00", b"\x00\x00\x00<")

log = logging.getLogger("gridcredit.luts.sgas")


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: str
    body: str
    content_type: str = "text/plain; charset=utf-8"


_SEND_AGAIN = "503 Service Unavailable"


def register_usage_records(luts: Luts, data: bytes, caller: Caller | None) -> HttpAnswer:
    if caller is None:
        return HttpAnswer("403 Forbidden", "present the site's host certificate (TLS client authentication)\n")
    try:
        report = luts.publish(as_declared(data), caller, operation="RegisterUsageRecords")
    except DomainError as error:
        if error.code == "NotAuthorized":
            log.warning("SGAS registration from %s refused: %s", caller.dn, error)
            return HttpAnswer("403 Forbidden", f"{error}\n")
        try:
            doc_id = held.keep_post(luts, data, caller, str(error))
        except (StoreError, OSError) as keep_error:
            log.error("SGAS registration from %s: cannot keep an unreadable document of %d bytes (%s); "
                      "answered %s so the reporter keeps it: %s", caller.dn, len(data), error, _SEND_AGAIN, keep_error)
            return HttpAnswer(_SEND_AGAIN, f"the document cannot be read ({error}) and cannot be kept for the "
                                           f"operator now; send it again later\n")
        log.warning("SGAS registration from %s: unreadable document (%d bytes) kept as %s/%s for an operator: %s",
                    caller.dn, len(data), QUARANTINE, doc_id, error)
        return HttpAnswer("200 OK", f"not stored: the document cannot be read ({error}); it is kept as "
                                    f"{QUARANTINE}/{doc_id} for the LUTS operator\n")
    except StoreError as error:
        log.error("SGAS registration from %s failed in the store: %s", caller.dn, error)
        return HttpAnswer(_SEND_AGAIN, "the usage-record store is unavailable; send again later\n")
    try:
        kept = held.keep_records(luts, report, caller)
    except (StoreError, OSError) as error:
        log.error("SGAS registration from %s: %d records not stored cannot be kept for the operator (%s); "
                  "answered %s so the reporter sends the batch again", caller.dn, len(report.not_stored), error,
                  _SEND_AGAIN)
        return HttpAnswer(_SEND_AGAIN, "records that were not stored cannot be kept for the operator now; "
                                       "send the batch again later\n")
    lines = [f"stored {report.count('stored')}, already stored {report.count('duplicate')}, "
             f"not stored {report.count('refused') + report.count('invalid')} of {len(report.results)} records"]
    for result in report.results:
        if result.index in kept:
            lines.append(f"{result.status}: {result.message} (kept as {REFUSED}/{kept[result.index]})")
            log.warning("SGAS registration from %s: record %s %s, kept as %s/%s: %s", caller.dn,
                        result.record_id or result.index + 1, result.status, REFUSED, kept[result.index],
                        result.message)
    log.info("SGAS registration from %s: %s", caller.dn, lines[0])
    return HttpAnswer("200 OK", "\n".join(lines) + "\n")


def as_declared(data: bytes) -> bytes:
    """``data``, or — when it has no byte order mark, is not UTF-8 and yet claims to be (or claims
    nothing), as ARC's publisher sends ISO-8859-1 — labelled ISO-8859-1."""
    if data.startswith(_SELF_DESCRIBING):
        return data  # a BOM, or UTF-16/32 without one: the parser reads it as it says
    if data.isascii():
        return data  # most batches: no decoding, no copy of a large body
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


__all__ = ["HttpAnswer", "QUARANTINE", "REFUSED", "as_declared", "register_usage_records"]
