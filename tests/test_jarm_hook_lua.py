"""JARM's job_submit.lua (issue 13.5) run by Debian's lua5.1 with LuaSocket, as slurmctld runs it, against
the agent's real socket server (in this process) — without Slurm, so quick.

The hook admits a job that fits its account's allowance without a round trip to the agent, and tells
the agent what it spent; anything else asks the agent, giving back what is left of the allowance
first. Nothing is spent twice: the agent counts each allowance as set aside until it hears what became
of it; two hooks on one account never admit more than its funds; a closed connection ends its
allowances on both sides; lower funds revoke an allowance; a stale one is not spent. The hook's cost
is the agent's (exact while the numbers fit a double, an upper bound beyond). Heterogeneous jobs are
refused with the reason.

Against the real Slurm: tests/test_jarm_agent_slurm.py."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gridcredit.services.jarm import pricing
from gridcredit.services.jarm.agent import Admissions, AgentServer, Funds, render_hook
from gridcredit.services.jarm.config import JarmConfig
from gridcredit.services.jarm.types import JobRequest, LoadPricing, Metric, Occupancy, PriceTable, Rate

CREDIT = 1_000_000
NO_VAL = 4294967294
LUA = shutil.which("lua5.1")
LUASOCKET_UNIX = Path("/usr/lib/x86_64-linux-gnu/lua/5.1/socket/unix.so")
# 60 credits per core-hour (1 per core-minute) and 1 per job; "odd" prices every metric with awkward numbers and
# doubles at full load; "dear" has the largest prices (its estimates do not fit a double: an upper bound)
PRICES = {Metric.CORE_WALL: 60 * CREDIT, Metric.CPU: 0, Metric.MEMORY: 0, Metric.GPU: 0, Metric.JOB: CREDIT}
ODD = {Metric.CORE_WALL: 7_777_777, Metric.CPU: 1_234_567, Metric.MEMORY: 333_333, Metric.GPU: 99_999_999,
       Metric.JOB: 500_001}
DEAR = {metric: 10**12 for metric in Metric}
RATES = (Rate("batch", "normal", PRICES), Rate("odd", "normal", ODD, load=LoadPricing(100, 900, 700, 2000)),
         Rate("dear", "normal", DEAR))

pytestmark = pytest.mark.skipif(LUA is None or not LUASOCKET_UNIX.exists(),
                                reason="needs Debian's lua5.1 and lua-socket (scripts/slurm.sh installs them)")

# Reads one command a line from stdin: "submit key=value…" runs slurm_job_submit with a job_desc made of
# them and prints what the hook did, then "done"; "reload" loads the hook again (a new Lua state, as
# slurmctld does when the script changes: the old connection is collected).
DRIVER = r"""
local hook_path = arg[1]
local said = {}
slurm = {NO_VAL = 4294967294, SUCCESS = 0, ESLURM_ACCOUNTING_POLICY = 2050}
function slurm.log_info(fmt, ...) table.insert(said, "info " .. string.format(fmt, ...)) end
function slurm.log_error(fmt, ...) table.insert(said, "error " .. string.format(fmt, ...)) end
function slurm.log_user(fmt, ...) table.insert(said, "user " .. string.format(fmt, ...)) end
local part_list = {batch = {flag_default = 1, default_time = 4294967294, max_time = 4294967294},
                   odd = {flag_default = 0, default_time = 60, max_time = 60},
                   dear = {flag_default = 0, default_time = 60, max_time = 60}}
dofile(hook_path)
io.stdout:setvbuf("line")
for line in io.lines() do
    if line == "reload" then
        collectgarbage("collect")
        dofile(hook_path)
        collectgarbage("collect")
    else
        local job = {user_name = "gcuser1", min_nodes = 1}
        for key, value in string.gmatch(line, "([%w_]+)=(%S+)") do job[key] = tonumber(value) or value end
        said = {}
        local rc = slurm_job_submit(job, part_list, 1001)
        print("rc " .. rc)
        print("comment " .. tostring(job.admin_comment))
        for _, words in ipairs(said) do print(words) end
    end
    print("done")
