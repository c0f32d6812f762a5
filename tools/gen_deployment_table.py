"""Writes docs/deployment.md's per-layer table from the module spec table.

The table is what tests/test_conformance.py asserts: each cell either passes (the captured or
exported module matches eager mode) or raises the documented error its row declares. The test
``test_the_deployment_page_shows_the_table_the_matrix_asserts`` fails when the page is stale.

Usage: python tools/gen_deployment_table.py   (rewrites the block between the markers)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "deployment.md"
BEGIN = "<!-- BEGIN GENERATED: tools/gen_deployment_table.py -->"
END = "<!-- END GENERATED -->"


def _specs():
    for path in (ROOT, ROOT / "src"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from tests import module_specs

    return module_specs


def table() -> str:
    """The generated block: the matrix (✓, or ✗ and a numbered note: a documented refusal or a
    known bug the matrix holds as a strict xfail) and the notes."""
    specs = _specs()
    notes: list[str] = []
    header = "| layer | " + " | ".join(f"{title} ({mode})" for _, title, mode in specs.CELLS) + " |"
    rule = "|---|" + "---|" * len(specs.CELLS)
    rows = [header, rule]
    for spec in specs.SPECS:
        cells = []
        for key, _, _ in specs.CELLS:
            refusal = spec.refusals.get(key)
            note = spec.known_bugs.get(key) or (refusal.reason if refusal is not None else None)
            if note is None:
                cells.append("✓")
                continue
            if note not in notes:
                notes.append(note)
            cells.append(f"✗ {notes.index(note) + 1}")
        rows.append(f"| `{spec.name}` | " + " | ".join(cells) + " |")
    lines = [BEGIN, "", *rows, ""]
    lines += [f"{k}. {note}" for k, note in enumerate(notes, start=1)]
    return "\n".join([*lines, "", END])


def main() -> None:
    page = PAGE.read_text()
    start, end = page.index(BEGIN), page.index(END) + len(END)
    PAGE.write_text(page[:start] + table() + page[end:])
    print(f"wrote the table of {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
