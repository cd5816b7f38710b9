"""BaseX wire client: a query waits for BaseX's answer as few times as the protocol allows.

Each message the client sends and then waits on is a round trip: on the shared 2-core machine a
wake-up of BaseX's thread and of ours. A query was QUERY, one BIND per variable, EXECUTE and CLOSE,
each waited on (a LUTS job lookup by id: two store queries, eight round trips); now QUERY, the
BINDs together, EXECUTE with CLOSE. Refusals keep their meaning: a query whose binding is refused
does not run, and the session stays usable after any refusal.
"""
from __future__ import annotations

import itertools
import os

import pytest

from gridcredit.xmlstore import AttributeIndex
from gridcredit.xmlstore._basex import BaseXStore
from gridcredit.xmlstore._basex_wire import ServerError, Session
from store_fixtures import basex_server  # noqa: F401 — fixture

pytestmark = pytest.mark.basex

_names = itertools.count()


class CountingSession(Session):
    """A real session that counts the messages it sends (each followed by a wait for an answer)."""

    sends = 0

    def _send(self, data: bytes) -> None:
        type(self).sends += 1
        super()._send(data)


@pytest.fixture
def session(basex_server):
    opened = CountingSession("127.0.0.1", basex_server.port, "admin", "admin", timeout_s=5)
    yield opened
    opened.close()


def sends_of(call) -> tuple[object, int]:
    before = CountingSession.sends
    result = call()
    return result, CountingSession.sends - before


def test_a_query_waits_for_basex_twice_and_once_more_for_all_its_bindings(session):
    assert sends_of(lambda: session.query("1 + 2")) == ("3", 2)
    text = "declare variable $a external; declare variable $b external; declare variable $c external; $a * $b || $c"
    bindings = {"$a": ("6", "xs:integer"), "$b": ("7", "xs:integer"), "$c": ("!", "")}
    assert sends_of(lambda: session.query(text, bindings)) == ("42!", 3)     # was 6: QUERY, 3 BIND, EXECUTE, CLOSE


def test_query_info_comes_with_the_result_in_the_same_exchange(session):
    session.command("SET QUERYINFO true")
    (result, info), sends = sends_of(lambda: session.query_info("declare variable $x external; $x + 1",
                                                                  {"$x": ("41", "xs:integer")}))
    assert (result, sends) == ("42", 3)
    assert "Optimized Query" in info or "Compiling" in info


def test_a_refused_binding_runs_nothing_and_the_session_goes_on(session):
    db = f"wire{os.getpid()}x{next(_names)}"
    session.command(f"CREATE DB {db}")
    try:
        update = f"declare variable $n external; db:add('{db}', <x n='{{$n}}'/>, 'p' || $n)"
        with pytest.raises(ServerError):
            session.query(update, {"$n": ("not a number", "xs:integer")})
        assert session.query(f"count(db:open('{db}'))") == "0"          # the update did not run
        session.query(update, {"$n": ("5", "xs:integer")})
        assert session.query(f"string(db:open('{db}', 'p5')/x/@n)") == "5"
        with pytest.raises(ServerError, match="NUL"):                   # refused before it is sent
            session.query("declare variable $s external; $s", {"$s": ("a\0b", "")})
        assert session.query("declare variable $s external; $s", {"$s": ("ab", "")}) == "ab"
    finally:
        session.command(f"DROP DB {db}")


def test_a_refused_query_is_closed_and_the_session_goes_on(session):
    for _ in range(3):
        with pytest.raises(ServerError, match="boom"):
            session.query("declare variable $m external; error(xs:QName('boom'), $m)", {"$m": ("boom", "")})
        with pytest.raises(ServerError):
            session.query("1 +")                                          # a syntax error
    assert session.query("declare variable $x external; $x", {"$x": ("still here", "")}) == "still here"


def test_a_store_query_on_a_caught_up_store_is_two_or_three_round_trips(basex_server, tmp_path, monkeypatch):
    """No check before a read on a verified, caught-up store costs a round trip: a query is its
    select (QUERY, BINDs, EXECUTE + CLOSE), a get none (the mirror)."""
    store = BaseXStore(tmp_path / "journal", port=basex_server.port, db_prefix=f"w{os.getpid()}x{next(_names)}_",
                       timeout_s=10, indexes=[AttributeIndex("ur_", ("user",), True)])
    try:
        store.transact(lambda tx: [tx.put("ur_m", f"d{n}", f"<r user='u{n % 3}'/>".encode()) for n in range(30)])
        store.flush()
        assert len(store.query("ur_m", None, where={"user": "u1"}, limit=100).documents) == 10   # (pins, caches)
        sends = []
        original = Session._send
        monkeypatch.setattr(Session, "_send", lambda self, data: (sends.append(data[:1]), original(self, data))[1])
        page = store.query("ur_m", None, where={"user": "u1"}, limit=100)
        assert len(page.documents) == 10
        assert len(sends) <= 3, sends         # was 3 + one per binding
        sends.clear()
        assert store.get("ur_m", "d1") is not None and sends == []
    finally:
        store.close()
