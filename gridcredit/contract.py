"""What a service declares, once, for the host, the runtime and the command line.

Each ``services/<name>/__init__.py`` exports one ``ServiceContract`` as ``SERVICE``; the server
side (``gridcredit.server``) lists them in its registry and takes everything from there: the SOAP
application at ``/<name>``, the ``[<name>]`` configuration section, the store's indexes, what each
worker builds, the background tasks, plain HTTPS routes and the ``gridcredit <name> …`` commands.
This module is the base layer: it names the shapes and imports no service.

Adding a service is a folder with such an object plus one line in ``server/registry.py``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # for the reader: the shapes these callables take
    from .config import Config
    from .xmlstore import XmlStore


@dataclass(frozen=True, slots=True)
class HostFiles:
    """The host's certificate, key and trust directory (what a worker signs and verifies with)."""
    host_cert: Path
    host_key: Path
    trust_dir: Path


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a service's ``build`` gets in each worker process (after the fork: a store session
    must not cross one)."""
    config: "Config"
    store: "XmlStore"
    files: "HostFiles | None" = None     # the host's credential and trust directory (None: a bare runtime)


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a background task gets: its service's part (what ``build`` made), the configuration,
    the host's files (a task may sign as the host, e.g. forwarding), and the event that stops it."""
    part: Any
    config: "Config"
    files: HostFiles | None
    stop: threading.Event


@dataclass(frozen=True, slots=True)
class BackgroundTask:
    """Work a service does beside answering requests.

    ``run(context)`` loops until ``context.stop`` is set. ``once_per_host``: one worker of the
    host runs it at a time (the runtime holds a lock in the state directory for it; when that
    worker dies another takes over) — else every worker runs its own copy (the work must then be
    safe to do twice, like the Bank's expiry sweep, which ends each hold once anyway).
    ``enabled(config)``: whether the configuration asks for it at all.
    """
    name: str
    run: Callable[[TaskContext], None]
    once_per_host: bool
    enabled: Callable[["Config"], bool] = lambda config: True


@dataclass(frozen=True, slots=True)
class Registration:
    """A plain HTTPS POST route for reporters that do not speak SOAP (SGAS): authenticated by the TLS
    client certificate; ``handler(body, principal)`` answers (``status``, ``body``, ``content_type``).
    ``bytes_max`` is the largest body it takes, named in refusals as ``bytes_max_setting``."""
    handler: Callable
    bytes_max: int
    bytes_max_setting: str = "server.request_bytes_max"


@dataclass(frozen=True, slots=True)
class ServiceContract:
    """One service, as the server side sees it.

    ``name``: the URL path ``/<name>``, the WSDL ``wsdl/<name>.wsdl``, the section ``[<name>]``
    and the command group ``gridcredit <name>``.
    ``soap_module``: the module that defines ``SERVICES``, ``NAMESPACE`` and ``SERVICE_NAME``
    (imported when the host builds the SOAP application, not before).
    ``config_section``: a frozen dataclass of the section's settings with defaults; an optional
    ``check()`` method raises ``ConfigError`` for values out of range.
    ``collections``: the store collections the service owns — names, or prefixes ending in ``_``
    (``ur_``: ``ur_2026_11``…); no two services may claim the same (the registry checks).
    ``indexes``: the store's indexes the service's queries need (``xmlstore`` index objects), or a
    function that returns them (so that declaring them need not import the service's modules).
    ``prepare(config)``: once per host before the workers start (keys, directories).
    ``build(context)``: what one worker holds for the service (its core over the store); the
    operations reach it as ``runtime_of(ctx).<name>``.
    ``routes(part, config)``: plain HTTPS routes (path → ``Registration``).
    ``cli_module``: the module whose ``register(subparsers)`` adds the service's commands.
    ``gauges(part, config)``: values read when ``/metrics`` is scraped (``gridcredit.metrics.Gauge``:
    a queue's depth, a backlog), from the worker that answers the scrape.
    ``web_pages(part, config)``: the service's pages of the web view (``gridcredit.web.WebPage``),
    served at ``/web/<name>/<page>``; each renders by asking the service's core with the person's
    principal, so its policy decides what is shown.
    """
    name: str
    soap_module: str
    config_section: type | None = None
    collections: tuple[str, ...] = ()
    indexes: tuple | Callable[[], tuple] = ()
    prepare: Callable[["Config"], None] | None = None
    build: Callable[[BuildContext], Any] | None = None
    background_tasks: tuple[BackgroundTask, ...] = ()
    routes: Callable[[Any, "Config"], Mapping[str, Registration]] | None = None
    cli_module: str | None = None
    gauges: Callable[[Any, "Config"], Any] | None = None
    web_pages: Callable[[Any, "Config"], Any] | None = None
    summary: str = field(default="")   # one line for --help and the documentation

    def store_indexes(self) -> tuple:
        return tuple(self.indexes() if callable(self.indexes) else self.indexes)

    def owns(self, collection: str) -> bool:
        """Whether ``collection`` (a name, or a prefix ending in ``_``) is one of this service's."""
        return any(collection == own or (own.endswith("_") and collection.startswith(own))
                   for own in self.collections)


def collections_overlap(first: str, second: str) -> bool:
    """Whether two declared collections (names, or prefixes ending in ``_``) can name one collection."""
    return (first == second or (first.endswith("_") and second.startswith(first))
            or (second.endswith("_") and first.startswith(second)))
