#!/usr/bin/env python3
"""Writes the values tables of a chart's README.md from its values.yaml: every leaf value with
its default and the comment above it, grouped by the `# --- Section ---` comments. The tables
sit between `<!-- values:begin -->` and `<!-- values:end -->`; tests/charts checks they are
current (`make chart-docs` rewrites them).

    chart-values-table.py CHART_DIR [--check]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def lookup(values, path):
    for p in path:
        values = values[p]
    return values


def shown(v) -> str:
    if isinstance(v, str):
        return f'`"{v}"`' if v == "" else f"`{v}`"
    return f"`{json.dumps(v, separators=(', ', ': '))}`"


def rows(values_file: Path) -> list[tuple[str, list[tuple[str, str, str]]]]:
    values = yaml.safe_load(values_file.read_text())
    sections: list[tuple[str, list[tuple[str, str, str]]]] = [("", [])]
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in values_file.read_text().splitlines():
        text = line.strip()
        if not text:
            comment = []
            continue
        if text.startswith("#"):
            m = re.match(r"#\s*---\s*(.*?)\s*-*\s*$", text)
            if m:
                title = m.group(1).rstrip("- ").strip()
                sections.append((title, []))
                comment = []
            else:
                comment.append(text.lstrip("#").strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):(.*)$", line)
        if not m or text.startswith("- "):
            comment = []
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        try:
            value = lookup(values, path)
        except (KeyError, TypeError):
            comment = []
            continue
        if isinstance(value, dict) and value:
            comment = []
            continue
        desc = " ".join(comment).replace("|", "\\|")
        sections[-1][1].append((".".join(path), shown(value), desc))
        comment = []
    return [(t, r) for t, r in sections if r]


def table(values_file: Path) -> str:
    out = []
    for title, rs in rows(values_file):
        if title:
            out.append(f"\n#### {title}\n")
        out.append("| Value | Default | Description |")
        out.append("|---|---|---|")
        out.extend(f"| `{k}` | {d} | {c} |" for k, d, c in rs)
    return "\n".join(out).strip() + "\n"


def main() -> int:
    chart = Path(sys.argv[1])
    check = "--check" in sys.argv[2:]
    readme = chart / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: no {BEGIN} … {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table(chart / 'values.yaml')}{END}{tail}"
    if check:
        if new != text:
            print(f"{readme}: the values table is not current; run make chart-docs", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
