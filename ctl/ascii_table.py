"""Calico's classic bordered tables, as calicoctl up to v3.32 draws them (`ipam show`,
`node status`), so output users have learnt to read, and scripts written against it, still match.

calicoctl used olekukonko/tablewriter v0.0.5 with its defaults; this is that renderer, pure:

    +----------+----------------+-----------+
    | GROUPING |      CIDR      | IPS TOTAL |      headers upper-cased and centred
    +----------+----------------+-----------+      (gap = width - len; left gets gap // 2)
    | IP Pool  | 192.168.0.0/16 |     65536 |      cells left-aligned, plain numbers
    +----------+----------------+-----------+      right-aligned; one space each side

Details kept because they change the bytes:
  * "Plain number" is tablewriter's own test, `-?(digits or 1,234,567)(.digits)?`: `65536` is
    right-aligned but `1.6777e+07` and `78 (0%)` are not.
  * Text longer than 30 columns is word-wrapped (at spaces only) with tablewriter's
    minimum-raggedness algorithm; a row that wraps is as tall as its tallest cell. Newlines in a
    cell are first turned into spaces and the text reflowed.
  * Widths are display widths: East Asian wide characters count two, combining marks none, and
    ANSI colour sequences nothing.
  * A table with no rows is still drawn: borders and header.

calicoctl in 2026 moved to go-pretty, which left-aligns headers; percale keeps the classic look.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

MAX_CELL_WIDTH = 30  # tablewriter's MAX_ROW_WIDTH: wider text wraps
_WRAP_PENALTY = 10**5  # added to a line that is too long because one word is
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})*|[0-9]+)(?:\.[0-9]+)?")
_ANSI = re.compile("\033\\[(?:[0-9]{1,3}(?:;[0-9]{1,3})*)?[m|K]")


def render(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """The table, ending in a newline. Every row must have one cell per header."""
    header = [_cell(h) for h in headers]
    body = []
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells for {len(headers)} headers")
        body.append([_cell(c) for c in row])
    widths = [max(width for _, width in column) for column in zip(header, *body, strict=True)]
    header_lines = [lines for lines, _ in header]

    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+\n"
    out = [border]
    for x in range(max((len(h) for h in header_lines), default=1)):
        titles = [_title(h[x]) if x < len(h) else "" for h in header_lines]
        out.append("|" + "|".join(f" {_centre(t, w)} " for t, w in zip(titles, widths, strict=True)) + "|\n")
    out.append(border)
    for cells in body:
        height = max(len(lines) for lines, _ in cells)
        # tablewriter fills the short cells of a tall row with two spaces, not nothing.
        padded = [lines + ["  "] * (height - len(lines)) for lines, _ in cells]
        for x in range(height):
            out.append("|" + "|".join(f" {_align(c[x], w)} " for c, w in zip(padded, widths, strict=True)) + "|\n")
    out.append(border)
    return "".join(out)


def display_width(text: str) -> int:
    width = 0
    for char in _ANSI.sub("", text):
        if unicodedata.combining(char) or unicodedata.category(char) == "Cc":
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _cell(text: str) -> tuple[list[str], int]:
    """The lines a cell is drawn on, and the width it asks of its column.

    Newlines become spaces and the text is rewrapped to the cell's own widest line, at most
    MAX_CELL_WIDTH; a word longer than that keeps its width. The width asked is that limit even
    when the wrapped lines come out narrower, as in tablewriter.
    """
    limit = min(max(display_width(line) for line in text.split("\n")), MAX_CELL_WIDTH)
    lines = _wrap(" ".join(text.split("\n")), limit)
    return lines, max(limit, *(display_width(line) for line in lines))


def _wrap(text: str, limit: int) -> list[str]:
    """tablewriter's WrapString: break at single spaces so that the sum of the squared shortfalls
    of all lines but the last is smallest."""
    words = text.split(" ")
    lengths = [display_width(w) for w in words]
    limit = max(limit, *lengths)
    n = len(words)

    def span(i: int, j: int) -> int:
        """The width of words[i..j] on one line, one space apart."""
        return sum(lengths[i:j + 1]) + (j - i)

    cost = [0] * (n + 1)
    breaks = [n] * n
    for i in range(n - 1, -1, -1):
        if span(i, n - 1) <= limit:
            cost[i], breaks[i] = 0, n
            continue
        cost[i] = 2**31 - 1
        for j in range(i + 1, n):
            short = limit - span(i, j - 1)
            c = short * short + cost[j] + (_WRAP_PENALTY if span(i, j - 1) > limit else 0)
            if c < cost[i]:
                cost[i], breaks[i] = c, j
    lines, i = [], 0
    while i < n:
        lines.append(" ".join(words[i:breaks[i]]))
        i = breaks[i]
    return lines


def _title(header: str) -> str:
    """tablewriter's header form: `_` and word-joining dots become spaces, then upper case."""
    chars = list(header)
    for i, ch in enumerate(chars):
        if ch == "_":
            chars[i] = " "
        elif ch == "." and ((i > 0 and not _digit_or_space(chars[i - 1]))
                            or (i < len(chars) - 1 and not _digit_or_space(chars[i + 1]))):
            chars[i] = " "
    title = "".join(chars).strip()
    if not title and header:
        title = " "  # keeps an intentionally blank header line
    return title.upper()


def _digit_or_space(ch: str) -> bool:
    return "0" <= ch <= "9" or ch == " "


def _centre(text: str, width: int) -> str:
    gap = width - display_width(text)
    if gap <= 0:
        return text
    return " " * (gap // 2) + text + " " * (gap - gap // 2)


def _align(text: str, width: int) -> str:
    gap = max(width - display_width(text), 0)
    if _PLAIN_NUMBER.fullmatch(text.strip()):
        return " " * gap + text
    return text + " " * gap
