"""Small HTML builders for the web view's pages (``_pages``): every value escaped here.

Python string building rather than a template engine: the pages are a few
tables, and one escaping function applied at the point a value becomes
text keeps every page safe without a second language to read.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from runstate.engine._states import TaskState

__all__ = [
    "ASSETS",
    "STATES",
    "ago",
    "counts_text",
    "esc",
    "json_text",
    "layout",
    "link",
    "query_link",
    "state_badge",
    "table",
]

#: where the pages' stylesheet and script are served from
ASSETS = "/ui-assets"

#: the task states in the order the count columns show them
STATES: tuple[str, ...] = tuple(state.value for state in TaskState)


def esc(value: object) -> str:
    """``value`` as HTML text (None as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def link(href: str, text: object) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def path_url(prefix: str, pathspec: str) -> str:
    """``prefix`` then ``pathspec`` with each of its parts percent-encoded."""
    return prefix + "/".join(quote(part, safe="") for part in pathspec.split("/"))


def query_link(base: str, params: Mapping[str, Any]) -> str:
    """``base`` with ``params`` as its query (lists repeat, None is left out)."""
    pairs = [
        (key, item)
        for key, value in params.items()
        for item in (value if isinstance(value, list) else [value])
        if item is not None and item != ""
    ]
    return f"{base}?{urlencode(pairs)}" if pairs else base


def ago(moment: datetime | None) -> str:
    """An ISO time to the second, UTC (the page's readers compare them, so one zone)."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def state_badge(state: object, *, id: str | None = None) -> str:
    """A state as a coloured label; ``class="state"`` is what the live script updates."""
    ident = f' id="{esc(id)}"' if id else ""
    return f'<span{ident} class="state state-{esc(state)}">{esc(state)}</span>'


def counts_text(counts: Mapping[str, int]) -> str:
    """``completed 3 · running 1``: the non-zero counts by state, in ``STATES`` order."""
    return " · ".join(f"{state} {counts[state]}" for state in STATES if counts.get(state))


def json_text(value: Any, limit: int = 2000) -> str:
    """A JSON value as compact text, cut at ``limit`` characters."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return text if len(text) <= limit else text[:limit] + " …"


def table(
    headers: Iterable[str],
    rows: Iterable[str],
    *,
    id: str | None = None,
    empty: str = "None yet.",
) -> str:
    """A table of already-built ``<tr>`` rows (``empty`` when there are none)."""
    body = "".join(rows)
    ident = f' id="{esc(id)}"' if id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    if not body:
        return f'<p class="empty"{ident}>{esc(empty)}</p>'
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pairs_table(values: Mapping[str, Any], *, empty: str = "None.") -> str:
    """Name and value rows, sorted by name (values as JSON)."""
    rows = (
        f"<tr><th>{esc(key)}</th><td><code>{esc(json_text(values[key]))}</code></td></tr>"
        for key in sorted(values)
    )
    body = "".join(rows)
    return f'<table class="pairs"><tbody>{body}</tbody></table>' if body else f"<p>{esc(empty)}</p>"


def layout(
    title: str,
    crumbs: list[tuple[str, str]],
    body: str,
    *,
    watch: str | None = None,
) -> str:
    """A whole page: ``crumbs`` (href, text) lead to it; ``watch`` is the pathspec its live
    script follows (the page is complete without it)."""
    trail = " / ".join([link("/", "flows"), *(link(href, text) for href, text in crumbs)])
    live = f' data-watch="{esc(watch)}"' if watch is not None else ""
    status = '<span id="live" class="live">static</span>' if watch is not None else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · runstate</title>"
        '<link rel="icon" href="data:,">'  # no favicon request
        f'<link rel="stylesheet" href="{ASSETS}/runstate.css">'
        f'<script src="{ASSETS}/runstate.js" defer></script>'
        f"</head><body{live}>"
        f'<header><a class="brand" href="/">runstate</a> <nav>{trail}</nav>{status}'
        '<a class="api" href="/docs">API</a></header>'
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
