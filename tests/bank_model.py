"""A small executable model of the Bank ledger, written apart from ``ledger.py``.

Plain dictionaries, no hashing, no documents: what a reader of SPEC §2 and the authorization
table in ``policy``'s docstring would expect each request to answer. The model-based test runs
the real core and this model side by side and compares every reply and every state.

Each operation returns a dict describing the expected transaction (kind, account, counterparty,
amount, hold id, hold state) or raises :class:`Refusal` with the expected code. The order of
checks follows the precedence documented in ``ledger``: request id, shape, existence,
authorization, state, funds and limits. The account's held amount is not stored here: it is
recomputed from the active holds every time.
"""
from __future__ import annotations

MAX_AMOUNT = 10**15
GRANTS_MAX = 32
SPENDING_PERIOD_RANGE_US = (1_000_000, 366 * 86_400 * 1_000_000)


class Refusal(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _good_amount(amount: object) -> bool:
    return type(amount) is int and 1 <= amount <= MAX_AMOUNT


class BankModel:
    def __init__(self, *, mint_approval_threshold: int | None, hold_duration_max_us: int,
                 mint_approval_duration_us: int) -> None:
        self.threshold = mint_approval_threshold
        self.hold_duration_max_us = hold_duration_max_us
        self.mint_approval_duration_us = mint_approval_duration_us
        self.accounts: dict[str, dict] = {}
        self.holds: dict[str, dict] = {}
        self.pending: dict[str, dict] = {}
        self.issued = 0
        self.retired = 0
        self.seq = 0
        self.answers: dict[tuple[str, str], tuple[tuple, dict]] = {}

    # -- derived values -----------------------------------------------------------------------

    def held(self, account_id: str) -> int:
        return sum(hold["amount"] - hold["charged"] for hold in self.holds.values()
                   if hold["account"] == account_id and hold["state"] == "active")

    def available(self, account_id: str) -> int:
        account = self.accounts[account_id]
        return account["balance"] - self.held(account_id) + account["credit"]

    def spent(self, account_id: str, now: int) -> int:
        account = self.accounts[account_id]
        if account["period"] is None or now // account["period"] != account["window"]:
            return 0
        return account["spent"]

    # -- the one entry point --------------------------------------------------------------------

    def request(self, operation: str, request_id: str, caller: tuple[str, bool, bool], now: int,
                *arguments: object) -> dict:
        """``caller`` is (DN, is administrator, is service). Answers or raises Refusal."""
        key = (caller[0], request_id)
        signature = (operation, arguments)
        if key in self.answers:
            first_signature, answer = self.answers[key]
            if first_signature != signature:
                raise Refusal("RequestIdReused")
            return dict(answer, replayed=True)
        answer = getattr(self, "_" + operation)(caller, now, *arguments)
        self.seq += 1
        answer["seq"] = self.seq
        self.answers[key] = (signature, answer)
        return dict(answer, replayed=False)

    # -- helpers --------------------------------------------------------------------------------

    def _account(self, account_id: str) -> dict:
        if account_id not in self.accounts:
            raise Refusal("UnknownAccount")
        return self.accounts[account_id]

    def _hold(self, hold_id: str) -> dict:
        if hold_id not in self.holds:
            raise Refusal("UnknownHold")
        return self.holds[hold_id]

    @staticmethod
    def _role(account: dict, dn: str) -> str | None:
        return account["holders"].get(dn)

    def _may_grant(self, caller, account: dict, role: str) -> bool:
        dn, admin, _service = caller
        mine = self._role(account, dn)
        return mine == "owner" or (mine == "manager" and role in ("member", "viewer")) or (admin and role == "viewer")

    def _may_revoke(self, caller, account: dict, role: str | None) -> bool:
        dn, admin, _service = caller
        mine = self._role(account, dn)
        return admin or mine == "owner" or (mine == "manager" and role in (None, "member", "viewer"))

    def _spends_for(self, caller, account: dict, hold: dict) -> bool:
        """The hold's creator while still a spender there (unless it made the hold for someone else under a
        grant), or an owner or manager (not a service)."""
        dn, _admin, service = caller
        mine = self._role(account, dn)
        if dn == hold["creator"] and hold["for"] is None and mine in ("owner", "manager", "member"):
            return True
        return not service and mine in ("owner", "manager")

    @staticmethod
    def _serves(caller, hold: dict) -> bool:
        """The service that made the hold under its grant, for a holder."""
        return hold["for"] is not None and caller[0] == hold["creator"]

    def _may_use_grant(self, caller, account: dict, for_dn: str) -> bool:
        return caller[0] in account["grants"] and self._role(account, for_dn) in ("owner", "manager", "member")

    def _count_grant(self, account: dict, service_dn: str, total: int, increase: int, now: int) -> None:
        grant = account["grants"][service_dn]
        if grant["hold_max"] is not None and total > grant["hold_max"]:
            raise Refusal("GrantLimitExceeded")
        if grant["period"] is None:
            return
        held = grant["held"] if now // grant["period"] == grant["window"] else 0
        if held + increase > grant["period_max"]:
            raise Refusal("GrantLimitExceeded")
        grant.update(window=now // grant["period"], held=held + increase)

    @staticmethod
    def _collects(caller, hold: dict) -> bool:
        return hold["collector"] is not None and caller[0] == hold["collector"]

    @staticmethod
    def _not_closed(account: dict) -> None:
        if account["status"] == "closed":
            raise Refusal("AccountClosed")

    def _open(self, account: dict) -> None:
        self._not_closed(account)
        if account["status"] == "frozen":
            raise Refusal("AccountFrozen")

    def _count_spending(self, account_id: str, amount: int, now: int) -> None:
        account = self.accounts[account_id]
        if account["limit"] is None:
            return
        spent = self.spent(account_id, now)
        if spent + amount > account["limit"]:
            raise Refusal("SpendingLimitExceeded")
        account["window"] = now // account["period"]
        account["spent"] = spent + amount

    def _active_unexpired(self, hold: dict, now: int) -> None:
        if hold["state"] != "active":
            raise Refusal("HoldEnded")
        if now >= hold["expires"]:
            raise Refusal("HoldExpired")

    # -- operations -----------------------------------------------------------------------------

    def _create_account(self, caller, now, account_id, project, owner, credit):
        if type(credit) is not int or not 0 <= credit <= MAX_AMOUNT:
            raise Refusal("InvalidAmount")
        if not caller[1]:
            raise Refusal("NotAuthorized")
        if account_id in self.accounts:
            raise Refusal("AccountExists")
        self.accounts[account_id] = dict(project=project, holders={owner: "owner"}, status="open", balance=0,
                                         credit=credit, limit=None, period=None, window=0, spent=0, grants={})
        return dict(kind="create-account", account=account_id)

    def _set_holder(self, caller, now, account_id, dn, role):
        account = self._account(account_id)
        previous = self._role(account, dn)
        if not (self._may_grant(caller, account, role) and self._may_revoke(caller, account, previous)):
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if previous == role:
            raise Refusal("HolderUnchanged")
        holders = dict(account["holders"], **{dn: role})
        if "owner" not in holders.values():
            raise Refusal("LastOwner")
        account["holders"] = holders
        return dict(kind="set-holder", account=account_id)

    def _remove_holder(self, caller, now, account_id, dn):
        account = self._account(account_id)
        previous = self._role(account, dn)
        if not self._may_revoke(caller, account, previous):
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if previous is None:
            raise Refusal("NotAHolder")
        holders = {holder: role for holder, role in account["holders"].items() if holder != dn}
        if "owner" not in holders.values():
            raise Refusal("LastOwner")
        account["holders"] = holders
        return dict(kind="remove-holder", account=account_id)

    def _set_status(self, caller, now, account_id, status):
        account = self._account(account_id)
        if not (caller[1] or (status in ("frozen", "closed") and self._role(account, caller[0]) == "owner")):
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if account["status"] == status:
            raise Refusal("StatusUnchanged")
        if status == "closed" and (account["balance"] != 0 or self.held(account_id) != 0):
            raise Refusal("AccountNotEmpty")
        account["status"] = status
        return dict(kind="set-status", account=account_id)

    def _set_credit_limit(self, caller, now, account_id, credit):
        if type(credit) is not int or not 0 <= credit <= MAX_AMOUNT:
            raise Refusal("InvalidAmount")
        account = self._account(account_id)
        if not caller[1]:
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if self.held(account_id) > account["balance"] + credit:
            raise Refusal("CreditLimitTooLow")
        account["credit"] = credit
        return dict(kind="set-credit-limit", account=account_id)

    def _set_spending_limit(self, caller, now, account_id, limit, period):
        if (limit is None) != (period is None):
            raise Refusal("InvalidArgument")
        if limit is not None:
            if type(limit) is not int or not 0 <= limit <= MAX_AMOUNT:
                raise Refusal("InvalidAmount")
            if not SPENDING_PERIOD_RANGE_US[0] <= period <= SPENDING_PERIOD_RANGE_US[1]:
                raise Refusal("InvalidArgument")
        account = self._account(account_id)
        if not (caller[1] or self._role(account, caller[0]) in ("owner", "manager")):
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        keep = period is not None and period == account["period"]
        spent = self.spent(account_id, now) if keep else 0
        account.update(limit=limit, period=period, window=(now // period) if period else 0, spent=spent)
        return dict(kind="set-spending-limit", account=account_id)

    def _grant_service(self, caller, now, account_id, service_dn, hold_max, period_max, period):
        if hold_max is not None and not _good_amount(hold_max):
            raise Refusal("InvalidAmount")
        if (period_max is None) != (period is None):
            raise Refusal("InvalidArgument")
        if period_max is not None:
            if not _good_amount(period_max):
                raise Refusal("InvalidAmount")
            if not SPENDING_PERIOD_RANGE_US[0] <= period <= SPENDING_PERIOD_RANGE_US[1]:
                raise Refusal("InvalidArgument")
        account = self._account(account_id)
        if self._role(account, caller[0]) != "owner":
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        previous = account["grants"].get(service_dn)
        if previous is not None and (previous["hold_max"], previous["period_max"], previous["period"]) == (
                hold_max, period_max, period):
            raise Refusal("GrantUnchanged")
        if previous is None and len(account["grants"]) >= GRANTS_MAX:
            raise Refusal("TooManyGrants")
        keep = previous is not None and period is not None and period == previous["period"]
        account["grants"][service_dn] = dict(
            hold_max=hold_max, period_max=period_max, period=period,
            window=previous["window"] if keep else (now // period if period else 0),
            held=previous["held"] if keep else 0)
        return dict(kind="grant-service", account=account_id)

    def _revoke_service(self, caller, now, account_id, service_dn):
        account = self._account(account_id)
        if self._role(account, caller[0]) != "owner":
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if service_dn not in account["grants"]:
            raise Refusal("NotGranted")
        del account["grants"][service_dn]
        return dict(kind="revoke-service", account=account_id)

    def _mint(self, caller, now, account_id, amount):
        if not _good_amount(amount):
            raise Refusal("InvalidAmount")
        account = self._account(account_id)
        if not caller[1]:
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if self.threshold is not None and amount > self.threshold:
            pending_id = f"mint-{self.seq + 1}"
            self.pending[pending_id] = dict(account=account_id, amount=amount, requester=caller[0], state="pending",
                                            expires=now + self.mint_approval_duration_us, ended_by=None,
                                            change="mint")
            return dict(kind="mint-request", account=account_id, amount=amount, pending=pending_id)
        account["balance"] += amount
        self.issued += amount
        return dict(kind="mint", account=account_id, amount=amount)

    def _pending_mint(self, pending_id: str) -> dict:
        if pending_id not in self.pending:
            raise Refusal("UnknownPendingMint")
        return self.pending[pending_id]

    @staticmethod
    def _still_pending(pending: dict, now: int) -> None:
        if pending["state"] != "pending":
            raise Refusal("PendingMintEnded")
        if now >= pending["expires"]:
            raise Refusal("PendingMintExpired")

    def _approve_mint(self, caller, now, pending_id):
        pending = self._pending_mint(pending_id)
        account = self._account(pending["account"])
        if not caller[1]:
            raise Refusal("NotAuthorized")
        if caller[0] == pending["requester"]:
            raise Refusal("SecondAdministratorRequired")
        self._still_pending(pending, now)
        self._not_closed(account)
        if pending["change"] == "retire":
            if account["balance"] - self.held(pending["account"]) < pending["amount"]:
                raise Refusal("InsufficientFunds")
            account["balance"] -= pending["amount"]
            self.retired += pending["amount"]
        else:
            account["balance"] += pending["amount"]
            self.issued += pending["amount"]
        pending.update(state="approved", ended_by=caller[0])
        return dict(kind=pending["change"], account=pending["account"], amount=pending["amount"], pending=pending_id)

    def _cancel_mint(self, caller, now, pending_id):
        pending = self._pending_mint(pending_id)
        if not caller[1]:
            raise Refusal("NotAuthorized")
        self._still_pending(pending, now)
        pending.update(state="cancelled", ended_by=caller[0])
        return dict(kind="mint-cancel", account=pending["account"], amount=pending["amount"], pending=pending_id)

    def _expire_mint(self, caller, now, pending_id):
        pending = self._pending_mint(pending_id)
        if pending["state"] != "pending":
            raise Refusal("PendingMintEnded")
        if now < pending["expires"]:
            raise Refusal("PendingMintNotExpired")
        pending.update(state="expired", ended_by=caller[0])
        return dict(kind="mint-expire", account=pending["account"], amount=pending["amount"], pending=pending_id)

    def _retire(self, caller, now, account_id, amount):
        if not _good_amount(amount):
            raise Refusal("InvalidAmount")
        account = self._account(account_id)
        if not caller[1]:
            raise Refusal("NotAuthorized")
        self._not_closed(account)
        if account["balance"] - self.held(account_id) < amount:
            raise Refusal("InsufficientFunds")
        if self.threshold is not None and amount > self.threshold:   # a second administrator approves it
            pending_id = f"retire-{self.seq + 1}"
            self.pending[pending_id] = dict(account=account_id, amount=amount, requester=caller[0], state="pending",
                                            expires=now + self.mint_approval_duration_us, ended_by=None,
                                            change="retire")
            return dict(kind="retire-request", account=account_id, amount=amount, pending=pending_id)
        account["balance"] -= amount
        self.retired += amount
        return dict(kind="retire", account=account_id, amount=amount)

    def _transfer(self, caller, now, payer_id, payee_id, amount):
        if not _good_amount(amount):
            raise Refusal("InvalidAmount")
        if payer_id == payee_id:
            raise Refusal("InvalidArgument")
        payer, payee = self._account(payer_id), self._account(payee_id)
        if caller[2] or self._role(payer, caller[0]) not in ("owner", "manager", "member"):
            raise Refusal("NotAuthorized")
        self._open(payer)
        self._not_closed(payee)
        if self.available(payer_id) < amount:
            raise Refusal("InsufficientFunds")
        self._count_spending(payer_id, amount, now)
        payer["balance"] -= amount
        payee["balance"] += amount
        return dict(kind="transfer", account=payer_id, counterparty=payee_id, amount=amount)

    def _create_hold(self, caller, now, account_id, amount, expires, reference, collector, payee_id=None,
                     for_dn=None):
        if not _good_amount(amount):
            raise Refusal("InvalidAmount")
        if collector is not None and (payee_id is None or collector == caller[0]):
            raise Refusal("InvalidArgument")
        if for_dn is not None and for_dn == caller[0]:
            raise Refusal("InvalidArgument")
        if payee_id is not None and payee_id == account_id:
            raise Refusal("InvalidArgument")
        if expires <= now or expires - now > self.hold_duration_max_us:
            raise Refusal("InvalidExpiry")
        account = self._account(account_id)
        payee = self._account(payee_id) if payee_id is not None else None
        if for_dn is not None:
            if not self._may_use_grant(caller, account, for_dn):
                raise Refusal("NotAuthorized")
        elif self._role(account, caller[0]) not in ("owner", "manager", "member"):
            raise Refusal("NotAuthorized")
        self._open(account)
        if payee is not None:
            self._not_closed(payee)
        if for_dn is not None:
            grants_before = {dn: dict(grant) for dn, grant in account["grants"].items()}
            self._count_grant(account, caller[0], amount, amount, now)
        if self.available(account_id) < amount:
            if for_dn is not None:
                account["grants"] = grants_before       # refused: nothing counted
            raise Refusal("InsufficientFunds")
        hold_id = f"hold-{self.seq + 1}"
        self.holds[hold_id] = dict(account=account_id, amount=amount, charged=0, expires=expires,
                                   creator=caller[0], collector=collector, payee=payee_id, state="active",
                                   **{"for": for_dn})
        return dict(kind="hold", account=account_id, amount=amount, hold=hold_id, hold_state="active")

    def _extend_hold(self, caller, now, hold_id, expires, amount, payee_id=None):
        if expires is None and amount is None and payee_id is None:
            raise Refusal("InvalidArgument")
        if amount is not None and not _good_amount(amount):
            raise Refusal("InvalidAmount")
        hold = self._hold(hold_id)
        account = self.accounts[hold["account"]]
        if payee_id is not None and payee_id == hold["account"]:
            raise Refusal("InvalidArgument")
        payee = self._account(payee_id) if payee_id is not None else None
        if self._serves(caller, hold):
            if payee_id is not None or (amount is not None and not self._may_use_grant(caller, account, hold["for"])):
                raise Refusal("NotAuthorized")
        elif not (self._spends_for(caller, account, hold)
                  or (self._collects(caller, hold) and amount is None and payee_id is None)):
            raise Refusal("NotAuthorized")
        self._active_unexpired(hold, now)
        self._open(account)
        if payee is not None:
            self._not_closed(payee)
        if expires is not None and (expires <= hold["expires"] or expires - now > self.hold_duration_max_us):
            raise Refusal("InvalidExpiry")
        increase = 0
        if amount is not None:
            if amount <= hold["amount"]:
                raise Refusal("InvalidAmount")
            increase = amount - hold["amount"]
            grants_before = {dn: dict(grant) for dn, grant in account["grants"].items()}
            if self._serves(caller, hold):
                self._count_grant(account, caller[0], amount, increase, now)
            if self.available(hold["account"]) < increase:
                account["grants"] = grants_before
                raise Refusal("InsufficientFunds")
            hold["amount"] = amount
        if expires is not None:
            hold["expires"] = expires
        if payee_id is not None:
            hold["payee"] = payee_id
        return dict(kind="extend", account=hold["account"], amount=increase or None, hold=hold_id,
                    hold_state="active")

    def _charge_hold(self, caller, now, hold_id, payee_id, amount):
        if not _good_amount(amount):
            raise Refusal("InvalidAmount")
        hold = self._hold(hold_id)
        payee = self._account(payee_id)
        account = self.accounts[hold["account"]]
        if not (self._spends_for(caller, account, hold) or self._collects(caller, hold) or self._serves(caller, hold)):
            raise Refusal("NotAuthorized")
        if hold["payee"] is not None and payee_id != hold["payee"]:
            raise Refusal("NotAuthorized")
        self._active_unexpired(hold, now)
        self._open(account)
        self._not_closed(payee)
        if payee_id == hold["account"]:
            raise Refusal("InvalidArgument")
        if amount > hold["amount"] - hold["charged"]:
            raise Refusal("ExceedsHold")
        self._count_spending(hold["account"], amount, now)
        hold["charged"] += amount
        account["balance"] -= amount
        payee["balance"] += amount
        if hold["charged"] == hold["amount"]:
            hold["state"] = "charged-out"
        return dict(kind="charge", account=hold["account"], counterparty=payee_id, amount=amount, hold=hold_id,
                    hold_state=hold["state"])

    def _settle_hold(self, caller, now, hold_id, payee_id, amount):
        """The final charge (0 up to what is left) and the release of the rest, in one step; the hold ends."""
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
            raise Refusal("InvalidAmount")
        hold = self._hold(hold_id)
        payee = self._account(payee_id)
        account = self.accounts[hold["account"]]
        if not (self._spends_for(caller, account, hold) or self._collects(caller, hold) or self._serves(caller, hold)):
            raise Refusal("NotAuthorized")
        if hold["payee"] is not None and payee_id != hold["payee"]:
            raise Refusal("NotAuthorized")
        self._active_unexpired(hold, now)
        if amount > 0:                      # settling nothing moves nothing out: a frozen account allows it
            self._open(account)
        self._not_closed(payee)
        if payee_id == hold["account"]:
            raise Refusal("InvalidArgument")
        left = hold["amount"] - hold["charged"]
        if amount > left:
            raise Refusal("ExceedsHold")
        if amount > 0:
            self._count_spending(hold["account"], amount, now)
        hold["charged"] += amount
        account["balance"] -= amount
        payee["balance"] += amount
        hold["state"] = "settled"
        return dict(kind="settle", account=hold["account"], counterparty=payee_id, amount=amount, released=left - amount,
                    hold=hold_id, hold_state="settled")

    def _release_hold(self, caller, now, hold_id):
        hold = self._hold(hold_id)
        account = self.accounts[hold["account"]]
        if not (caller[1] or self._spends_for(caller, account, hold) or self._collects(caller, hold)
                or self._serves(caller, hold)):
            raise Refusal("NotAuthorized")
        self._active_unexpired(hold, now)
        hold["state"] = "released"
        return dict(kind="release", account=hold["account"], amount=hold["amount"] - hold["charged"],
                    hold=hold_id, hold_state="released")

    def _expire_hold(self, caller, now, hold_id):
        hold = self._hold(hold_id)
        if hold["state"] != "active":
            raise Refusal("HoldEnded")
        if now < hold["expires"]:
            raise Refusal("HoldNotExpired")
        hold["state"] = "expired"
        return dict(kind="expire", account=hold["account"], amount=hold["amount"] - hold["charged"],
                    hold=hold_id, hold_state="expired")
