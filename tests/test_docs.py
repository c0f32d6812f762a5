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

#: The only blocks not run here, by page and a text that identifies the block, with the reason
#: and where they run instead. A listed block that is gone, or found twice, fails the test.
NOT_RUN_HERE = {
    ("tuning.md", "@db-host/"): (
        "needs the PostgreSQL server its URL names; tests/test_postgres.py runs this block "
        "against a throw-away server"
    ),
}


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
    for listed_page, marker in NOT_RUN_HERE:
        if listed_page == page:
            found = [i for i, code in enumerate(blocks) if marker in code]
            assert len(found) == 1, f"docs/{page}: {marker!r} marks {len(found)} blocks, not 1"
    for index, code in enumerate(blocks):
        if _not_run_here(page, code):
            continue
        exec(compile(code, f"docs/{page} block {index}", "exec"), namespace)


def _not_run_here(page: str, code: str) -> bool:
    return any(p == page and marker in code for p, marker in NOT_RUN_HERE)


def docs_block(page: str, marker: str) -> str:
    """The one block of ``docs/<page>`` holding ``marker`` (for tests that run it elsewhere)."""
    (block,) = [code for code in _blocks(page) if marker in code]
    return block


def test_the_blocks_not_run_here_are_the_listed_ones():
    # Any block that mentions a server the test machine does not have must be listed above.
    unlisted = [
        (page, index)
        for page in PAGES
        for index, code in enumerate(_blocks(page))
        if ("db-host" in code or "postgresql" in code) and not _not_run_here(page, code)
    ]
    assert unlisted == []
    assert all(why for why in NOT_RUN_HERE.values())
