"""Start and stop a BaseX server of our own (development and tests).

BaseX 9.7 reads its options from ``<home>/.basex`` and from ``-Dorg.basex.<OPTION>`` system
properties; we run ``java -cp /usr/share/java/basex.jar org.basex.BaseXServer -p PORT -n HOST``
(Debian's ``basexserver`` wrapper does the same; 9.7 has no event port, ``-e`` is refused) with
``org.basex.path`` = our folder, so the server has its own ``.basex``, data and users. Debian's
9.x starts with user admin/admin; ``password`` other than admin is set through the client.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gridcredit.errors import StoreError

from ._basex_wire import ServerError, Session, WireError

BASEX_JAR = Path("/usr/share/java/basex.jar")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class BaseXServer:
    def __init__(self, home: Path, *, port: int = 1984, host: str = "127.0.0.1",
                 user: str = "admin", password: str = "admin", start_timeout_s: float = 30.0,
                 heap_mb: int = 512) -> None:
        self.home = Path(home)
        self.heap_mb = heap_mb          # BaseX's Java heap: large databases and update batches need more
        self.port = port
        self.host = host
        self.user = user
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def start(self) -> "BaseXServer":
        java = shutil.which("java")
        if java is None or not BASEX_JAR.exists():
            raise StoreError("BaseX is not installed: run scripts/basex.sh install (apt-get install -y basex)")
        self.home.mkdir(parents=True, exist_ok=True)
        command = [java, f"-Xmx{self.heap_mb}m", f"-Dorg.basex.path={self.home}", f"-Dorg.basex.DBPATH={self.data_dir}",
                   f"-Dorg.basex.SERVERHOST={self.host}", "-cp", str(BASEX_JAR), "org.basex.BaseXServer",
                   f"-p{self.port}", f"-n{self.host}"]
        log = open(self.home / "server.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        self.wait_ready()
        if self.password != "admin":
            self._set_password()
        return self

    def _session(self, password: str) -> Session:
        return Session(self.host, self.port, self.user, password, timeout_s=5.0)

    def _set_password(self) -> None:
        try:
            session = self._session(self.password)
        except WireError:
            session = self._session("admin")
            session.command(f"ALTER PASSWORD {self.user} {self.password}")
        session.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StoreError(f"BaseX server exited with {self.process.returncode}; see {self.home}/server.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise StoreError(f"BaseX server did not answer on {self.host}:{self.port} within {self.start_timeout_s} s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop cleanly (SIGTERM: the JVM's shutdown hook closes the databases), else kill."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9, for crash tests."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> "BaseXServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Run a BaseX server of our own in the foreground")
    parser.add_argument("home", type=Path)
    parser.add_argument("--port", type=int, default=1984)
    arguments = parser.parse_args(argv)
    server = BaseXServer(arguments.home, port=arguments.port).start()
    print(f"BaseX listening on 127.0.0.1:{arguments.port}, data in {server.data_dir}", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
