"""The HTTPS server under the host: cheroot, with TLS handshakes taken off its accept path.

cheroot performs the TLS handshake inside ``accept`` (its one selector thread): a client that
connects and never sends a ClientHello held up every other client for the socket timeout. Here:

    accept (cheroot's selector thread)  →  the per-address limit: excess closed at once
      →  the handshake thread: every pending handshake non-blocking, driven by one selector, each
         dropped ``handshake_timeout_s`` after its connection was accepted
      →  cheroot's connection manager: a worker thread takes the connection once a request is
         readable (a connection that completes its handshake and then says nothing holds no thread).

The client certificate reaches the WSGI environ as before (``SSL_CLIENT_CERT``,
``SSL_CLIENT_VERIFY``, … from cheroot's own adapter); with ``accept_untrusted_client_certificates``
one that did not verify is let through as ``SSL_CLIENT_VERIFY=FAILED:<reason>``. The listen backlog is set by us: cheroot
re-listens with 5 otherwise.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import ipaddress
import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass

from cheroot import connections, errors as cheroot_errors, server as cheroot_server, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger("gridcredit.host")

_PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                      b"Content-Length: 57\r\n\r\nThis port speaks HTTPS only: use https:// for this host.\n")
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def effective_backlog(wanted: int) -> int:
    """``wanted``, capped as the kernel caps it (net.core.somaxconn)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return max(1, min(wanted, int(limit.read())))
    except (OSError, ValueError):
        return wanted


