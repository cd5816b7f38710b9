"""A minimal BaseX server-protocol client with socket timeouts.

Why not ``BaseXClient`` 8.4.4: it has no socket timeout, and when the server goes away (a kill -9)
its read loop treats the socket's end-of-file as "no data yet" and spins forever at 100 % CPU.
This client raises ``WireError`` on end-of-file, on timeouts and on short writes; a session that
raised ``WireError`` is broken and must be discarded. Protocol: docs.basex.org "Server Protocol".
"""
from __future__ import annotations

import hashlib
import select
import socket


class WireError(Exception):
    """The connection is broken (closed, timed out, refused): discard the session."""


class ServerError(Exception):
    """The server answered with an error (the session stays usable)."""


class Session:
    def __init__(self, host: str, port: int, user: str, password: str, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        try:
            self._socket = socket.create_connection((host, port), timeout=timeout_s)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            raise WireError(f"cannot connect to BaseX at {host}:{port}: {error}") from None
        self._buffer = bytearray()
        self._broken = False
        greeting = self._read_string().split(":")
        if len(greeting) > 1:
            code, nonce = f"{user}:{greeting[0]}:{password}", greeting[1]
        else:
            code, nonce = password, greeting[0]
        digest = hashlib.md5(hashlib.md5(code.encode()).hexdigest().encode() + nonce.encode()).hexdigest()
        self._send(user.encode() + b"\0" + digest.encode() + b"\0")
        if self._read_byte() != 0:
            self.close()
            raise WireError("BaseX refused our user name or password")

    @property
    def broken(self) -> bool:
        return self._broken

    def settimeout(self, timeout_s: float) -> None:
        self._socket.settimeout(timeout_s)

    def peer_closed(self) -> bool:
        """Whether the server has closed this idle session (e.g. ``KILL``, a restart), seen
        without a round trip: an idle session has nothing to read, so end-of-file or an error
        means it is gone (it is then marked broken)."""
        if self._broken:
            return True
        if self._buffer:
            return False
        try:
            poller = select.poll()       # (a socket with a timeout waits in recv even with MSG_DONTWAIT)
            poller.register(self._socket, select.POLLIN)
            if not poller.poll(0):
                return False
            data = self._socket.recv(1, socket.MSG_PEEK)   # readable: answers at once
        except OSError:
            data = b""
        if not data:
            self._broken = True
            return True
        return False

    def _send(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError as error:
            self._broken = True
            raise WireError(f"BaseX connection lost while sending: {error}") from None

    def _fill(self) -> None:
        try:
            chunk = self._socket.recv(65536)
        except OSError as error:   # includes socket.timeout
            self._broken = True
            raise WireError(f"BaseX connection lost or timed out: {error}") from None
        if not chunk:
            self._broken = True
            raise WireError("BaseX closed the connection")
        self._buffer += chunk

    def _read_byte(self) -> int:
        while not self._buffer:
            self._fill()
        value = self._buffer[0]
        del self._buffer[:1]
        return value

    def _read_string(self) -> str:
        start = 0
        while True:
            end = self._buffer.find(b"\0", start)
            if end >= 0:
                break
            start = len(self._buffer)
            self._fill()
        raw = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        # the server escapes 0x00 and 0xFF with 0xFF; UTF-8 text never holds either byte
        if b"\xff" in raw:
            raw = _unescape(raw)
        return raw.decode("utf-8")

    @staticmethod
    def _encode(text: str) -> bytes:
        data = text.encode("utf-8")
        if b"\0" in data:
            raise ServerError("NUL characters cannot be sent to BaseX")
        return data

    def _status(self) -> None:
        if self._read_byte() != 0:
            raise ServerError(self._read_string())

    def command(self, command: str) -> str:
        """Run a database command (CREATE DB, SET …); returns its result."""
        self._send(self._encode(command) + b"\0")
        result = self._read_string()
        info = self._read_string()
        if self._read_byte() != 0:
            raise ServerError(info)
        return result

    def query(self, text: str, bindings: dict[str, tuple[str, str]] | None = None) -> str:
        """Run an XQuery with external variables bound (name -> (value, type)); returns the result."""
        return self._query(text, bindings, with_info=False)[0]

    def query_info(self, text: str, bindings: dict[str, tuple[str, str]] | None = None) -> tuple[str, str]:
        """Run a query like ``query`` and return (result, BaseX's query info): the compiled,
        optimized query and its timings when the session has ``SET QUERYINFO true``."""
        return self._query(text, bindings, with_info=True)

    def _query(self, text: str, bindings: dict[str, tuple[str, str]] | None, *, with_info: bool) -> tuple[str, str]:
        """One query in at most three exchanges with the server (each a wait for BaseX's answer:
        on a busy machine, a wake-up of BaseX's thread and of ours): QUERY (its id is in the
        answer); every BIND at once; EXECUTE [, INFO] and CLOSE at once. Until 2026-12-02 each
        message waited for its answer (3 + one per binding: a LUTS job lookup made 8). EXECUTE is
        sent only once every BIND succeeded (a query never runs with a binding refused), and CLOSE
        always follows the query (a refused BIND or EXECUTE too: BaseX keeps an unclosed query)."""
        self._send(b"\0" + self._encode(text) + b"\0")
        query_id = self._read_string()
        self._status()
        ident = query_id.encode() + b"\0"
        close = b"\x02" + ident
        try:
            binds = [b"\x03" + ident + self._encode(name) + b"\0" + self._encode(value) + b"\0" + kind.encode() + b"\0"
                     for name, (value, kind) in (bindings or {}).items()]
        except ServerError:
            self._send(close)
            self._answers(1)
            raise
        if binds:
            self._send(b"".join(binds))
            refused = self._answers(len(binds))
            if refused is not None:
                self._send(close)
                self._answers(1)
                raise ServerError(refused)
        self._send(b"\x05" + ident + (b"\x06" + ident if with_info else b"") + close)
        result = self._read_string()
        refused = None if self._read_byte() == 0 else self._read_string()
        info = ""
        if with_info:
            info = self._read_string()
            if self._read_byte() != 0:
                info = self._read_string()     # (after a refused EXECUTE: no info to give)
        self._answers(1)                       # CLOSE's
        if refused is not None:
            raise ServerError(refused)
        return result, info

    def _answers(self, count: int) -> str | None:
        """Read ``count`` answers of the form string, status (BIND, CLOSE): the first refusal's
        message, or None."""
        refused = None
        for _ in range(count):
            self._read_string()
            if self._read_byte() != 0:
                message = self._read_string()
                refused = message if refused is None else refused
        return refused

    def close(self) -> None:
        try:
            if not self._broken:
                self._socket.settimeout(1.0)
                self._socket.sendall(b"exit\0")
        except OSError:
            pass
        finally:
            self._broken = True
            self._socket.close()


def _unescape(raw: bytes) -> bytes:
    out, index = bytearray(), 0
    while index < len(raw):
        if raw[index] == 0xFF and index + 1 < len(raw):
            index += 1
        out.append(raw[index])
        index += 1
    return bytes(out)
