"""JARM's admission agent (issue 13.5), without Slurm: the line protocol, the admission arithmetic
(whole credits: cost, available, pending, the unfunded cap), and the Unix socket server's limits —
a request's size and time, many connections, a slow client that holds up no one.

The agent against the real Slurm and a real Bank: tests/test_jarm_agent_slurm.py."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from gridcredit.services.jarm import agent
from gridcredit.services.jarm.agent import (AdmitRequest, Admissions, AgentServer, Funds, ProtocolError,
                                            admit_line, parse_request, refusal_message, render_hook)
from gridcredit.services.jarm.config import JarmConfig
from gridcredit.services.jarm.types import LoadPricing, Metric, PriceTable, Rate

CREDIT = 1_000_000                          # micro-credits
NOW_US = 1_800_000_000 * 1_000_000
S_US = 1_000_000
# 60 credits per core-hour (1 per core-minute) and 1 credit per job; the "load" partition doubles at full load
RATES = (Rate("batch", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0,
                                  Metric.JOB: CREDIT}),
         Rate("load", "normal", {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0,
                                 Metric.JOB: CREDIT}, load=LoadPricing(0, 500, 1000, 2000)))
TABLE = PriceTable("site", 1, NOW_US - 3600 * S_US, RATES)


def job(account="proj1", minutes=10, cores=1, partition="batch", **changes) -> AdmitRequest:
    fields = dict(user="gcuser1", uid=1001, account=account, partition=partition, qos="normal", cores=cores, nodes=1,
                  time_limit_s=minutes * 60, memory_mb=256, gpus=0)
    fields.update(changes)
    return AdmitRequest(**fields)


def admissions(policy="refuse", cap=0, funds=None, stale_s=30) -> Admissions:
    state = Admissions(policy, cap, stale_s)
    state.set_prices(TABLE)
    for account, available in (funds or {}).items():
        state.set_funds(account, Funds(available, NOW_US))
    return state


# -- the protocol ----------------------------------------------------------------------------------


def test_an_admit_line_reads_back_as_the_request():
    request = job(cores=4, gpus=2, memory_mb=1024)
    assert parse_request(admit_line(request)) == ("admit", request)
    assert parse_request(b"ping v1\n") == ("ping", None)
    assert parse_request(b"settle v1 id=a-" + b"0" * 32 + b"\n") == ("settle", "a-" + "0" * 32)


@pytest.mark.parametrize("line, words", [
    (b"admit v3 user=x\n", "'<verb> v1 key=value"),      # admit v2 is the hook's (allowances)
    (b"ping v2\n", "'<verb> v1 key=value"),
    (b"spent v1 id=a-" + b"0" * 32 + b" credits=x\n", "credits must be a whole number"),
    (b"return v1 account=proj1\n", "unknown request"),
    (b"launch v1\n", "unknown request"),
    (admit_line(job()).replace(b" gpus=0", b""), "an admit request has the fields"),
    (admit_line(job()).replace(b" gpus=0", b" gpus=0 colour=red"), "an admit request has the fields"),
    (admit_line(job()).replace(b"cores=1", b"cores=-1"), "cores must be a whole number"),
    (admit_line(job()).replace(b"cores=1", b"cores=1.5"), "cores must be a whole number"),
    (admit_line(job()).replace(b"cores=1", b"cores=99999999999999999999"), "cores must be a whole number"),
    (admit_line(job()).replace(b"uid=1001", b"uid=1001 uid=0"), "given once"),
    (admit_line(job()).replace(b"gcuser1", "gcüser".encode()), "ASCII"),
    (b"settle v1 id=../../etc\n", "an admission id"),
    (b"admit v1 " + b"x" * agent.REQUEST_BYTES_MAX + b"\n", f"at most {agent.REQUEST_BYTES_MAX} bytes"),
])
def test_a_line_that_is_not_a_request_is_a_protocol_error(line, words):
    with pytest.raises(ProtocolError, match=words.replace("(", r"\(")):
        parse_request(line)


# -- the arithmetic (whole credits) ------------------------------------------------------------------


def test_a_job_within_the_funds_is_admitted_and_counts_until_it_is_settled():
    state = admissions(funds={"proj1": 30})
    first = state.decide(job(minutes=10), now_us=NOW_US)            # 10 core-minutes + 1 = 11 credits
    assert (first.admitted, first.cost) == (True, 11) and first.admission_id.startswith("a-")
    second = state.decide(job(minutes=10), now_us=NOW_US)
    assert second.admitted and state.pending_by_account == {"proj1": 22}
    third = state.decide(job(minutes=10), now_us=NOW_US)             # 30 - 22 = 8 < 11
    assert not third.admitted
    assert third.message == refusal_message("proj1", 11, 30, 22)
    assert ("may cost 11 credits, account proj1 has 8 available (30 at the Bank less 22 for jobs admitted and "
            "not yet held): short by 3 credits") in third.message
    assert state.settle(first.admission_id) is True and state.settle(first.admission_id) is False
    assert state.pending_by_account == {"proj1": 11}
    assert state.decide(job(minutes=10), now_us=NOW_US).admitted    # 30 - 11 = 19 ≥ 11


def test_admissions_whose_jobs_left_the_queue_stop_counting():
    state = admissions(funds={"proj1": 1000})
    old = [state.decide(job(minutes=10), now_us=NOW_US).admission_id for _ in range(3)]
    recent = state.decide(job(minutes=10), now_us=NOW_US + 5 * S_US).admission_id
    # read at +6 s: old[0] still pending; old[1], old[2] started or gone; the recent one may not be listed yet
    assert state.set_queued(NOW_US + 6 * S_US, frozenset({old[0]})) == 2
    assert set(state.pending) == {old[0], recent} and state.pending_by_account == {"proj1": 22}
    assert state.set_queued(NOW_US + 8 * S_US, frozenset()) == 2 and state.pending_by_account == {}


def test_the_exact_funds_admit_and_one_credit_less_refuses():
    assert admissions(funds={"proj1": 11}).decide(job(minutes=10), now_us=NOW_US).admitted
    refused = admissions(funds={"proj1": 10}).decide(job(minutes=10), now_us=NOW_US)
    assert not refused.admitted
    assert "may cost 11 credits, account proj1 has 10 available: short by 1 credits" in refused.message


def test_an_empty_account_is_refused_with_cost_available_and_shortfall():
    refused = admissions(funds={"proj2": 0}).decide(job(account="proj2", minutes=60, cores=2), now_us=NOW_US)
    assert refused.message.startswith("JARM: job refused: it may cost 121 credits, account proj2 has 0 available: "
                                      "short by 121 credits")


def test_an_overdrawn_account_shows_nothing_available():
    refused = admissions(funds={"proj1": -5}).decide(job(minutes=1), now_us=NOW_US)
    assert "may cost 2 credits, account proj1 has 0 available: short by 2 credits" in refused.message


def test_a_load_priced_partition_is_estimated_at_its_greatest_multiplier():
    state = admissions(funds={"proj1": 21})
    decision = state.decide(job(partition="load", minutes=10), now_us=NOW_US)
    assert (decision.admitted, decision.cost) == (True, 21)           # 10 × 2 + 1 (the fee is not scaled)


def test_a_new_price_table_prices_the_same_job_shape_anew():
    state = admissions(funds={"proj1": 10**6})
    assert state.decide(job(minutes=10), now_us=NOW_US).cost == 11
    doubled = {Metric.CORE_WALL: 120 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
    state.set_prices(PriceTable("site", 2, NOW_US - S_US, (Rate("batch", "normal", doubled),)))
    assert state.decide(job(minutes=10), now_us=NOW_US).cost == 21


def test_a_job_that_cannot_be_priced_is_refused_with_the_pricing_reason():
    state = admissions(funds={"proj1": 10**9})
    assert "has no partition 'gpu'" in state.decide(job(partition="gpu"), now_us=NOW_US).message
    assert "has no time limit, so its cost cannot be estimated: give it one (sbatch --time=…)" in \
        state.decide(job(time_limit_s=0), now_us=NOW_US).message
    assert "the job's cores 2,000,000 is outside" in state.decide(job(cores=2_000_000), now_us=NOW_US).message
    assert "not an account name" in state.decide(job(account="pro?1"), now_us=NOW_US).message
    assert state.pending == {}


def test_without_prices_nothing_is_admitted():
    state = Admissions("admit_capped", 1000, 30)
    state.set_funds("proj1", Funds(1000, NOW_US))
    assert "no price table has been read" in state.decide(job(), now_us=NOW_US).message


def test_without_the_banks_word_the_refuse_policy_refuses():
    state = admissions(funds={"proj1": 1000}, stale_s=30)
    assert state.decide(job(), now_us=NOW_US + 30 * S_US).admitted            # 30 s old: still the Bank's word
    refused = state.decide(job(), now_us=NOW_US + 31 * S_US)
    assert not refused.admitted and "was last read 31 s ago" in refused.message and "refuses" in refused.message
    never = state.decide(job(account="proj9"), now_us=NOW_US)
    assert "has not been read yet" in never.message and state.wanted == {"proj9"}


def test_without_the_banks_word_admit_capped_admits_up_to_the_cap_per_account():
    state = admissions(policy="admit_capped", cap=25, funds={"proj1": 0})
    later = NOW_US + 60 * S_US                                                   # the balance is stale
    assert [state.decide(job(minutes=10), now_us=later).admitted for _ in range(3)] == [True, True, False]
    refused = state.decide(job(minutes=10), now_us=later)
    assert "at most 25 credits of jobs per account" in refused.message and "22 are admitted already" in refused.message
    assert "may cost 11 credits, 8 more than the 3 left" in refused.message
    assert state.decide(job(account="proj2", minutes=10), now_us=later).admitted   # another account: its own cap
    # the Bank answers again: what was admitted unfunded counts against the funds it reports
    state.set_funds("proj1", Funds(30, later))
    assert state.unfunded_by_account.get("proj1") is None
    assert not state.decide(job(minutes=10), now_us=later).admitted             # 30 - 22 = 8 < 11


def test_an_account_the_bank_refuses_to_show_is_refused_with_the_banks_reason():
    state = admissions(policy="admit_capped", cap=1000)
    state.set_funds("proj1", Funds(None, NOW_US, "NotAuthorized: the site may not view account proj1"))
    refused = state.decide(job(), now_us=NOW_US)
    assert "the Bank does not let account proj1 be used here: NotAuthorized" in refused.message


def test_admissions_never_settled_stop_counting_after_the_longest_wait():
    state = admissions(funds={"proj1": 11})
    assert state.decide(job(minutes=10), now_us=NOW_US).admitted
    later = NOW_US + agent.PENDING_S_MAX * S_US + 1
    state.set_funds("proj1", Funds(11, later))
    assert state.decide(job(minutes=10), now_us=later).admitted and len(state.pending) == 1


def test_the_agent_uses_no_floats():
    import io
    import tokenize

    source = Path(agent.__file__).read_text()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    money = [token.string for token in tokens if token.type == tokenize.NUMBER and ("." in token.string or "e" in
                                                                                       token.string.lower())]
    # the only non-integer numbers are the socket's time limits (seconds), never money
    assert set(money) <= {"2.0", "60.0", "10.0", "0.05"}, money
    assert " / " not in source.split("# -- the decision")[1].split("# -- the background refresh")[0]


def test_the_agent_puts_itself_under_batch_scheduling():
    # (a woken SCHED_BATCH thread never preempts the running one: the hook's write of what it spent does not
    # hand slurmctld's CPU to the agent in the middle of a submission)
    seen = []
    thread = threading.Thread(target=lambda: seen.append((agent.batch_scheduling(), os.sched_getscheduler(0))))
    thread.start()
    thread.join(10)
    assert seen == [(True, os.SCHED_BATCH)]
    assert os.sched_getscheduler(0) != os.SCHED_BATCH              # per thread: this one is as it was


# -- the hook's settings ------------------------------------------------------------------------------


def test_the_hook_is_written_with_the_sites_settings():
    text = render_hook(JarmConfig(agent_socket="/run/jarm/a.sock", admission_timeout_ms=40,
                                  bank_unreachable="admit_capped", agent_down_jobs_max=3))
    assert 'local SOCKET_PATH = "/run/jarm/a.sock"' in text and "local TIMEOUT_S = 40 / 1000" in text
    assert 'local POLICY = "admit_capped"' in text and "local AGENT_DOWN_JOBS_MAX = 3" in text
    assert "@" not in text.split("]]", 1)[1]


# -- the socket server ----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    state = admissions(funds={"proj1": 1000})
    path = str(tmp_path / "agent.sock")
    running = AgentServer(state, path, allowed_uids=frozenset({0, __import__("os").getuid()}))
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), None

    def serve():
        nonlocal stop
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        loop.run_until_complete(running.serve(ready=ready, stop=stop))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield running
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def ask(path: str, data: bytes, timeout_s: float = 2.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        client.connect(path)
        client.sendall(data)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def test_the_server_admits_refuses_settles_and_pings(server):
    answer = ask(server.path, admit_line(job(minutes=10)))
    assert answer.startswith(b"admit a-") and answer.endswith(b"\n")
    admission_id = answer.split()[1].decode()
    refused = ask(server.path, admit_line(job(minutes=100_000)))
    assert refused.startswith(b"refuse JARM: job refused: it may cost 100001 credits, account proj1 has 989 available")
    assert ask(server.path, f"settle v1 id={admission_id}\n".encode()) == b"settled\n"
    assert ask(server.path, b"ping v1\n") == b"pong prices=1 accounts=1 pending=0\n"
    assert ask(server.path, b"hello\n").startswith(b"error ")


def test_several_requests_on_one_connection(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(server.path)
        client.sendall(b"ping v1\nping v1\n")
        answers = b""
        while answers.count(b"\n") < 2:
            answers += client.recv(4096)
    assert answers == b"pong prices=1 accounts=1 pending=0\n" * 2


def test_a_line_in_pieces_is_read_whole(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(3)
        client.connect(server.path)
        line = b"ping v1\n"
        for index in range(len(line)):
            client.sendall(line[index:index + 1])
            time.sleep(0.05)
        assert client.recv(100) == b"pong prices=1 accounts=1 pending=0\n"


def test_an_oversized_line_is_refused_and_the_connection_closed(server):
    answer = ask(server.path, b"admit v1 " + b"x" * 5000 + b"\n")
    assert answer == f"error a request is at most {agent.REQUEST_BYTES_MAX} bytes\n".encode()


def test_a_slow_or_silent_client_does_not_hold_up_others(server):
    silent = []
    for _ in range(50):                                       # connected, never a full line
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(server.path)
        client.sendall(b"admit v1 user=slow")
        silent.append(client)
    try:
        started = time.monotonic()
        for _ in range(20):
            assert ask(server.path, admit_line(job(minutes=1))).startswith(b"admit ")
        assert time.monotonic() - started < 1.0
        # the silent ones are dropped after the request time limit
        silent[0].settimeout(agent.REQUEST_TIMEOUT_S + 3)
        assert silent[0].recv(100) == b""
    finally:
        for client in silent:
            client.close()


def test_too_many_connections_are_told_so(server, monkeypatch):
    monkeypatch.setattr(agent, "CONNECTIONS_MAX", 3)
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for client in held:
            client.connect(server.path)
        time.sleep(0.2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:   # answered before it asks
            extra.settimeout(2)
            extra.connect(server.path)
            assert extra.recv(200).startswith(b"error busy")
    finally:
        for client in held:
            client.close()


def test_a_user_not_allowed_is_refused(server):
    server.allowed_uids = frozenset({12345})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(server.path)
        assert client.recv(200) == b"error this user may not ask the JARM agent\n"


def test_the_answer_leaves_before_its_log_line_is_written(server):
    """The hook waits for the answer inside slurmctld: the agent writes it before its log line (the log's
    formatting and write were ~0.1 ms of a ~0.5 ms answer; a log sink that blocks — here a pipe nobody
    reads, full — must not hold the answer back). Failed before: the answer waited for the log's write."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass                                                 # the pipe is full: a write to it blocks
    os.set_blocking(write_end, True)
    sink = logging.StreamHandler(os.fdopen(write_end, "w", buffering=1))
    logger = logging.getLogger("gridcredit.jarm.agent")
    logger.addHandler(sink)
    level = logger.level
    logger.setLevel(logging.INFO)
    unblocked = threading.Event()

    def drain() -> None:                                     # let the agent's blocked log write finish at last
        unblocked.wait(30)
        os.set_blocking(read_end, False)
        empty = 0
        while empty < 5:                                     # (until nothing more comes for 0.25 s)
            try:
                empty = 0 if os.read(read_end, 1 << 20) else 5
            except BlockingIOError:
                empty += 1
                time.sleep(0.05)

    draining = threading.Thread(target=drain, daemon=True)
    draining.start()
    try:
        answer = ask(server.path, admit_line(job(minutes=10)), timeout_s=3)
        assert answer.startswith(b"admit a-"), answer
    finally:
        unblocked.set()
        draining.join(15)
        logger.removeHandler(sink)
        logger.setLevel(level)
        sink.stream.close()
        os.close(read_end)