def address_key(address: str) -> str:
    """What the per-address limit counts by: the IPv4 address, or the /64 network of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressLimit:
    """Counts open connections per client address (thread-safe); refuses beyond ``per_address_max``."""

    def __init__(self, per_address_max: int) -> None:
        self._max = per_address_max
        self._open: dict[str, int] = {}
        self._refusing: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, key: str) -> bool:
        with self._lock:
            count = self._open.get(key, 0)
            if count >= self._max:
                if key not in self._refusing:  # one line when an address reaches the limit, not one per connection
                    self._refusing.add(key)
                    log.warning("client address %s holds %d connections (server.connections_per_address_max); "
                                "closing its further connections until some end", key, count)
                return False
            self._open[key] = count + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)
            if count < self._max and key in self._refusing:
                self._refusing.discard(key)
                log.info("client address %s is below its connection limit again", key)

    def open_connections(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class _Request(cheroot_server.HTTPRequest):
    def respond(self):
        try:
            return super().respond()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as gone:
            # The client closed its TLS connection (the request's line already says so): cheroot
            # drops FatalSSLAlert quietly, but logs these as a socket error.
            raise cheroot_errors.FatalSSLAlert(*gone.args) from gone

    def send_headers(self):
        # An application that answers "Connection: close" (a client that stalled mid-body) gets
        # the connection closed; cheroot would otherwise first read the rest of the body.
        if any(key.lower() == b"connection" and value.lower() == b"close" for key, value in self.outheaders):
            self.close_connection = True
        return super().send_headers()


class _Connection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _Request
    address_key: str | None = None

    def close(self):
        key, self.address_key = self.address_key, None
        try:
            super().close()
        finally:
            if key is not None:
                self.server.address_limit.release(key)


@dataclass(eq=False)
class _Pending:
    sock: ssl.SSLSocket
    address: tuple
    key: str
    deadline: float
    done: bool = False
    verify_failure: str | None = None   # why its client certificate did not verify (accept_untrusted_client_certificates)


class _Handshaker(threading.Thread):
    """Runs the TLS handshakes of newly accepted connections, non-blocking, in one thread."""

    def __init__(self, server: "HttpsServer", context: ssl.SSLContext, timeout_s: float) -> None:
        super().__init__(name="tls-handshakes", daemon=True)
        self._server = server
        self._context = context
        self._timeout_s = timeout_s
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._incoming: collections.deque[_Pending] = collections.deque()
        self._by_arrival: collections.deque[_Pending] = collections.deque()  # deadlines in arrival order
        self._stopping = False

    def add(self, raw: socket.socket, address: tuple, key: str) -> None:
        """Take an accepted connection (called from the accept thread; never blocks)."""
        try:
            raw.setblocking(False)
            sock = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as error:
            log.debug("connection from %s dropped before its handshake: %s", _peer(address), error)
            raw.close()
            self._server.address_limit.release(key)
            return
        self._incoming.append(_Pending(sock, address, key, time.monotonic() + self._timeout_s))
        self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already waiting, or we are closing

    def run(self) -> None:
        try:
            while not self._stopping:
                timeout = 1.0
                if self._by_arrival:
                    timeout = max(0.0, min(timeout, self._by_arrival[0].deadline - time.monotonic()))
                for key, _ in self._selector.select(timeout):
                    if key.data is None:
                        self._drain_wake_ups()
                    else:
                        self._step(key.data)
                while self._incoming:
                    pending = self._incoming.popleft()
                    self._by_arrival.append(pending)
                    self._step(pending)  # the ClientHello may be here already
                self._expire(time.monotonic())
        except Exception:  # noqa: BLE001 — the one place that keeps this thread's failure visible
            log.exception("the TLS handshake thread failed; this worker accepts no more connections")
            os.kill(os.getpid(), signal.SIGTERM)  # let the worker restart instead of serving nothing
        finally:
            for pending in list(self._by_arrival) + list(self._incoming):
                if not pending.done:
                    self._drop(pending, None)
            self._selector.close()
            self._wake_reader.close()
            self._wake_writer.close()

    def _drain_wake_ups(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _step(self, pending: _Pending) -> None:
        if pending.done:
            return
        client_verify_failure_reset()
        try:
            try:
                pending.sock.do_handshake()
            finally:
                pending.verify_failure = pending.verify_failure or client_verify_failure()
        except ssl.SSLWantReadError:
            self._watch(pending, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(pending, selectors.EVENT_WRITE)
        except ssl.SSLError as error:
            if "http request" in str(error).lower():
                try:
                    os.write(pending.sock.fileno(), _PLAIN_HTTP_ANSWER)
                except OSError:
                    pass
                self._drop(pending, f"TLS handshake with {_peer(pending.address)} failed: it spoke plain HTTP", logging.INFO)
            elif isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                self._drop(pending, f"client {_peer(pending.address)} closed the connection during the TLS handshake")
            else:
                self._drop(pending, f"TLS handshake with {_peer(pending.address)} failed: {error.reason or error}", logging.INFO)
        except OSError as error:
            self._drop(pending, f"client {_peer(pending.address)} went away during the TLS handshake ({error.strerror or error})")
        else:
            self._handed_over(pending)

    def _watch(self, pending: _Pending, events: int) -> None:
        try:
            self._selector.modify(pending.sock, events, pending)
        except KeyError:
            self._selector.register(pending.sock, events, pending)

    def _unwatch(self, pending: _Pending) -> None:
        try:
            self._selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, pending: _Pending, message: str | None, level: int = logging.DEBUG) -> None:
        pending.done = True
        self._unwatch(pending)
        if message:
            log.log(level, "%s", message)
        try:
            pending.sock.close()
        finally:
            self._server.address_limit.release(pending.key)

    def _expire(self, now: float) -> None:
        while self._by_arrival and (self._by_arrival[0].done or self._by_arrival[0].deadline <= now):
            pending = self._by_arrival.popleft()
            if not pending.done:
                self._drop(pending, f"client {_peer(pending.address)} did not complete the TLS handshake "
                                    f"within {self._timeout_s:g} s (server.handshake_timeout_s)")

    def _handed_over(self, pending: _Pending) -> None:
        pending.done = True
        self._unwatch(pending)
        sock = pending.sock
        try:
            sock.settimeout(self._server.timeout)
            ssl_env = self._server.ssl_adapter.get_environ(sock)
            if pending.verify_failure is not None and "SSL_CLIENT_CERT" in ssl_env:
                ssl_env["SSL_CLIENT_VERIFY"] = f"FAILED:{pending.verify_failure}"   # cheroot says SUCCESS for any
        except (OSError, ValueError) as error:
            self._drop(pending, f"client {_peer(pending.address)} went away after the TLS handshake ({error})")
            return
        connection = _Connection(self._server, sock, self._server.ssl_adapter.makefile)
        connection.remote_addr, connection.remote_port = pending.address[0], pending.address[1]
        connection.ssl_env = ssl_env
        connection.address_key = pending.key
        if not self._server.ready:
            connection.close()
            return
        if sock.pending():  # request bytes already decrypted: the selector would not see them
            self._server.process_conn(connection)
        else:
            self._server.put_conn(connection)  # a worker thread takes it when a request is readable


# -- client certificates from CAs the host does not trust: asked for, not refused at TLS ---------------
#
# Python's ssl has no verify callback: a context that asks for an optional client certificate
# (CERT_OPTIONAL) ends the handshake when the one presented does not chain to its trust store, so a
# browser holding a certificate from another CA got a TLS error instead of the public web pages.
# OpenSSL keeps a verify callback set on the SSL_CTX (and CPython's verify_mode setter keeps it
# too): one that records the verdict and answers 1 lets the handshake go on (the client still
# proves it holds the key: CertificateVerify), as mod_ssl's ``SSLVerifyClient optional_no_ca``.
# The verdict reaches the environ as SSL_CLIENT_VERIFY=FAILED:<reason>; every use of the
# certificate validates it again in the application (server/host.py: _tls_principal).

_verdicts = threading.local()          # handshakes run in one thread: the failure of the one now in progress
_VERIFY_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_openssl: "tuple[ctypes.CDLL, ctypes.CDLL] | None" = None


def _loaded_openssl() -> "tuple[ctypes.CDLL, ctypes.CDLL]":
    """libssl and libcrypto as loaded by Python's _ssl (the same copies: found in this process's maps)."""
    global _openssl
    if _openssl is None:
        import _ssl  # noqa: F401 — makes sure the libraries are mapped

        paths: dict[str, str] = {}
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                for library in ("libssl.so", "libcrypto.so"):
                    if name.startswith(library):
                        paths.setdefault(library, path)
        if len(paths) != 2:
            raise OSError(f"Python's ssl module does not use a shared libssl and libcrypto (found {sorted(paths)})")
        libssl, libcrypto = ctypes.CDLL(paths["libssl.so"]), ctypes.CDLL(paths["libcrypto.so"])
        libssl.SSL_CTX_set_verify.argtypes = (ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK_TYPE)
        libssl.SSL_CTX_set_verify.restype = None
        libssl.SSL_CTX_get_verify_mode.argtypes = (ctypes.c_void_p,)
        libssl.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        libssl.SSL_CTX_get_options.argtypes = (ctypes.c_void_p,)
        libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
        libcrypto.X509_STORE_CTX_get_error.argtypes = (ctypes.c_void_p,)
        libcrypto.X509_STORE_CTX_get_error.restype = ctypes.c_int
        libcrypto.X509_STORE_CTX_get_error_depth.argtypes = (ctypes.c_void_p,)
        libcrypto.X509_STORE_CTX_get_error_depth.restype = ctypes.c_int
        libcrypto.X509_verify_cert_error_string.argtypes = (ctypes.c_long,)
        libcrypto.X509_verify_cert_error_string.restype = ctypes.c_char_p
        _openssl = libssl, libcrypto
    return _openssl


@_VERIFY_CALLBACK_TYPE
def _record_and_continue(preverify_ok: int, store_context: int) -> int:
    try:
        if not preverify_ok and getattr(_verdicts, "failure", None) is None:
            _, libcrypto = _loaded_openssl()
            error = libcrypto.X509_STORE_CTX_get_error(store_context)
            reason = (libcrypto.X509_verify_cert_error_string(error) or b"?").decode("ascii", "replace")
            _verdicts.failure = f"{reason} (certificate {libcrypto.X509_STORE_CTX_get_error_depth(store_context)} of the chain)"
    except Exception:  # noqa: BLE001 — an exception cannot cross into OpenSSL; the application validates anyway
        _verdicts.failure = "not verified"
    return 1


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    """The SSL_CTX* of ``context``: CPython's PySSLContext holds it right after the object header."""
    if sys.implementation.name != "cpython" or not isinstance(context, ssl.SSLContext):
        raise OSError(f"not CPython's ssl ({sys.implementation.name})")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        raise OSError("a free-threaded Python build (its object header differs)")
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value or 0


