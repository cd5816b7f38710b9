#!/usr/bin/env python3
"""Capture real sacct and sinfo output from scripts/slurm.sh's cluster into tests/data/slurm/, for the
parser tests of services/jarm/slurm/accounting.py (tests/test_jarm_accounting.py).

    sudo .venv/bin/python tests/slurm/capture_accounting.py [OUT_DIR]      (default tests/data/slurm)

Run as root on the test cluster (scripts/slurm.sh start). Submits, as gcuser1, the jobs below, waits for
slurmdbd to have their ends, and writes for each the exact output of accounting.sacct_command (``--allusers
--duplicates --noconvert --parsable2 --noheader``, under accounting.SLURM_ENV: LC_ALL=C, TZ=UTC,
SLURM_TIME_FORMAT=%s) to ``sacct-<name>.txt``; sinfo's (accounting.sinfo_command) while the node is idle and
while a job holds a CPU to ``sinfo-idle.txt``/``sinfo-busy.txt``; and ``captured.json``: each job's id and
what scontrol said of it (restarts) when it was captured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from gridcredit.services.jarm.slurm.accounting import (SLURM_ENV, sacct_command,  # noqa: E402
                                                       sinfo_command)

ENV = {**os.environ, **SLURM_ENV}
USAGE_JOB = REPO / "tests" / "slurm" / "usage_job.py"


def run(command: list[str], *, user: str | None = None, check: bool = True) -> str:
    if user:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=60, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def sbatch(workdir: Path, *options: str) -> int:
    out = run(["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *options],
              user="gcuser1")
    return int(out.strip().split(";")[0])


def job_state(job_id: int) -> str:
    text = run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
    for field in text.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return ""


def wait_ended(job: str, *, timeout_s: float = 300) -> str:
    """Wait until sacct shows the job's newest records (and their steps) ended; answer that output."""
    deadline = time.monotonic() + timeout_s
    running = {"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUED"}
    while time.monotonic() < deadline:
        output = run(sacct_command(job))
        states = [line.split("|")[7].split()[0] for line in output.splitlines() if line]
        newest = [line.split("|")[7].split()[0] for line in output.splitlines()
                  if line and "." not in line.split("|")[0]]
        if states and not set(states) & (running - {"REQUEUED"}) and newest and newest[-1] not in running:
            time.sleep(2)                        # every step's end is in too
            return run(sacct_command(job))
        time.sleep(1)
    raise SystemExit(f"job {job} did not end in {timeout_s} s: {run(sacct_command(job))}")


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "data" / "slurm"
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gridcredit-capture-", dir="/tmp"))
    workdir.chmod(0o1777)
    script = workdir / "usage_job.py"
    script.write_bytes(USAGE_JOB.read_bytes())
    script.chmod(0o755)
    captured: dict[str, dict] = {}
    (out_dir / "sinfo-idle.txt").write_text(run(sinfo_command()))

    jobs = {
        # 200 MiB touched, 1.5 s of CPU, then held 2 s more
        "cpu-burner": sbatch(workdir, "--account=proj2", "--mem=512M", "--cpus-per-task=1", "--time=5",
                             str(script), "200", "1.5", "2"),
        "sleep": sbatch(workdir, "--time=2", "--wrap", "sleep 3"),
        # two numbered steps besides the batch step
        "steps": sbatch(workdir, "--time=5", "--mem=256M", "--wrap",
                        f"srun {script} 50 0.5 0; srun {script} 120 0.3 1"),
        "failed": sbatch(workdir, "--partition=short", "--time=1", "--wrap", "exit 3"),
        "array": sbatch(workdir, "--array=0-2", "--time=2", "--wrap", "sleep 1"),
        "timeout": sbatch(workdir, "--time=1", "--wrap", "sleep 600"),
        "pending-cancelled": sbatch(workdir, "--hold", "--time=1", "--wrap", "true"),
        "array-pending-cancelled": sbatch(workdir, "--hold", "--array=1-2", "--time=1", "--wrap", "true"),
        "requeued": sbatch(workdir, "--requeue", "--time=2", "--wrap", "sleep 8"),
    }
    # while the burner runs: sinfo busy, and a run in progress
    deadline = time.monotonic() + 60
    while job_state(jobs["cpu-burner"]) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    (out_dir / "sinfo-busy.txt").write_text(run(sinfo_command()))
    (out_dir / "sacct-running.txt").write_text(run(sacct_command(str(jobs["cpu-burner"]))))
    (out_dir / "sacct-held.txt").write_text(run(sacct_command(str(jobs["pending-cancelled"]))))
    run(["scancel", str(jobs["pending-cancelled"])], user="gcuser1")
    run(["scancel", str(jobs["array-pending-cancelled"])], user="gcuser1")
    # the requeued job: requeue it while it runs, and let it run again at once
    deadline = time.monotonic() + 120
    while job_state(jobs["requeued"]) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    run(["scontrol", "requeue", str(jobs["requeued"])])
    time.sleep(2)
    run(["scontrol", "update", f"JobId={jobs['requeued']}", "StartTime=now"])
    for name, job_id in jobs.items():
        output = wait_ended(str(job_id))
        (out_dir / f"sacct-{name}.txt").write_text(output)
        show = run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        restarts = [field.split("=", 1)[1] for field in show.split() if field.startswith("Restarts=")]
        captured[name] = {"job_id": job_id, "scontrol_restarts": restarts}
    # one task of the array, by its own name
    task = f"{jobs['array']}_1"
    (out_dir / "sacct-array-task.txt").write_text(run(sacct_command(task)))
    captured["array-task"] = {"job": task}
    (out_dir / "captured.json").write_text(json.dumps(
        {"jobs": captured, "sacct": " ".join(sacct_command("<job>")), "sinfo": " ".join(sinfo_command()),
         "env": SLURM_ENV, "slurm": run(["sinfo", "--version"]).strip(),
         "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    print(f"written to {out_dir}")


if __name__ == "__main__":
    main()
