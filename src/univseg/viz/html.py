"""Self-contained HTML pages: every image embedded as a base64 PNG ``data:`` URI, inline CSS, nothing
fetched from anywhere (a Content-Security-Policy in the page forbids it).

    body = section("curves", "Training curves", img(png, "training curves"))
    text = page("univseg report", body, toc=[("curves", "Training curves")])

The page needs no JavaScript. It carries one tiny inline script (allowed by its hash in the
policy, nothing else is) that, once the page has loaded, counts the images and those that failed to
decode into ``data-images`` and ``data-broken-images`` on ``<body>``, so a headless browser can
check the page (``chromium --headless --dump-dom``).
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CHECK_SCRIPT = (
    "addEventListener('load', () => { const images = [...document.images]; "
    "document.body.dataset.images = images.length; "
    "document.body.dataset.brokenImages = images.filter(i => !i.complete || i.naturalWidth === 0).length; });"
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1400px; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 40px; }
h3 { margin-top: 24px; } h4 { margin: 16px 0 6px; }
.meta, .note { color: #555; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 8px 16px 16px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } th[scope=row], td.text { text-align: left; }
.tables { display: flex; flex-wrap: wrap; align-items: flex-start; }
figure { display: inline-block; margin: 8px 16px 16px 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #444; margin-top: 4px; }
img { max-width: 100%; }
table.samples td { padding: 2px; text-align: center; }
table.samples img { width: 200px; height: auto; image-rendering: pixelated; display: block; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #888; margin: 0 3px 0 10px; vertical-align: middle; }
nav ul { columns: 2; }
"""


def esc(text: object) -> str:
    """``text`` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(text), quote=True)


def attributes(**attrs: object) -> str:
    """`` name="value"`` pairs: ``data_head`` becomes ``data-head``, ``class_`` ``class``; None values are left out."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """The PNG encoding of a PIL image or an HxW / HxWx3 uint8 array."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def is_png(data: bytes) -> bool:
    """Whether ``data`` starts with the PNG signature."""
    return data[:8] == PNG_SIGNATURE


def img(image: bytes | Image.Image | np.ndarray, alt: str, **attrs: object) -> str:
    """An ``<img>`` showing ``image`` (PNG bytes, a PIL image or a uint8 array) from a data URI."""
    data = image if isinstance(image, bytes) else png_bytes(image)
    if not is_png(data):
        raise ValueError(f"image '{alt}' is not a PNG")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}"{attributes(alt=alt, **attrs)}>'


def figure(content: str, caption: str, **attrs: object) -> str:
    """A ``<figure>`` holding ``content`` (HTML) above the text ``caption``."""
    return f"<figure{attributes(**attrs)}>{content}<figcaption>{esc(caption)}</figcaption></figure>"


def cell(text: object, value: float | None = None, header: bool = False) -> str:
    """A table cell showing ``text``; ``value`` (the exact number shown rounded) goes into ``data-value``.
    Text cells (a string without ``value``) are aligned left, numbers right."""
    tag = "th" if header else "td"
    cls = "text" if isinstance(text, str) and value is None and not header else None
    scope = "row" if header else None
    return f"<{tag}{attributes(scope=scope, class_=cls, data_value=value)}>{esc(text)}</{tag}>"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], **attrs: object) -> str:
    """An HTML table; ``rows`` hold cells made by :func:`cell`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table{attributes(**attrs)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    """A paragraph of secondary text (why something is missing, where a number comes from)."""
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, body: str, level: int = 2) -> str:
    """A heading with id ``anchor`` (for the table of contents) followed by ``body``."""
    return f'<section><h{level} id="{esc(anchor)}">{esc(title)}</h{level}>{body}</section>'


def swatches(names: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    """A colour legend: a coloured square before each class name."""
    items = (f'<span class="swatch" style="background: rgb{tuple(int(v) for v in c)}"></span>{esc(n)}'
             for n, c in zip(names, colors))
    return f'<p class="legend">{"".join(items)}</p>'


def page(title: str, body: str, toc: Sequence[tuple[str, str]] = (), subtitle: str = "") -> str:
    """A complete HTML document: ``title``, ``subtitle``, a table of contents of ``(anchor, title)``
    and ``body``, with the inline style and the image check script."""
    script_hash = base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()
    policy = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    nav = ""
    if toc:
        links = "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in toc)
        nav = f"<nav><h2>Contents</h2><ul>{links}</ul></nav>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
        f'<body><h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}</p>{nav}\n{body}\n'
        f"<script>{CHECK_SCRIPT}</script></body></html>\n"
    )