def accept_untrusted_client_certificates(context: ssl.SSLContext) -> str | None:
    """Let ``context`` (CERT_OPTIONAL) complete handshakes with client certificates that do not verify,
    recording why (``client_verify_failure``). None when done, else why it could not be (the context is
    then unchanged: such a client's handshake fails, as before)."""
    if context.verify_mode != ssl.CERT_OPTIONAL:
        return f"only for optional client certificates (verify_mode is {context.verify_mode.name})"
    try:
        libssl, _ = _loaded_openssl()
        pointer = _ssl_ctx_pointer(context)
        # the pointer is the context's own: its options and verify mode read through it match
        if not pointer or libssl.SSL_CTX_get_options(pointer) != int(context.options) \
                or libssl.SSL_CTX_get_verify_mode(pointer) != 1:  # SSL_VERIFY_PEER
            return "the ssl module's SSL_CTX could not be found"
        libssl.SSL_CTX_set_verify(pointer, 1, _record_and_continue)
    except (OSError, AttributeError, ValueError) as error:
        return str(error)
    return None


def client_verify_failure_reset() -> None:
    _verdicts.failure = None


def client_verify_failure() -> str | None:
    """Why the client certificate of the handshake just driven in this thread did not verify (None: it did, or none)."""
    return getattr(_verdicts, "failure", None)


