"""Every Python example in docs/*.md runs as written, the blocks of a page in order in one
namespace (later blocks build on earlier ones). docs/api.md runs in tests/test_layers.py."""

import re
import textwrap
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "api.md")
SLOW = {"tuning.md"}  # trains several small models: about 40 s


def _blocks(page: str) -> list[str]:
    # Blocks inside list items are indented: dedent them.
    found = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    return [textwrap.dedent(block) for block in found]


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PAGES]
)
def test_every_example_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example"}
    blocks = _blocks(page)
    for index, code in enumerate(blocks):
        if "db-host" in code:  # needs a PostgreSQL server (tests/test_postgres.py runs one)
            continue
        exec(compile(code, f"docs/{page} block {index}", "exec"), namespace)
