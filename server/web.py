"""The web view: GET /web/… on the host's HTTPS port, for browsers (issue 15, points 4-5).

A person is the verified holder of the TLS client certificate their browser presents (the host
asks for optional client certificates); each page comes from the service that owns it
(``ServiceContract.web_pages``) and asks that service's core — so its policy point — with that
principal. Without a certificate only the public pages are shown (the Bank's transparency page),
and every other page says how to present one.

Only GET and HEAD: no page changes anything (a form here is a GET that reads). Every answer carries a
strict Content-Security-Policy (no script at all, styles only from /web/style.css), is not cached,
and is HTML escaped by construction (gridcredit/web.py). One log line per page served.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl

from gridcredit import metrics
from gridcredit.errors import DomainError, GridcreditError, QueryError
from gridcredit.text import hidden_character
from gridcredit.web import PARAM_LENGTH_MAX, Markup, WebError, WebPage, WebRequest, join, link, tag

log = logging.getLogger("gridcredit.web")

PREFIX = "/web"
QUERY_BYTES_MAX = 4_096
PARAMS_MAX = 16
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"), ("X-Frame-Options", "DENY")]

# Domain error codes → the HTTP status of the page that says them
_STATUS_BY_CODE = {"NotAuthorized": "403 Forbidden", "InvalidArgument": "400 Bad Request",
                   "QueryError": "400 Bad Request", "InvalidQuery": "400 Bad Request"}

STYLE = """
body { font-family: "DejaVu Sans", sans-serif; margin: 0; color: #1b1f24; background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: 0.6em 1.2em; }
header a { color: #fff; margin-right: 1.2em; }
header .who { font-size: 0.85em; opacity: 0.9; margin-top: 0.3em; }
main { padding: 0.5em 1.2em 2em; max-width: 70em; }
section { background: #fff; border: 1px solid #d9dde3; border-radius: 4px; padding: 0.4em 1em 1em; margin: 1em 0; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
figure.chart { margin: 0.8em 0; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
svg .bar { fill: #457b9d; } svg .bar:hover { fill: #e63946; }
svg .axis { stroke: #555; stroke-width: 1; }
svg text { font-size: 11px; fill: #333; }
.empty { color: #666; font-style: italic; }
.error { border-color: #e63946; } .ok { color: #2a7d2e; font-weight: bold; } .bad { color: #b00020; font-weight: bold; }
pre { background: #f0f2f5; padding: 0.6em; overflow-x: auto; }
form.query label { margin-right: 1em; }
"""


def _pages_counter():
    return metrics.counter("gridcredit_web_pages_total", "Web view pages answered, by page and HTTP status",
                           ("page", "status"))


@dataclass(frozen=True, slots=True)
class _Route:
    service: str
    page: WebPage

    @property
    def href(self) -> str:
        return f"{PREFIX}/{self.service}/{self.page.path}"


class WebView:
    """The pages of the services that run in this worker: ``pages`` maps a service's name to its
    WebPages, ``parts`` to what its contract built (handed to the page as ``request.part``)."""

    def __init__(self, pages: Mapping[str, list[WebPage]], parts: Mapping[str, Any], config) -> None:
        self._routes: dict[str, _Route] = {}
        for service, listed in pages.items():
            for page in listed:
                route = _Route(service, page)
                if route.href in self._routes:
                    raise RuntimeError(f"two web pages at {route.href}")
                self._routes[route.href] = route
        self._parts = dict(parts)
        self._config = config

    @staticmethod
    def serves(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def __call__(self, environ, start_response, identity_of: Callable[[], tuple[Any, str | None]]):
        """``identity_of()``: (the principal of the request's TLS client certificate or None, why a
        certificate presented was not taken or None)."""
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        principal = refused = None
        if path == PREFIX:
            path = PREFIX + "/"
        route = self._routes.get(path)
        # what /metrics names: a known page, the index, the style sheet, or "-" (any other path)
        counted = route.href if route is not None else {PREFIX + "/": "index", PREFIX + "/style.css": "style"}.get(path, "-")
        content_type = "text/html; charset=utf-8"
        if method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", self._layout("Only reading here", tag(
                "p", f"{method} is not served: the web view only shows (GET); changes go through the signed SOAP "
                     "operations"), None)
        elif path == PREFIX + "/style.css":
            status, body, content_type = "200 OK", STYLE.encode("utf-8"), "text/css; charset=utf-8"
        else:
            principal, refused = identity_of()
            status, body = self._page(path, route, environ, principal, refused)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *_HEADERS]
        if status.startswith("405"):
            headers.append(("Allow", "GET, HEAD"))
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("%s %s principal=%r outcome=%s %.1fms", path, method,
                 getattr(principal, "dn", "-" if refused is None else "- (certificate not trusted)"), status, elapsed_ms)
        _pages_counter().labels(counted, status.split(" ", 1)[0]).inc()
        start_response(status, headers)
        return [b"" if method == "HEAD" else body]

    # -- pages -------------------------------------------------------------------------------------
    def _page(self, path: str, route: _Route | None, environ, principal, refused: str | None) -> tuple[str, bytes]:
        if path == PREFIX + "/":
            return "200 OK", self._index(principal, refused)
        if route is None:
            return "404 Not Found", self._layout("No such page", tag(
                "p", "There is no page at ", tag("code", path), ". ", link(PREFIX + "/", "The pages are listed here.")),
                principal, refused)
        if principal is None and not route.page.public:
            return "403 Forbidden", self._certificate_page(route.page.title, refused)
        try:
            params = _params(environ.get("QUERY_STRING", ""))
            request = WebRequest(path=path, params=params, principal=principal, part=self._parts.get(route.service),
                                 config=self._config, base=PREFIX)
            content = route.page.render(request)
            return "200 OK", self._layout(route.page.title, content, principal, refused)
        except WebError as error:
            return error.status, self._problem(route.page.title, str(error), principal)
        except DomainError as error:
            status = _STATUS_BY_CODE.get(error.code) or ("404 Not Found" if error.code.startswith("Unknown")
                                                        else "409 Conflict")
            return status, self._problem(route.page.title, f"{error.code}: {error}", principal)
        except QueryError as error:           # the person's own filter
            return "400 Bad Request", self._problem(route.page.title, f"QueryError: {error}", principal)
        except GridcreditError as error:      # e.g. a store that does not answer now
            log.warning("web page %s could not be shown: %s: %s", path, type(error).__name__, error)
            return "503 Service Unavailable", self._problem(
                route.page.title, f"{type(error).__name__}: {error} — try again in a moment", principal)
        except Exception:  # noqa: BLE001 — our own failure: the log has it, the person a plain sentence
            log.exception("internal error serving the web page %s", path)
            return "500 Internal Server Error", self._problem(
                route.page.title, "the page failed; the server log has the details", principal)

    def _nav(self, principal) -> Markup:
        items = [link(PREFIX + "/", "Overview")]
        for route in self._routes.values():
            if route.page.listed and (principal is not None or route.page.public):
                items.append(link(route.href, route.page.title))
        return tag("nav", *items, aria_label="pages")

    def _layout(self, title: str, content: Markup, principal, refused: str | None = None) -> bytes:
        if principal is not None:
            who = join("Signed in by certificate: ", tag("span", principal.dn, class_="dn"))
        elif refused is not None:   # presented, but not from a CA this host trusts (or revoked, expired…)
            who = join(tag("strong", "Your certificate is not from a CA this host trusts"),
                       ": you are anonymous here and see the public pages only — ", tag("span", refused, class_="dn"))
        else:
            who = "No certificate presented: public pages only"
        document = join(Markup("<!DOCTYPE html>\n"), tag(
            "html",
            tag("head", tag("meta", charset="utf-8"), tag("title", f"{title} — gridcredit"),
                tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
                tag("link", rel="stylesheet", href=PREFIX + "/style.css")),
            tag("body", tag("header", tag("div", self._nav(principal)), tag("div", who, class_="who")),
                tag("main", tag("h1", title), content)),
            lang="en"))
        return document.encode("utf-8")

    def _problem(self, title: str, message: str, principal) -> bytes:
        return self._layout(title, tag("section", tag("h2", "This page cannot be shown"), tag("p", message),
                                       class_="error"), principal)

    def _index(self, principal, refused: str | None = None) -> bytes:
        listed = [route for route in self._routes.values() if route.page.listed
                  and (principal is not None or route.page.public)]
        items = [tag("li", link(route.href, route.page.title), " — " if route.page.summary else "", route.page.summary)
                 for route in listed]
        content = [tag("ul", *items) if items else tag("p", "This host serves no pages.", class_="empty")]
        if principal is None:
            content.append(_how_to_present(refused))
        return self._layout("gridcredit", join(*content), principal, refused)

    def _certificate_page(self, title: str, refused: str | None = None) -> bytes:
        return self._layout("A certificate is needed", join(
            tag("p", f"The page “{title}” shows what the services would show you, so it needs to know who you are: "
                     "present your grid certificate to this site."), _how_to_present(refused)), None, refused)


def _how_to_present(refused: str | None = None) -> Markup:
    untrusted = None if refused is None else tag(
        "p", "The certificate your browser presented was not taken: ", tag("code", refused), ". Only certificates "
        "issued by a CA in this host's trust directory identify a person here (ask the host's operator which CAs "
        "those are, or choose another certificate when the browser asks).", id="untrusted")
    return tag("section", tag("h2", "How to present your certificate"), untrusted, tag(
        "ol",
        tag("li", "Put your certificate and key into one PKCS#12 file: ",
            tag("pre", "openssl pkcs12 -export -in ~/.globus/usercert.pem -inkey ~/.globus/userkey.pem "
                       "-out gridcredit.p12")),
        tag("li", "Import gridcredit.p12 into your browser (Settings → Privacy and security → Security → Manage "
                  "certificates → Import; Firefox: Settings → Certificates → View Certificates → Your "
                  "Certificates → Import)."),
        tag("li", "Reload this page and choose that certificate when the browser asks. Its DN is who you are "
                  "here: you see the accounts you hold, your usage, your bids and reservations.")),
        tag("p", "Without a certificate, the ", link(PREFIX + "/bank/transparency", "money supply and audit page"),
            " is open to everyone."), id="certificate")


def _params(query: str) -> dict[str, str]:
    """The query parameters, one value each: bounded in size and count; no hidden characters."""
    if len(query) > QUERY_BYTES_MAX:
        raise WebError("414 URI Too Long", f"the query is {len(query):,} characters; at most {QUERY_BYTES_MAX:,}")
    try:
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=False, max_num_fields=PARAMS_MAX,
                          errors="strict")
    except (ValueError, UnicodeDecodeError) as error:
        raise WebError("400 Bad Request", f"the query cannot be read: {error}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise WebError("400 Bad Request", f"the parameter {name!r} is given twice")
        if len(value) > PARAM_LENGTH_MAX:
            raise WebError("400 Bad Request", f"the parameter {name!r} is longer than {PARAM_LENGTH_MAX:,} characters")
        hidden = hidden_character(name + value)
        if hidden is not None:
            raise WebError("400 Bad Request", f"the parameter {name!r} holds an invisible character ({hidden})")
        params[name] = value
    return params
