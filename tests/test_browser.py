"""The HTML leaderboard in a real browser: Debian's headless Chromium driven by Playwright.

Sorting, filtering, the plots and their hover text run in the page's own
script, so only a browser can tell whether they work. Playwright never
downloads a browser here: it launches the system Chromium (``/usr/bin/chromium``,
or ``$HARNESS_CHROMIUM``); ``.ci/run`` installs it where apt-get can.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from test_report import METHODS, synthetic_grid

from harness import report


def _chromium() -> str | None:
    for path in (os.environ.get("HARNESS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


CHROMIUM = _chromium()
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable: apt-get install chromium "
                                "(or set HARNESS_CHROMIUM to a Chromium/Chrome binary)")
SST2_ALL = REPO / "leaderboards" / "minilm-sst2-all" / "report.html"
INDEX = REPO / "leaderboards" / "index.html"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-background-networking"])
        yield chromium
        chromium.close()


class Opened:
    """A page with every console message, page error and request it produced."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.messages: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.messages.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.messages.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")

    def column(self, key: str, table: str = "table.board") -> list[str]:
        """The ``data-v`` of one column's cells in DOM order, visible rows only."""
        return self.page.eval_on_selector(table, """(t, key) => {
            const i = [...t.tHead.rows[0].cells].findIndex(c => c.dataset.key === key);
            return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[i].dataset.v); }""", key)

    def visible_methods(self) -> list[str]:
        return self.page.eval_on_selector_all("table.board tbody tr", "rows => rows.filter(r => "
                                              "r.offsetParent !== null).map(r => r.dataset.method)")

    def check_clean(self) -> None:
        errors = [m for m in self.messages if m[0] in ("error", "pageerror")]
        assert not errors, errors
        assert all(url.startswith(("file:", "data:")) for url in self.requests), self.requests  # no network


def _sorts_by(opened: Opened, key: str) -> None:
    header = opened.page.locator(f'table.board th[data-key="{key}"]').first
    header.click()
    values = [float(v) for v in opened.column(key)]
    assert values == sorted(values) and len(set(values)) > 1 and header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert [float(v) for v in opened.column(key)] == sorted(values, reverse=True)


def _plots_render(opened: Opened, count: int) -> None:
    plots = opened.page.locator("svg.plot")
    assert plots.count() == count
    for i in range(count):
        box = plots.nth(i).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
    points = opened.page.locator("svg.plot .pt")
    assert points.count() > 0
    box = points.first.bounding_box()
    assert box and box["width"] > 2 and box["height"] > 2


def _hover_names(opened: Opened, method: str) -> str:
    point = opened.page.locator(f'svg.plot .series[data-method="{method}"] .pt').first
    point.hover()
    tip = opened.page.locator("#tip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert text.splitlines()[0] == method and " ± " in text and "speedup " in text and "params " in text
    return text


def test_a_synthetic_report_sorts_filters_plots_and_hovers(browser, tmp_path):
    synthetic_grid(tmp_path)
    opened = Opened(browser, report.build(tmp_path) / "report.html")
    _plots_render(opened, 8)  # heads, neurons, weights, layers × two views
    facets = opened.page.eval_on_selector_all('svg.plot[data-view="sparsity"]', "s => s.map(e => e.dataset.facet)")
    assert facets == ["head", "neuron", "weight", "layer"]
    _sorts_by(opened, "accuracy")
    opened.page.select_option("#method", "taylor-neuron/neurons")
    assert opened.visible_methods() == ["taylor-neuron/neurons"] * 3
    assert opened.page.locator("#shown").inner_text() == f"3 of {1 + 3 * len(METHODS)} rows"
    dimmed = opened.page.locator("svg .series.dim").count()
    assert dimmed == 2 * (len(METHODS) - 1)  # every other method's curves, in both views
    opened.page.select_option("#method", "")
    opened.page.fill("#filter", "constant-predictions")
    assert opened.visible_methods() == ["random-layer/layers"]
    opened.page.fill("#filter", "")
    assert "accuracy 0.8" in _hover_names(opened, "head-gradient/heads")
    opened.page.screenshot(path=str(tmp_path / "synthetic.png"), full_page=True)
    assert (tmp_path / "synthetic.png").stat().st_size > 20_000
    opened.check_clean()


def test_the_published_sst2_page_with_every_method(browser, tmp_path):
    assert SST2_ALL.exists(), "regenerate it: harness report --index leaderboards"
    opened = Opened(browser, SST2_ALL)
    options = opened.page.eval_on_selector_all("#method option", "o => o.map(e => e.value)")
    assert len(options) == 1 + 1 + 21  # all methods, dense, 21 scorer/pruner pairs
    _plots_render(opened, 6)  # heads, neurons, weights × two views
    _sorts_by(opened, "accuracy")
    best = opened.page.locator("table.board tbody tr").first.get_attribute("data-method")
    assert best == "gradient-neuron/neurons"  # 0.8811 at 10% of the FFN neurons: above dense
    opened.page.select_option("#method", "taylor/unstructured")
    assert opened.visible_methods() == ["taylor/unstructured"] * 5
    opened.page.select_option("#method", "")
    _hover_names(opened, "l0-gates/heads")
    opened.page.screenshot(path=str(tmp_path / "sst2-all.png"))
    assert (tmp_path / "sst2-all.png").stat().st_size > 20_000
    opened.check_clean()


def test_the_index_links_every_published_report(browser, tmp_path):
    assert INDEX.exists(), "regenerate it: harness report --index leaderboards"
    opened = Opened(browser, INDEX)
    links = opened.page.eval_on_selector_all('table.index a[href$="report.html"]', "a => a.map(e => e.href)")
    assert len(links) >= 25 and all(Path(link.removeprefix("file://")).exists() for link in links)
    methods = opened.page.locator('table.index th[data-key="methods"]')
    methods.click()
    methods.click()
    assert opened.column("methods", "table.index")[0] == "21"
    opened.page.fill("#filter", "smollm2")
    assert len(opened.column("methods", "table.index")) == 10
    opened.page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    opened.check_clean()
    opened.page.fill("#filter", "")
    opened.page.click('a[href="minilm-sst2-all/report.html"]')
    assert opened.page.url.endswith("minilm-sst2-all/report.html") and opened.page.title() == "Leaderboard"
