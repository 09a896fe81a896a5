"""One small self-contained HTML page holding a table: what the report shows for a table."""

from __future__ import annotations

import html

STYLE = ("body{font:13px sans-serif}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 6px;"
         "text-align:left;vertical-align:top}p{max-width:60em}")


def table_page(title: str, columns: list[str], rows: list[list[str]], note: str = "") -> str:
    """``rows`` (cells as text) under ``columns``, with ``note`` as a paragraph below; escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    paragraph = f"<p>{html.escape(note)}</p>" if note else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table>{paragraph}</body></html>")
