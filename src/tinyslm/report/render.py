"""One document, two renderings: Markdown (figures as files beside it) and self-contained HTML (figures inline).

The report is built once as a list of sections made of paragraphs, bullet lists, tables and figures, so the
two files can never disagree about a number.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

from tinyslm.report.figures import Figure


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    title: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Bullets:
    items: list[str]


Block = str | Bullets | Table | Figure
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY_START = re.compile(r"&(?=[A-Za-z#])")
_BLOCK_START = re.compile(r"^(\s*)([#>+*=-]|\d+[.)])")


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


def _md_inline(s: object) -> str:
    """Text shown as written, as report.html shows it: every string of the report is plain text (model
    outputs, the study's name and description, file names), never Markdown or HTML that a viewer acts on.

    One line; backslashes and square brackets escaped (no link, image or reference definition: a
    ``[click](javascript:...)`` in a model output stays text); a tag-like '<' and an entity-like '&' as
    entities (no HTML, no ``<javascript:...>`` autolink; a '<' before a digit or space, as in p<0.05, stays
    readable).
    """
    t = str(s).replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return _TAG_START.sub("&lt;", _ENTITY_START.sub("&amp;", t)).replace("\r", " ").replace("\n", " ")


def _md_text(s: object) -> str:
    """:func:`_md_inline` for a line of its own (paragraph, bullet, heading): a leading heading, quote or
    list marker escaped too, so text never turns into structure."""
    return _BLOCK_START.sub(lambda m: f"{m.group(1)}{m.group(2)[:-1]}\\{m.group(2)[-1]}", _md_inline(s))


def _md_cell(s: object) -> str:
    """Table-safe :func:`_md_inline`: pipes escaped too."""
    return _md_inline(s).replace("|", "\\|")


def _md_table(t: Table) -> list[str]:
    out = [f"**{_md_inline(t.title)}**", ""] if t.title else []
    out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    out.append("|" + "|".join("---" for _ in t.columns) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    for n in t.notes:
        out += ["", f"_{_md_inline(n)}_"]
    return out


def to_markdown(title: str, sections: list[Section], figure_dir: str = "figures") -> str:
    lines = [f"# {_md_text(title)}", ""]
    for s in sections:
        lines += ["#" * s.level + " " + _md_text(s.title), ""]
        for b in s.blocks:
            if isinstance(b, str):
                lines.append(_md_text(b))
            elif isinstance(b, Bullets):
                lines += [f"- {_md_text(i)}" for i in b.items]
            elif isinstance(b, Table):
                lines += _md_table(b)
            else:
                lines += [
                    f"![{_md_cell(b.caption)}]({figure_dir}/{b.name})",
                    "",
                    f"_{_md_inline(b.caption)}_",
                ]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { font-size: 0.85em; color: #555; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
"""


def _html_table(t: Table) -> str:
    e = html.escape
    parts = [f"<p><strong>{e(t.title)}</strong></p>"] if t.title else []
    parts.append(
        "<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr></thead><tbody>"
    )
    parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows]
    parts.append("</tbody></table>")
    parts += [f'<p class="note">{e(n)}</p>' for n in t.notes]
    return "\n".join(parts)


def to_html(title: str, sections: list[Section]) -> str:
    """A single file: CSS inline and every figure as a base64 PNG data URI, so it can be mailed or archived."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for s in sections:
        level = min(max(s.level, 1), 6)
        body.append(f"<h{level}>{e(s.title)}</h{level}>")
        for b in s.blocks:
            if isinstance(b, str):
                body.append(f"<p>{e(b)}</p>")
            elif isinstance(b, Bullets):
                body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, Table):
                body.append(_html_table(b))
            else:
                uri = "data:image/png;base64," + base64.b64encode(b.png).decode("ascii")
                body.append(
                    f'<figure><img src="{uri}" alt="{e(b.caption)}" data-name="{e(b.name)}">'
                    f"<figcaption>{e(b.caption)}</figcaption></figure>"
                )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
