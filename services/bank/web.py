"""The Bank's pages of the web view (issue 15): a person's accounts, one account (balance, holds,
history with a filter), its monthly statements, and the public transparency page.

Every page asks the Bank's own queries (bank.py) with the person's principal as the Bank's policy
resolves it (``policy.principal_for``), so what it shows is what GetBalance, ListHolds, History and
Statement would answer them — the same policy points, no rules of its own. The list of "your
accounts" is the holder index's entries for the DN (holders.py: its cost does not grow with the number
of accounts); each one is then read through the policy.
The transparency page is for everyone (``policy.authorize_transparency``).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from lxml import etree

from gridcredit.errors import DomainError, GridcreditError
from gridcredit.timeunits import US_PER_S, now_us
from gridcredit.web import (Markup, WebError, WebPage, WebRequest, bar_chart, credits, definition_list, get_form, join,
                            link, moment, section, table, tag, url)

from . import policy
from .bank import ACCOUNTS, BANK as BANK_COLLECTION, NAMESPACES, TRANSACTIONS, Bank, balance_effect
from . import documents, holders
from .types import TransactionKind

log = logging.getLogger("gridcredit.bank.web")

ACCOUNTS_SHOWN_MAX = 100          # accounts "your accounts" lists
PAGE_ROWS = 50                    # transactions, holds per page
SUPPLY_TRANSACTIONS_MAX = 10_000  # mints and retirements the transparency page reads
AUDIT_REFRESH_S = 600.0           # the public page starts a new audit at most this often (per host: stored)
AUDIT_RUNNING_MAX_S = 3_600.0     # ... and takes over a started one not finished after this (its worker ended)
AUDIT_FINDINGS_STORED = 100       # findings of the last audit kept for the page
LAST_AUDIT_ID = "last-web-audit"  # the stored state of its audits, in the bank collection
SUPPLY_REFRESH_S = 30.0           # ... and reads the mints and retirements again at most this often
_HOLDER_ACCOUNTS = "/t:Account[t:holders/t:holder = $dn]"
_SUPPLY_CHANGES = "/t:Transaction[t:kind = 'mint' or t:kind = 'retire']"
BASE = "/web/bank"


def _principal(request: WebRequest):
    return policy.principal_for(request.principal, request.config.bank)


def _month_bounds(month: str) -> tuple[int, int]:
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise WebError("400 Bad Request", f"month must be YYYY-MM, not {month!r}") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def _month_of(at_us: int) -> str:
    return datetime.fromtimestamp(at_us // 1_000_000, tz=timezone.utc).strftime("%Y-%m")


def _account_link(account_id: str) -> Markup:
    return link(url(f"{BASE}/account", id=account_id), account_id)


# -- your accounts ----------------------------------------------------------------------------------

def _accounts_page(request: WebRequest) -> Markup:
    bank: Bank = request.part
    principal = _principal(request)
    found = holders.accounts_of(bank.store, principal.dn, limit=ACCOUNTS_SHOWN_MAX)   # the holder index
    if found is None:   # not built yet (a store from before it): every account is examined, as before
        page = bank.store.query(ACCOUNTS, _HOLDER_ACCOUNTS, {"dn": principal.dn}, namespaces=NAMESPACES, offset=0,
                                limit=ACCOUNTS_SHOWN_MAX)
        found = [documents.account_from_xml(document.xml).account_id for document in page.documents], \
            page.next_offset is not None
    account_ids, more_there = found
    rows, bars = [], []
    for account_id in account_ids:
        try:
            account = bank.account(account_id, principal)   # the policy's view
        except DomainError:  # the index only says where to look: the account says who holds it
            continue
        role = account.role_of(principal.dn)
        if role is None:
            continue
        rows.append((_account_link(account.account_id), account.project, role.value if role else "—",
                     account.status.value, credits(account.balance), credits(account.held),
                     credits(account.available)))
        bars.append((account.account_id, account.available))
    more = f" (the first {ACCOUNTS_SHOWN_MAX} shown)" if more_there else ""
    return join(
        section("Accounts you hold" + more,
                table(("account", "project", "your role", "status", "balance", "held", "available"), rows,
                      numeric=(4, 5, 6), empty="You hold no account in this Bank.", class_="accounts"),
                bar_chart("Available credits by account", bars) if bars else None),
        section("Another account",
                tag("p", "Administrators see every account; anyone else only those they hold."),
                get_form(f"{BASE}/account", [("id", "account id", "", "e.g. proj-alice")])))


# -- one account ------------------------------------------------------------------------------------

def _transaction_rows(transactions, account_id: str):
    for t in transactions:
        other = t.counterparty_account_id if t.account_id == account_id else t.account_id
        yield (t.seq, moment(t.at_us), t.kind.value, credits(t.amount), credits(balance_effect(t, account_id)),
               other or "", t.hold_id or "", t.reference or "", t.principal_dn)


_TRANSACTION_HEADERS = ("seq", "at", "kind", "amount", "effect", "other account", "hold", "reference", "by")


def _account_page(request: WebRequest) -> Markup:
    bank: Bank = request.part
    principal = _principal(request)
    account_id = request.param("id")
    if not account_id:
        raise WebError("400 Bad Request", "name the account: /web/bank/account?id=ACCOUNT")
    account = bank.account(account_id, principal)
    balance = bank.balance(account_id, principal)
    ended = request.param("ended") == "1"
    holds_offset = request.int_param("holds_from", 0)
    holds = bank.holds(account_id, principal, ended=ended, offset=holds_offset, limit=PAGE_ROWS)
    xpath_filter = request.param("filter")
    offset = request.int_param("from", 0)
    history = bank.history(account_id, principal, xpath_filter=xpath_filter, offset=offset, limit=PAGE_ROWS)
    hold_rows = [(h.hold_id, h.state.value, credits(h.amount), credits(h.charged), moment(h.expires_at_us),
                  h.reference, h.collector_dn or "", h.payee_account_id or "", h.creator_dn) for h in holds.items]
    items = list(history.items)
    effects = [(str(t.seq), balance_effect(t, account_id)) for t in items]
    months = sorted({_month_of(t.at_us) for t in items}) or [_month_of(time.time_ns() // 1000)]
    return join(
        section(f"Account {account.account_id}",
                definition_list([("project", account.project), ("status", account.status.value),
                                 ("balance", credits(balance.total)), ("held", credits(balance.held)),
                                 ("available", credits(balance.available)),
                                 ("credit limit", credits(balance.credit_limit)),
                                 ("holders", join(*[tag("div", f"{h.role.value}: {h.dn}") for h in account.holders])),
                                 ("statements", join(*[join(link(url(f"{BASE}/statement", id=account_id, month=m), m),
                                                            " ") for m in months]))]),
                id_="balance"),
        section("Ended holds" if ended else "Active holds",
                link(url(f"{BASE}/account", id=account_id, ended="" if ended else "1"),
                     "show active holds" if ended else "show ended holds"),
                table(("hold", "state", "amount", "charged", "expires", "reference", "collector", "payee", "made by"),
                      hold_rows, numeric=(2, 3), empty="no holds", class_="holds"),
                _next(holds, url(f"{BASE}/account", id=account_id, ended="1" if ended else "", holds_from="{}")),
                id_="holds"),
        section("History",
                tag("form", tag("input", type="hidden", name="id", value=account_id),
                    tag("label", "filter (an XPath condition on each transaction, prefix t:) ",
                        tag("input", type="text", name="filter", value=xpath_filter, size=50,
                            placeholder="t:kind='charge' and t:amount > 100")),
                    " ", tag("button", "Show", type="submit"), method="get", action=f"{BASE}/account", class_="query"),
                bar_chart("Effect on the balance of each transaction shown (credits; negative drawn as 0)", effects)
                if effects else None,
                table(_TRANSACTION_HEADERS, _transaction_rows(items, account_id), numeric=(0, 3, 4),
                      empty="no transactions" + (" match the filter" if xpath_filter else ""), class_="history"),
                _next(history, url(f"{BASE}/account", id=account_id, filter=xpath_filter, **{"from": "{}"})),
                id_="history"))


def _next(page, template: str) -> Markup | None:
    if page.next_offset is None:
        return None
    return tag("p", link(template.replace("%7B%7D", str(page.next_offset)), "next page"))


# -- a statement --------------------------------------------------------------------------------------

def _statement_page(request: WebRequest) -> Markup:
    bank: Bank = request.part
    principal = _principal(request)
    account_id = request.param("id")
    if not account_id:
        raise WebError("400 Bad Request", "name the account: /web/bank/statement?id=ACCOUNT&month=YYYY-MM")
    month = request.param("month") or _month_of(time.time_ns() // 1000)
    from_us, to_us = _month_bounds(month)
    statement = bank.statement(account_id, principal, from_us=from_us, to_us=to_us)
    previous = _month_of(from_us - 1)
    following = _month_of(to_us)
    return join(
        tag("p", link(url(f"{BASE}/account", id=account_id), f"account {account_id}"), " · ",
            link(url(f"{BASE}/statement", id=account_id, month=previous), f"← {previous}"), " · ",
            link(url(f"{BASE}/statement", id=account_id, month=following), f"{following} →")),
        section(f"Statement of {account_id} for {month}",
                definition_list([("opening balance", credits(statement.opening_balance)),
                                 ("closing balance", credits(statement.closing_balance)),
                                 ("transactions", f"{len(statement.transactions):,}"
                                                  + (" (more not shown)" if statement.truncated else ""))]),
                table(_TRANSACTION_HEADERS, _transaction_rows(statement.transactions, account_id), numeric=(0, 3, 4),
                      empty="no transactions in this month", class_="statement"), id_="statement"))


# -- the public transparency page ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditResult:
    """What the public page shows of an audit (``AuditReport``'s figures, its first findings)."""
    finished_us: int
    clean: bool
    transaction_count: int
    signatures_checked: int
    head_seq: int
    head_hash: str
    issued: int
    retired: int
    findings: tuple[tuple[str, str, str], ...]    # (kind, seq or "", what), at most AUDIT_FINDINGS_STORED
    findings_omitted: int


@dataclass(frozen=True, slots=True)
class AuditState:
    """The stored state of the public page's audits, the same for every worker of the host."""
    result: AuditResult | None = None      # the last audit that finished
    started_us: int | None = None          # an audit started and not finished (None: none)
    error: str | None = None               # the last attempt failed so (``result`` is the one before)
    error_us: int | None = None

    @property
    def last_end_us(self) -> int | None:
        ends = [at for at in (self.result.finished_us if self.result else None, self.error_us) if at is not None]
        return max(ends) if ends else None

    def running(self, now: int) -> bool:
        last_end = self.last_end_us
        return (self.started_us is not None and (last_end is None or self.started_us > last_end)
                and now - self.started_us < AUDIT_RUNNING_MAX_S * US_PER_S)

    def due(self, now: int) -> bool:
        last_end = self.last_end_us
        return (last_end is None or now - last_end > AUDIT_REFRESH_S * US_PER_S) and not self.running(now)


def _audit_state_xml(state: AuditState) -> bytes:
    root = etree.Element(_q("WebAudit"), nsmap={None: documents.NAMESPACE})
    if state.started_us is not None:
        root.set("started_us", str(state.started_us))
    if state.result is not None:
        r = state.result
        result = etree.SubElement(root, _q("result"), finished_us=str(r.finished_us), clean=str(r.clean).lower(),
                                  transactions=str(r.transaction_count), signatures=str(r.signatures_checked),
                                  head_seq=str(r.head_seq), head_hash=r.head_hash, issued=str(r.issued),
                                  retired=str(r.retired), findings_omitted=str(r.findings_omitted))
        for kind, seq, what in r.findings:
            etree.SubElement(result, _q("finding"), kind=kind, seq=seq).text = what
    if state.error is not None:
        etree.SubElement(root, _q("error"), at_us=str(state.error_us)).text = state.error
    return etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def _audit_state_from_xml(data: bytes) -> AuditState:
    root = etree.fromstring(data)   # written by _audit_state_xml above
    result = error = error_us = None
    found = root.find(_q("result"))
    if found is not None:
        number = lambda name: int(found.get(name))  # noqa: E731
        result = AuditResult(number("finished_us"), found.get("clean") == "true", number("transactions"),
                             number("signatures"), number("head_seq"), found.get("head_hash"), number("issued"),
                             number("retired"), tuple((f.get("kind"), f.get("seq"), f.text or "")
                                                      for f in found.iterfind(_q("finding"))),
                             number("findings_omitted"))
    failed = root.find(_q("error"))
    if failed is not None:
        error, error_us = failed.text or "", int(failed.get("at_us"))
    started = root.get("started_us")
    return AuditState(result, int(started) if started else None, error, error_us)


def _q(name: str) -> str:
    return f"{{{documents.NAMESPACE}}}{name}"


class LastAudit:
    """The audit the public page shows, run by the host's workers for it and stored (the ``bank``
    collection's ``last-web-audit`` document), so every worker shows the same one. A new one starts
    (in a thread, by the one worker whose claim in the store succeeds) when a page is shown and none
    finished in the last AUDIT_REFRESH_S — so nobody, with or without a certificate, can make the
    Bank audit more often than that; a claim whose audit never finished (its worker ended) is taken
    over after AUDIT_RUNNING_MAX_S."""

    def __init__(self, bank: Bank) -> None:
        self._bank = bank
        self._lock = threading.Lock()
        self._running_here = False
        self._read: tuple[int, AuditState] | None = None     # (document version, state): parsed once a version

    def state(self) -> AuditState:
        document = self._bank.store.get(BANK_COLLECTION, LAST_AUDIT_ID)
        if document is None:
            return AuditState()
        read = self._read
        if read is None or read[0] != document.version:
            read = self._read = (document.version, _audit_state_from_xml(document.xml))
        return read[1]

    def current(self) -> tuple[AuditState, bool]:
        """The stored state, and whether an audit is running (this call may have started one)."""
        state = self.state()
        now = now_us()
        if state.due(now):
            with self._lock:
                start = not self._running_here and self._claim(now)
                if start:
                    self._running_here = True
            if start:
                threading.Thread(target=self._run, name="bank-web-audit", daemon=True).start()
                return self.state(), True
        return state, state.running(now)

    def _claim(self, now: int) -> bool:
        """Mark an audit started, unless another worker's is running or one finished meanwhile."""
        def claim(tx) -> bool:
            stored = tx.get(BANK_COLLECTION, LAST_AUDIT_ID)
            state = _audit_state_from_xml(stored.xml) if stored is not None else AuditState()
            if not state.due(now):
                return False
            tx.put(BANK_COLLECTION, LAST_AUDIT_ID, _audit_state_xml(dataclasses.replace(state, started_us=now)))
            return True
        try:
            return self._bank.store.transact(claim)
        except GridcreditError as error:   # the store busy or behind: the next view tries again
            log.warning("web view: the audit could not be started: %s: %s", type(error).__name__, error)
            return False

    def _run(self) -> None:
        try:
            report, error = self._bank.audit(), None
            log.info("web view: audit of %d transactions: %s", report.transaction_count,
                     "clean" if report.clean else f"{len(report.findings)} findings")
        except Exception as failure:  # noqa: BLE001 — said on the page and in the log; the next view tries again
            report, error = None, f"{type(failure).__name__}: {failure}"
            log.warning("web view: the audit failed: %s", error)
        finished = now_us()

        def store(tx) -> None:
            stored = tx.get(BANK_COLLECTION, LAST_AUDIT_ID)
            state = _audit_state_from_xml(stored.xml) if stored is not None else AuditState()
            if report is not None:
                state = AuditState(_result_of(report, finished))
            else:
                state = dataclasses.replace(state, started_us=None, error=error, error_us=finished)
            tx.put(BANK_COLLECTION, LAST_AUDIT_ID, _audit_state_xml(state))
        try:
            self._bank.store.transact(store)
        except (GridcreditError, ValueError) as failure:
            log.warning("web view: the audit's result could not be stored: %s: %s", type(failure).__name__, failure)
        finally:
            with self._lock:
                self._running_here = False


def _result_of(report, finished_us: int) -> AuditResult:
    return AuditResult(finished_us, report.clean, report.transaction_count, report.signatures_checked,
                       report.head.seq if report.head else 0, report.head.hash if report.head else "",
                       report.issued, report.retired,
                       tuple((f.kind, "" if f.seq is None else str(f.seq), f.message)
                             for f in report.findings[:AUDIT_FINDINGS_STORED]),
                       report.findings_omitted + max(0, len(report.findings) - AUDIT_FINDINGS_STORED))


class SupplyChanges:
    """The mints and retirements the public page shows, read again at most every SUPPLY_REFRESH_S by
    one request at a time (the others wait for it): anyone may ask for the page, and reading them is a
    query over every transaction."""

    def __init__(self, bank: Bank) -> None:
        self._bank = bank
        self._lock = threading.Lock()
        self._value: tuple[list, bool, int] | None = None
        self._read_at = 0.0

    def current(self) -> tuple[list, bool, int]:
        """(the mints and retirements oldest first, whether more were left unread, when read in µs)."""
        with self._lock:
            if self._value is None or time.monotonic() - self._read_at > SUPPLY_REFRESH_S:
                changes, truncated = _supply_changes(self._bank)
                self._value = (changes, truncated, time.time_ns() // 1000)
                self._read_at = time.monotonic()
            return self._value


def _supply_changes(bank: Bank) -> tuple[list, bool]:
    found, offset = [], 0
    while offset is not None and len(found) < SUPPLY_TRANSACTIONS_MAX:
        page = bank.store.query(TRANSACTIONS, _SUPPLY_CHANGES, {}, namespaces=NAMESPACES, offset=offset,
                                limit=min(500, SUPPLY_TRANSACTIONS_MAX - len(found)), time_limit_s=10.0)
        found.extend(documents.transaction_from_xml(document.xml) for document in page.documents)
        offset = page.next_offset
    return sorted(found, key=lambda t: t.seq), offset is not None


def _transparency_page(request: WebRequest, last_audit: LastAudit, supply_changes: SupplyChanges) -> Markup:
    bank: Bank = request.part
    policy.authorize_transparency()
    changes, truncated, read_us = supply_changes.current()
    supply = bank.money_supply()
    by_month: dict[str, int] = {}
    outstanding = 0
    for t in changes:
        outstanding += t.amount if t.kind is TransactionKind.MINT else -t.amount
        by_month[_month_of(t.at_us)] = outstanding
    rows = [(t.seq, moment(t.at_us), "issue" if t.kind is TransactionKind.MINT else "retirement", credits(t.amount),
             t.account_id or "", t.principal_dn, t.approver_dn or "") for t in reversed(changes)]
    state, running = last_audit.current()
    result = state.result
    if result is not None:
        verdict = tag("span", "clean" if result.clean else "NOT CLEAN", class_="ok" if result.clean else "bad")
        audit = join(
            tag("p", "The last audit finished ", moment(result.finished_us), ": ", verdict, "."),
            definition_list([("transactions checked", f"{result.transaction_count:,}"),
                             ("signatures checked", f"{result.signatures_checked:,}"),
                             ("ledger head", f"seq {result.head_seq}, hash {result.head_hash}"),
                             ("issued (recomputed)", credits(result.issued)),
                             ("retired (recomputed)", credits(result.retired))]),
            table(("finding", "seq", "what"), result.findings, empty="no findings", class_="findings"),
            tag("p", f"{result.findings_omitted:,} further findings are not listed here.")
            if result.findings_omitted else None,
            tag("p", f"A new audit is running now (one starts at most every {AUDIT_REFRESH_S / 60:.0f} minutes).",
                class_="empty") if running else None,
            tag("p", f"The last attempt since failed: {state.error}", class_="bad")
            if state.error is not None and state.error_us is not None and state.error_us > result.finished_us else None)
    else:
        audit = tag("p", "The first audit of this ledger is running now; reload this page in a moment."
                    if running else f"The audit could not run: {state.error}", class_="empty")
    return join(
        section("Money supply",
                definition_list([("issued", credits(supply.issued)), ("retired", credits(supply.retired)),
                                 ("outstanding", credits(supply.outstanding))]),
                bar_chart("Credits outstanding at the end of each month", sorted(by_month.items())),
                id_="supply"),
        section("Every issue and retirement of credits",
                tag("p", "Only administrators issue (mint) or retire credits, in the open: each is a signed "
                         f"transaction of the ledger, listed here newest first (as read {moment(read_us)}: "
                         f"read again at most every {SUPPLY_REFRESH_S:.0f} s)."
                    + (f" The newest {SUPPLY_TRANSACTIONS_MAX:,} are read." if truncated else "")),
                table(("seq", "at", "what", "credits", "account", "administrator", "approved by"), rows,
                      numeric=(0, 3), empty="no credits have been issued yet", class_="supply-changes"),
                id_="changes"),
        section("The last audit", audit, id_="audit"),
        section("Audit it yourself",
                tag("p", "The audit replays the whole ledger: every transaction's hash chain and the Bank's "
                         "signatures, the balances and holds it implies, and the money supply."),
                tag("pre", "gridcredit bank audit                  # administrators and auditors, at the Bank\n"
                           "gridcredit bank audit --offline        # anyone with a copy of the store and this key"),
                tag("p", "The Bank's ledger signing key (Ed25519, public):"),
                tag("pre", bank.key.public_pem().decode("ascii")), id_="how"))


def web_pages(bank: Bank, config) -> list[WebPage]:
    last_audit, supply_changes = LastAudit(bank), SupplyChanges(bank)
    return [
        WebPage("accounts", "Your accounts", _accounts_page, summary="balance, held and available credits"),
        WebPage("account", "Account", _account_page, listed=False),
        WebPage("statement", "Statement", _statement_page, listed=False),
        WebPage("transparency", "Money supply and audit", lambda request: _transparency_page(request, last_audit, supply_changes),
                public=True, summary="every issue and retirement of credits, the last audit; open to everyone"),
    ]
