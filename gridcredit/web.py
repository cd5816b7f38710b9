"""The web view's shapes and HTML/SVG helpers, for the pages each service contributes (issue 15).

The host serves the pages at ``/web/`` on its HTTPS port (``gridcredit/server/web.py``); each service
declares its own in its folder through ``ServiceContract.web_pages(part, config) -> [WebPage]`` and
renders them with the helpers here. A page only reads: it calls the service's core with the person's
principal (the verified TLS client certificate), so the service's own policy point decides what it
shows, exactly as for the SOAP operation of the same name.

Escaping is the default: every ``str`` given to :func:`tag` (text or attribute) is escaped; only
:class:`Markup` made by these helpers passes through as it is. Charts are SVG drawn here, with
presentation attributes and classes only (the host's Content-Security-Policy allows no inline style
or script).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlencode

from .errors import GridcreditError

PARAM_LENGTH_MAX = 2_000          # characters of one query parameter (an XPath filter is the longest)
CHART_BARS_MAX = 240              # bars one chart draws at most (the rest are said to be left out)


class Markup(str):
    """HTML that is already safe (made by these helpers): :func:`tag` does not escape it again."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """``value`` as HTML text (Markup stays as it is)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(*parts: object) -> Markup:
    """Escaped ``parts`` one after the other (None and False left out; lists flattened)."""
    out: list[str] = []
    for part in parts:
        if part is None or part is False:
            continue
        if isinstance(part, (list, tuple)):
            out.append(join(*part))
        else:
            out.append(esc(part))
    return Markup("".join(out))


_VOID = frozenset({"br", "hr", "input", "img", "meta", "link"})


def tag(name: str, /, *children: object, **attributes: object) -> Markup:
    """``<name attributes>children</name>``: ``class_`` is ``class``, ``aria_label`` is ``aria-label``;
    an attribute None or False is left out, True is written bare."""
    written = []
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        written.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    opening = f"<{name}{''.join(written)}>"
    if name in _VOID:
        return Markup(opening)
    return Markup(f"{opening}{join(*children)}</{name}>")


def url(path: str, **params: object) -> str:
    """``path`` with the parameters that are not None or "" as its query string."""
    kept = {key: str(value) for key, value in params.items() if value is not None and value != ""}
    return f"{path}?{urlencode(kept)}" if kept else path


def link(href: str, *text: object, **attributes: object) -> Markup:
    return tag("a", *text, href=href, **attributes)


def credits(amount: int | None) -> str:
    """Integer credits with thousands separators ("—" for none)."""
    return "—" if amount is None else f"{amount:,}"


def moment(at_us: int | None) -> str:
    """A moment in µs since the epoch as UTC text, to the second ("—" for none)."""
    if at_us is None:
        return "—"
    return datetime.fromtimestamp(at_us // 1_000_000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str | None = None,
          numeric: Sequence[int] = (), empty: str = "nothing to show", class_: str | None = None) -> Markup:
    """A table; columns whose index is in ``numeric`` are right-aligned (class ``num``)."""
    body = [tag("tr", *[tag("td", cell, class_="num" if index in numeric else None) for index, cell in enumerate(row)])
            for row in rows]
    if not body:
        return tag("p", empty, class_="empty")
    head = tag("tr", *[tag("th", title, scope="col", class_="num" if index in numeric else None)
                       for index, title in enumerate(headers)])
    return tag("table", tag("caption", caption) if caption else None, tag("thead", head), tag("tbody", *body),
               class_=class_)


def section(title: str, *children: object, id_: str | None = None) -> Markup:
    return tag("section", tag("h2", title), *children, id=id_)


def definition_list(items: Iterable[tuple[str, object]]) -> Markup:
    return tag("dl", *[join(tag("dt", term), tag("dd", value)) for term, value in items])


def get_form(action: str, fields: Sequence[tuple[str, str, str, str]], *, submit: str = "Show") -> Markup:
    """A GET form (it only reads): fields are (name, label, value, hint)."""
    inputs = []
    for name, label, value, hint in fields:
        inputs.append(tag("label", label, " ", tag("input", type="text", name=name, value=value, size=40,
                                                   placeholder=hint or None)))
    return tag("form", *inputs, " ", tag("button", submit, type="submit"), method="get", action=action,
               class_="query")