def peer_text(host: str, port) -> str:
    """``host:port`` of a client as logs show it (``[v6]:port`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(address: tuple) -> str:
    return peer_text(address[0], address[1])


class _ConnectionManager(connections.ConnectionManager):
    """cheroot's connection manager, whose accept only accepts: no handshake, no blocking."""

    def _from_server_socket(self, server_socket):
        server: HttpsServer = self.server
        try:
            raw, address = server_socket.accept()
        except (socket.timeout, BlockingIOError, InterruptedError):
            return None
        except OSError as error:
            if error.errno in _OUT_OF_FILES:
                server.out_of_files(error)
                return None
            if error.errno in (errno.ECONNABORTED, errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                return None  # the peer gave up while queued, or our socket is closing
            raise
        connections.prevent_socket_inheritance(raw)
        if server.stats["Enabled"]:
            server.stats["Accepts"] += 1
        key = address_key(address[0])
        if not server.address_limit.admit(key):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # reset: gone at once
            raw.close()
            return None
        server.handshaker.add(raw, address, key)
        return None


class HttpsServer(wsgi.Server):
    """cheroot's WSGI server with the handshake off the accept path, our backlog, and the per-address limit.

    ``listener``: an already bound listening socket (inherited from ``serve``); else one is bound.
    """

    ConnectionClass = _Connection

    def __init__(self, bind_addr, wsgi_app, *, context: ssl.SSLContext, cert_file: str, key_file: str,
                 handshake_timeout_s: float, listen_backlog: int, connections_per_address_max: int,
                 listener: socket.socket | None = None, **options) -> None:
        super().__init__(bind_addr, wsgi_app, request_queue_size=effective_backlog(listen_backlog), **options)
        self._listener = listener
        adapter = BuiltinSSLAdapter(cert_file, key_file)
        adapter.context = context
        self.ssl_adapter = adapter
        self.address_limit = AddressLimit(connections_per_address_max)
        self.handshaker = _Handshaker(self, context, handshake_timeout_s)
        self._out_of_files_logged = 0.0

    def bind(self, family, type, proto=0):
        if self._listener is None:
            return super().bind(family, type, proto)
        self.socket = self._listener
        self.bind_addr = self._listener.getsockname()[:2]
        return self._listener

    def prepare(self):
        super().prepare()  # binds (or takes the listener) and listens with our backlog
        # cheroot gives the listener a 1 s timeout. Every worker of `serve` selects on the one listener
        # they share, so a new connection wakes them all; those that lose the race would wait in accept()
        # for up to that second while their kept-alive connections' requests sat unread. Non-blocking,
        # a lost race is "nothing to accept" (BlockingIOError, which the connection manager expects).
        self.socket.settimeout(0)
        self._connections.close()
        self._connections = _ConnectionManager(self)
        self.handshaker.start()

    def stop(self):
        self.handshaker.stop()
        super().stop()

    def out_of_files(self, error: OSError) -> None:
        """accept failed for want of file descriptors: say so (at most once a minute) and let the queue wait."""
        now = time.monotonic()
        if now - self._out_of_files_logged > 60:
            self._out_of_files_logged = now
            log.warning("cannot accept connections: %s (open files: raise the limit, or lower "
                        "server.connections_per_address_max)", error.strerror or error)
        time.sleep(0.1)

    def error_log(self, msg="", level=logging.INFO, traceback=False):
        # cheroot writes its own messages to stderr; ours go through logging, tracebacks only for errors.
        log.log(level, "server: %s", msg, exc_info=traceback and level >= logging.ERROR)
