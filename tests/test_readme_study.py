"""The MNIST-1D results block of README.md and docs/study.md is benchmarks/readme_table.py's output
for the committed figures of the default run (benchmarks/results/study_default.json), so it cannot drift from them.
Regenerate both after `make study` with
`.venv/bin/python benchmarks/readme_table.py --from-report dropkit-report --write`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "readme_table", ROOT / "benchmarks" / "readme_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


readme_table = _script()
FIGURES = json.loads(readme_table.FIGURES.read_text())


@pytest.mark.parametrize("page", ["README.md", "docs/study.md"])
def test_the_page_block_is_the_script_output_for_the_committed_figures(page):
    assert ROOT / page in readme_table.PAGES
    block = readme_table.readme_block((ROOT / page).read_text())
    assert block == readme_table.render(FIGURES), (
        f"{page}'s study results differ from benchmarks/results/study_default.json: run "
        "benchmarks/readme_table.py --write (after --from-report on a fresh `make study`)"
    )


def test_the_committed_figures_are_from_the_default_run():
    # Not a --quick run, not other settings: what `make study` runs.
    assert FIGURES["config"] == {
        "seed": 0,
        "quick": False,
        "epochs": 100,
        "hidden": [100, 100],
        "final_seeds": 3,
        "mc_samples": 100,
        "epsilon": 0.05,
    }
    assert FIGURES["data"] == {"n_train": 4000, "n_val": 800, "n_test": 1000}
    assert FIGURES["final"]["baseline"]["seeds"] == [0, 1, 2]
    # The paper check's value is the one its name states, for these figures.
    checks = FIGURES["checks"]
    distance = abs(FIGURES["final"]["baseline"]["test_acc"] - checks["paper_mlp_test_acc"])
    assert checks["baseline_within_3_points_of_paper"] is (distance <= 0.03)


def test_the_block_follows_the_figures():
    # A changed figure changes the block (the test above would then fail on the README).
    changed = json.loads(json.dumps(FIGURES))
    changed["final"]["dropout"]["test_acc"] += 0.01
    assert readme_table.render(changed) != readme_table.render(FIGURES)


def test_summarise_refuses_a_report_of_other_data():
    with pytest.raises(ValueError, match="default MNIST-1D run"):
        readme_table.summarise({"data": {"name": "digits"}, "config": {"data": "digits.csv"}})