end
"""


class Hook:
    """job_submit.lua in a lua5.1 process of its own (one Lua state, as slurmctld's)."""

    def __init__(self, tmp_path: Path, socket_path: str, **settings) -> None:
        self.dir = tmp_path
        hook = tmp_path / f"job_submit-{id(self)}.lua"
        settings.setdefault("admission_timeout_ms", 1000)
        hook.write_text(render_hook(JarmConfig(agent_socket=socket_path, **settings)))
        driver = tmp_path / "driver.lua"
        driver.write_text(DRIVER)
        self.process = subprocess.Popen([LUA, str(driver), str(hook)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def submit(self, account="proj1", minutes=10, cores=1, partition="batch", **job) -> dict:
        job.update(account=account, time_limit=minutes, min_cpus=cores, partition=partition)
        words = " ".join(f"{key}={value}" for key, value in job.items())
        started = time.monotonic()
        self.process.stdin.write(f"submit {words}\n")
        self.process.stdin.flush()
        said = []
        while (line := self.process.stdout.readline().rstrip("\n")) != "done":
            assert line, f"the Lua process ended: {said}"
            said.append(line)
        assert said[0].startswith("rc "), said
        comment = said[1].removeprefix("comment ")
        return {"rc": int(said[0][3:]), "seconds": time.monotonic() - started,
                "id": comment.removeprefix("jarm-admission=") if comment != "nil" else None,
                "said": said[2:], "text": "\n".join(said[2:])}

    def reload(self) -> None:
        self.process.stdin.write("reload\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline() == "done\n"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


class Agent:
    """The agent's socket server and state in this process (a thread with its event loop)."""

    def __init__(self, path: Path, funds: dict[str, int], stale_s: int = 30) -> None:
        self.state = Admissions("refuse", 0, stale_s)
        self.state.set_prices(PriceTable("site", 1, 0, RATES))
        now_us = time.time_ns() // 1000
        for account, credits in funds.items():
            self.state.set_funds(account, Funds(credits, now_us))
        self.server = AgentServer(self.state, str(path), allowed_uids=frozenset({0, os.getuid()}))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.stop_event = None

        def serve():
            asyncio.set_event_loop(self.loop)
            self.stop_event = asyncio.Event()
            self.loop.run_until_complete(self.server.serve(ready=ready, stop=self.stop_event))

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def in_loop(self, function, *args):
        """Run ``function`` in the server's event loop (as the refresh does) and answer its result."""
        done, result = threading.Event(), []
        self.loop.call_soon_threadsafe(lambda: (result.append(function(*args)), done.set()))
        assert done.wait(10)
        return result[0]

    def set_funds(self, account: str, credits: int, read_us: int | None = None) -> None:
        """What the refresh does when it read an account's funds: set them, then push to the hooks."""
        self.state.set_funds(account, Funds(credits, read_us or time.time_ns() // 1000))
        self.in_loop(self.server.push, account)

    def settled(self) -> None:
        """Wait until the server has read everything the hooks sent (a ping on a connection of its own
        comes after the lines already in the other connections' buffers only once they are read)."""
        time.sleep(0.2)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def place(tmp_path):
    hooks: list[Hook] = []
    agents: list[Agent] = []

    class Place:
        socket = str(tmp_path / "agent.sock")

        def agent(self, funds, **settings) -> Agent:
            agents.append(Agent(Path(self.socket), funds, **settings))
            return agents[-1]

        def hook(self, **settings) -> Hook:
            hooks.append(Hook(tmp_path, self.socket, **settings))
            return hooks[-1]

    yield Place()
    for hook in hooks:
        hook.close()
    for agent in agents:
        agent.stop()


def admitted_by(result: dict) -> str:
    assert result["rc"] == 0, result
    return re.fullmatch(r"info jarm: admit a-[0-9a-f]{32} account=\S+ in [0-9.]+ ms \((\w+)\)", result["said"][0])[1]


def test_after_the_first_round_trip_jobs_are_admitted_from_the_allowance_and_counted_by_the_agent(place):
    agent = place.agent({"proj1": 100})
    hook = place.hook()
    results = [hook.submit() for _ in range(9)]                             # 11 credits each: 99 of 100
    assert [admitted_by(result) for result in results] == ["agent"] + ["allowance"] * 8
    ids = [result["id"] for result in results]
    assert len(set(ids)) == 9 and all(re.fullmatch(r"a-[0-9a-f]{32}", admission) for admission in ids)
    agent.settled()
    assert agent.state.pending_by_account == {"proj1": 99} and set(agent.state.pending) == set(ids)
    assert agent.state.granted == {"proj1": 1}                               # what the hook has left
    # the tenth does not fit what is left: the hook gives back its 1 credit, the agent refuses with all the numbers
    refused = hook.submit()
    assert refused["rc"] == 2050
    assert ("user JARM: job refused: it may cost 11 credits, account proj1 has 1 available (100 at the Bank less 99 "
            "for jobs admitted and not yet held): short by 10 credits") in refused["text"], refused
    agent.settled()
    assert agent.state.granted == {"proj1": 1}                               # (given again with the answer)
    assert agent.state.pending_by_account == {"proj1": 99}
    # a job settled (held) frees its credits at the agent: the hook asks again when its allowance is short
    agent.state.settle(ids[0])
    assert admitted_by(hook.submit()) == "agent"


def test_two_hooks_on_one_account_never_admit_more_than_its_funds(place):
    # (slurmctld has one Lua state: a second one lives only while a reloaded script's old state is collected)
    agent = place.agent({"proj1": 100})
    first, second = place.hook(), place.hook()
    assert [admitted_by(first.submit()) for _ in range(3)] == ["agent", "allowance", "allowance"]
    refused = second.submit()                       # the rest is the first hook's to spend
    assert ("it may cost 11 credits, account proj1 has 0 available (100 at the Bank less 33 for jobs admitted and not "
            "yet held and 67 set aside for another submission hook): short by 11 credits") in refused["text"], refused
    first.reload()                                  # its connection closed: what it held is free again
    time.sleep(0.3)
    results = [second.submit() for _ in range(7)]
    assert [result["rc"] for result in results] == [0] * 6 + [2050]
    assert "account proj1 has 1 available" in results[-1]["text"]
    agent.settled()
    assert agent.state.pending_by_account == {"proj1": 99}          # 9 jobs of 11: never more than the 100


def test_a_closed_connection_ends_its_allowance_on_both_sides(place):
    agent = place.agent({"proj1": 100})
    hook = place.hook()
    assert admitted_by(hook.submit()) == "agent"
    agent.settled()
    assert agent.state.granted == {"proj1": 89}
    hook.reload()                        # a new Lua state: the old one's connection is collected and closed
    time.sleep(0.3)
    assert agent.state.granted == {}
    assert admitted_by(hook.submit()) == "agent"
    agent.stop()                         # the agent gone: its allowance is not spent, the site's policy applies
    refused = hook.submit()
    assert refused["rc"] == 2050 and "does not answer, and this site refuses jobs without it" in refused["text"]


def test_lower_funds_revoke_the_allowance_and_stale_funds_are_not_spent(place):
    agent = place.agent({"proj1": 100, "proj3": 100}, stale_s=2)
    hook = place.hook()
    assert admitted_by(hook.submit()) == "agent"
    agent.set_funds("proj1", 20)          # spent elsewhere: 20 - 11 pending < the 89 the hook holds
    refused = hook.submit()               # the hook gives it back, the agent decides: 20 - 11 = 9 < 11
    assert refused["rc"] == 2050
    assert "it may cost 11 credits, account proj1 has 9 available" in refused["text"], refused
    agent.settled()
    assert agent.state.granted == {"proj1": 9}      # what is left, given again with the answer
    # proj3's allowance is valid while the agent's reading is fresh (2 s here), not after
    assert admitted_by(hook.submit("proj3")) == "agent"
    assert admitted_by(hook.submit("proj3")) == "allowance"
    time.sleep(2.2)
    stale = hook.submit("proj3")
    assert stale["rc"] == 2050 and "the Bank cannot be reached" in stale["text"], stale


def test_the_hooks_cost_is_the_agents(place, caplog):
    agent = place.agent({"proj1": 10**15})
    hook = place.hook()
    caplog.set_level(logging.INFO, logger="gridcredit.jarm.agent")
    shapes = [dict(partition="batch", minutes=10), dict(partition="batch", minutes=7, cores=3),
              dict(partition="odd", minutes=1, cores=1), dict(partition="odd", minutes=59, cores=17, min_nodes=2,
                                                              min_mem_per_cpu=3000, tres_per_node="gres:gpu:3"),
              dict(partition="odd", minutes=13, cores=5, min_mem_per_node=777),
              dict(partition="dear", minutes=60, cores=1000)]
    assert admitted_by(hook.submit(**shapes[0])) == "agent"
    for shape in shapes:
        assert admitted_by(hook.submit(**shape)) == "allowance", shape
    agent.settled()
    spent = re.findall(r"cost (\d+) \(the hook's estimate (\d+)\), from its allowance", caplog.text)
    assert len(spent) == len(shapes)
    table = PriceTable("site", 1, 0, RATES)
    for shape, (cost, estimate) in zip(shapes, spent):
        cores, nodes = shape.get("cores", 1), shape.get("min_nodes", 1)
        memory_mb = shape.get("min_mem_per_cpu", 0) * cores or shape.get("min_mem_per_node", 0) * nodes
        gpus = 3 * nodes if "tres_per_node" in shape else 0
        request = JobRequest(shape["partition"], "normal", cores, shape["minutes"] * 60, memory_mb, gpus, nodes)
        exact = pricing.quote(table, request, now_us=1, occupancy=Occupancy(1, 1)).cost.credits
        assert int(cost) == exact, shape
        if shape in shapes[:3]:                   # small numbers: exact
            assert int(estimate) == exact, shape
        else:                                     # sums beyond a double's whole numbers: an upper bound
            assert exact <= int(estimate) <= exact * (1 + 1e-8) + 1, shape


def test_a_heterogeneous_job_is_refused_with_the_reason(place):
    place.agent({"proj1": 100})
    hook = place.hook()
    refused = hook.submit(het_job_offset=0)
    assert refused["rc"] == 2050
    assert ("user JARM: heterogeneous jobs (components separated by ':' or #SBATCH hetjob) cannot be priced at this "
            "site: submit each component as a job of its own") in refused["text"]
    assert admitted_by(hook.submit(het_job_offset=NO_VAL)) == "agent"        # an ordinary job: NO_VAL


def test_jobs_admitted_while_the_agent_is_down_are_counted_by_it_when_it_answers_again(place):
    hook = place.hook(bank_unreachable="admit_capped", agent_down_jobs_max=2)
    down = [hook.submit() for _ in range(3)]                 # nobody on the socket
    assert [result["rc"] for result in down] == [0, 0, 2050]
    assert all(re.fullmatch(r"a-[0-9a-f]{32}", result["id"]) for result in down[:2]) and down[0]["id"] != down[1]["id"]
    assert "account proj1 already has 2 jobs admitted without it" in down[2]["text"]
    agent = place.agent({"proj1": 100})
    assert admitted_by(hook.submit()) == "agent"
    agent.settled()
    # the agent heard of the two before it answered: they count against proj1's funds as its own admissions
    assert set(agent.state.pending) >= {down[0]["id"], down[1]["id"]}
    assert agent.state.pending_by_account == {"proj1": 33}
    assert agent.state.granted == {"proj1": 67}


def test_a_frozen_agent_costs_one_wait_then_the_policy_applies_at_once(place, tmp_path):
    import socket
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)          # connects, never answers
    frozen.bind(place.socket)
    frozen.listen(16)
    try:
        hook = place.hook(admission_timeout_ms=300)
        first = hook.submit()
        assert first["rc"] == 2050 and first["seconds"] >= 0.3
        assert "jarm: the admission agent did not answer (answer: timeout)" in first["text"]
        second = hook.submit()
        assert second["rc"] == 2050 and second["seconds"] < 0.15, second
        assert "did not answer (not asked: no answer in time less than 1 s ago); policy refuse" in second["text"]
    finally:
        frozen.close()


def test_the_agent_stops_without_a_traceback_while_a_hook_is_connected(place, caplog):
    agent = place.agent({"proj1": 100})
    hook = place.hook()
    assert admitted_by(hook.submit()) == "agent"
    caplog.set_level(logging.DEBUG, logger="asyncio")
    agent.stop()
    assert "Traceback" not in caplog.text and "Exception in callback" not in caplog.text, caplog.text
