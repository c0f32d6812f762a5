"""The study's HTML report in a real headless browser (Debian's chromium, driven by selenium).

Checks that the page renders, that every image loads (naturalWidth > 0) and that the console
shows no error. Debian's ``chromium`` and ``chromium-driver`` must be installed (``.ci/run`` does);
without them the tests fail and say so. Deselect them with ``-m "not browser"`` on a machine
without chromium.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile

import pytest

# End to end (a study, then a browser): slow, and deselectable on its own as "browser".
pytestmark = [pytest.mark.slow, pytest.mark.browser]

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1280,2000",
]


def _find() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver"
        if os.path.exists("/usr/lib/chromium/chromedriver")
        else None
    )
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'")

    chromium, chromedriver = _find()
    if chromium is None or chromedriver is None:
        pytest.fail(
            f"chromium ({chromium or 'missing'}) and chromedriver ({chromedriver or 'missing'}) are "
            "needed: apt-get install chromium chromium-driver (.ci/run does), or deselect these "
            'tests with -m "not browser"'
        )
    profile = tempfile.mkdtemp(prefix="dropkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _load(driver, path: str) -> dict:
    driver.get_log("browser")  # drop anything logged before this page
    driver.get("file://" + os.path.abspath(path))
    state = driver.execute_script(
        """
        const images = Array.from(document.images);
        await Promise.all(images.map(img => img.complete ? null : img.decode().catch(() => null)));
        return {
          ready: document.readyState,
          title: document.title,
          h1: document.querySelector('h1') ? document.querySelector('h1').innerText : null,
          height: document.body.scrollHeight,
          images: images.map(img => ({alt: img.alt, complete: img.complete,
                                      width: img.naturalWidth, height: img.naturalHeight})),
          resources: performance.getEntriesByType('resource').map(r => r.name),
        };
        """
    )
    state["console"] = driver.get_log("browser")
    return state


@pytest.fixture(scope="module")
def study_report(tmp_path_factory) -> str:
    from sklearn.datasets import load_digits

    from dropkit import cli

    folder = tmp_path_factory.mktemp("browser")
    bunch = load_digits()
    lines = [",".join([f"px{i}" for i in range(64)] + ["digit"])]
    lines += [
        ",".join([f"{v:g}" for v in x] + [str(int(y))])
        for x, y in zip(bunch.data[:300], bunch.target[:300], strict=True)
    ]
    (folder / "digits.csv").write_text("\n".join(lines) + "\n")
    out = folder / "report"
    status = cli.main(
        [
            "study",
            "--no-progress",
            "--quick",
            "--data",
            str(folder / "digits.csv"),
            "--label",
            "digit",
            "--hidden",
            "32",
            "--epochs",
            "4",
            "--trials",
            "2",
            "--seeds",
            "2",
            "--mc-samples",
            "8",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    return str(out / "index.html")


def test_report_renders_with_every_image_loaded_and_a_clean_console(browser, study_report):
    state = _load(browser, study_report)
    assert state["ready"] == "complete"
    assert state["title"].startswith("dropkit study")
    assert state["h1"].startswith("dropkit study: digits")
    assert state["height"] > 1500  # the page laid out its tables and figures
    names = [img["alt"] for img in state["images"]]
    for expected in (
        "Learning curves with and without dropout",
        "Gap per dropout rate",
        "Sensitivity to the dropout rate",
        "Reliability diagram",
        "Uncertainty of right and wrong predictions",
    ):
        assert expected in names
    broken = [img for img in state["images"] if not img["complete"] or img["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert state["console"] == [], f"console messages: {state['console']}"
    # Self-contained: the page fetched nothing (images are data: URLs, no script, no CDN).
    assert [r for r in state["resources"] if not r.startswith("data:")] == []


def test_the_check_catches_a_broken_image_and_a_console_error(browser, tmp_path):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>t</title></head><body><h1>x</h1>'
        f'<img alt="bad" src="data:image/png;base64,{png}">'
        "<script>console.error('boom')</script></body></html>"
    )
    state = _load(browser, str(page))
    assert [img["width"] for img in state["images"]] == [0]
    assert any(
        "boom" in entry["message"] and entry["level"] == "SEVERE" for entry in state["console"]
    )
