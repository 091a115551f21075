"""A self-contained HTML page that renders an AsyncAPI document.

The page holds the document (as JSON in a non-executed ``<script>`` element), its stylesheet
and its script: it needs no network access, no CDN and no build step. A Content-Security-Policy
allows exactly that inline script and style (by hash) and nothing else, so the page cannot
load anything from anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["render_html"]


@cache
def _asset(name: str) -> str:
    return (resources.files("dispytch.asyncapi") / "static" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _script_json(document: dict[str, Any]) -> str:
    # JSON inside <script>: escape what could end the element or start a comment.
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    document: dict[str, Any],
    *,
    json_url: str = "asyncapi.json",
    yaml_url: str = "asyncapi.yaml",
) -> str:
    """The page for ``document``; ``json_url`` and ``yaml_url`` are its download links."""
    script, style = _asset("page.js"), _asset("page.css")
    info = document.get("info", {})
    title = f"{info.get('title', 'AsyncAPI')} {info.get('version', '')} - AsyncAPI".strip()
    csp = (
        f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(style)}; "
        "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{style}</style>\n"
        "</head>\n"
        f'<body data-json="{html.escape(json_url)}" data-yaml="{html.escape(yaml_url)}">\n'
        '<main id="app"><noscript>This page renders the AsyncAPI document with JavaScript; '
        f'the document itself is at <a href="{html.escape(json_url)}">{html.escape(json_url)}'
        "</a>.</noscript></main>\n"
        '<script id="asyncapi-document" type="application/json">'
        f"{_script_json(document)}</script>\n"
        f"<script>{script}</script>\n"
        "</body>\n</html>\n"
    )