# -- charts --------------------------------------------------------------------------------------

def bar_chart(title: str, bars: Sequence[tuple[str, int]], *, unit: str = "", width: int = 640,
              height: int = 220) -> Markup:
    """A vertical bar chart as inline SVG: one ``rect class="bar"`` per (label, value) (values are
    integers ≥ 0; a negative one is drawn as 0 and said in its tooltip), each with a ``title`` that
    says its label and value; the figure's accessible name is ``title``. Drawn with integer
    arithmetic; at most CHART_BARS_MAX bars (the last ones)."""
    shown = list(bars)[-CHART_BARS_MAX:]
    left_out = len(bars) - len(shown)
    caption = tag("figcaption", title, f" ({left_out} earlier left out)" if left_out else "")
    if not shown:
        return tag("figure", caption, tag("p", "no data yet", class_="empty"), class_="chart")
    top, bottom, left, right = 12, 48, 64, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    largest = max(max(value, 0) for _, value in shown) or 1
    slot = max(plot_w // len(shown), 1)
    bar_w = max(slot * 3 // 4, 1)
    parts: list[Markup] = [tag("title", title),
                           tag("line", x1=left, y1=top + plot_h, x2=left + plot_w, y2=top + plot_h, class_="axis"),
                           tag("text", f"{largest:,}{unit}", x=left - 4, y=top + 8, class_="tick", text_anchor="end"),
                           tag("text", f"0{unit}", x=left - 4, y=top + plot_h, class_="tick", text_anchor="end")]
    label_every = max(1, len(shown) // 12)
    for index, (label, value) in enumerate(shown):
        drawn = max(value, 0)
        bar_h = drawn * plot_h // largest
        x = left + index * slot + (slot - bar_w) // 2
        parts.append(tag("rect", tag("title", f"{label}: {value:,}{unit}"), x=x, y=top + plot_h - bar_h, width=bar_w,
                         height=bar_h, class_="bar", data_label=label, data_value=value))
        if index % label_every == 0:
            parts.append(tag("text", label[:18], x=x + bar_w // 2, y=top + plot_h + 16, class_="label",
                             text_anchor="middle"))
    svg = tag("svg", *parts, xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {width} {height}", width=width,
              height=height, role="img", aria_label=title)
    return tag("figure", caption, svg, class_="chart")


# -- what a service declares -----------------------------------------------------------------------

class WebError(GridcreditError):
    """A page that cannot be shown as asked: ``status`` (e.g. "400 Bad Request") and a message for people."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WebRequest:
    """One GET of a page: the person (the verified TLS client certificate's principal, None without
    one), the query parameters (one value each, checked for length and hidden characters by the
    host), the service's part (what its contract built in this worker) and the configuration."""
    path: str
    params: Mapping[str, str]
    principal: Any
    part: Any
    config: Any
    base: str = "/web"

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    def int_param(self, name: str, default: int, *, low: int = 0, high: int = 10**9) -> int:
        text = self.params.get(name, "")
        if not text:
            return default
        if not text.isdigit() or not low <= int(text) <= high:
            raise WebError("400 Bad Request", f"{name} must be a whole number from {low} to {high:,}, not {text!r}")
        return int(text)


@dataclass(frozen=True, slots=True)
class WebPage:
    """A page of a service at ``/web/<service>/<path>``. ``render(request)`` returns its HTML
    (Markup); it may raise ``WebError`` or the service's ``DomainError`` (NotAuthorized → 403,
    Unknown… → 404, InvalidArgument/QueryError → 400). ``public``: shown without a certificate
    (its ``render`` gets principal None). ``listed``: in the navigation (an account's page is not)."""
    path: str
    title: str
    render: Callable[[WebRequest], Markup]
    public: bool = False
    listed: bool = True
    summary: str = field(default="")


__all__ = ["CHART_BARS_MAX", "Markup", "PARAM_LENGTH_MAX", "WebError", "WebPage", "WebRequest", "bar_chart", "credits",
           "definition_list", "esc", "get_form", "join", "link", "moment", "section", "table", "tag", "url"]
