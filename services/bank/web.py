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

import logging
import threading
import time
from datetime import datetime, timezone

from gridcredit.errors import DomainError
from gridcredit.web import (Markup, WebError, WebPage, WebRequest, bar_chart, credits, definition_list, get_form, join,
                            link, moment, section, table, tag, url)

from . import policy
from .bank import ACCOUNTS, NAMESPACES, TRANSACTIONS, Bank, balance_effect
from . import documents, holders
from .types import TransactionKind

log = logging.getLogger("gridcredit.bank.web")

ACCOUNTS_SHOWN_MAX = 100          # accounts "your accounts" lists
PAGE_ROWS = 50                    # transactions, holds per page
SUPPLY_TRANSACTIONS_MAX = 10_000  # mints and retirements the transparency page reads
AUDIT_REFRESH_S = 600.0           # the public page starts a new audit at most this often (per worker)
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

class LastAudit:
    """The last audit this worker ran for the public page: a new one starts (in a thread of its own,
    one at a time) when a page is shown and none finished in the last AUDIT_REFRESH_S — so nobody,
    with or without a certificate, can make the Bank audit more often than that."""

    def __init__(self, bank: Bank) -> None:
        self._bank = bank
        self._lock = threading.Lock()
        self.report = None
        self.finished_us: int | None = None
        self.error: str | None = None
        self._finished_at = 0.0
        self._running = False

    def current(self) -> tuple:
        with self._lock:
            stale = self.finished_us is None or time.monotonic() - self._finished_at > AUDIT_REFRESH_S
            if stale and not self._running:
                self._running = True
                threading.Thread(target=self._run, name="bank-web-audit", daemon=True).start()
            return self.report, self.finished_us, self._running, self.error

    def _run(self) -> None:
        try:
            report, error = self._bank.audit(), None
            log.info("web view: audit of %d transactions: %s", report.transaction_count,
                     "clean" if report.clean else f"{len(report.findings)} findings")
        except Exception as failure:  # noqa: BLE001 — said on the page and in the log; the next view tries again
            report, error = None, f"{type(failure).__name__}: {failure}"
            log.warning("web view: the audit failed: %s", error)
        with self._lock:
            if report is not None:
                self.report = report
            self.error = error
            self.finished_us = time.time_ns() // 1000
            self._finished_at = time.monotonic()
            self._running = False


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
    report, finished_us, running, error = last_audit.current()
    if report is not None:
        verdict = tag("span", "clean" if report.clean else "NOT CLEAN", class_="ok" if report.clean else "bad")
        audit = join(
            tag("p", "The last audit finished ", moment(finished_us), ": ", verdict, "."),
            definition_list([("transactions checked", f"{report.transaction_count:,}"),
                             ("signatures checked", f"{report.signatures_checked:,}"),
                             ("ledger head", f"seq {report.head.seq}, hash {report.head.hash}"),
                             ("issued (recomputed)", credits(report.issued)),
                             ("retired (recomputed)", credits(report.retired))]),
            table(("finding", "seq", "what"), [(f.kind, f.seq if f.seq is not None else "", f.message)
                                               for f in report.findings], empty="no findings", class_="findings"))
    else:
        audit = tag("p", "The first audit since this server started is running now; reload this page in a moment."
                    if running else f"The audit could not run: {error}", class_="empty")
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
