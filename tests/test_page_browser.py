"""The study page (orchestrator/results/page.py) of a small real study, opened in a real browser: headless
Chromium with the network cut (`unshare -n`), as root with --no-sandbox, software WebGL (parallel coordinates draw
with WebGL). No console errors from the page, every figure rendered in the DOM, and a screenshot whose plot
regions are not blank. Needs root and Debian's chromium (`make test` installs it); skips with the reason
elsewhere, fails under CI=true."""
import os
import re
import shutil
import subprocess

import pytest

from orchestrator.cli import main
from tests.conftest import require, run_study_text

STUDY = """\
# browser test study: two cells, two learning rates, three seeds (12 trials: enough for importance)
name: page
repeats: 3
space:
  cell: {grid: [rnn, gru]}
  lr: {grid: [0.001, 0.003]}
  digits: 3
  iters: 200
  eval_every: 20
  eval_size: 100
  target: 0.6
"""
FIGURES = ("fig-summary", "fig-parallel", "fig-curves", "fig-vs-keys", "fig-pivot", "fig-importance")


def chromium(*args, profile, timeout=120):
    """Headless Chromium in a network namespace of its own (no network at all), as the probe that ran it here."""
    cmd = ["unshare", "-n", "chromium", "--headless", "--no-sandbox", "--enable-unsafe-swiftshader",
           "--use-angle=swiftshader", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(ray_local, tmp_path_factory):
    require(os.geteuid() == 0, "needs root (unshare -n cuts the browser's network; Chromium runs --no-sandbox)")
    require(shutil.which("chromium") is not None, "needs Debian's chromium (apt-get install chromium)")
    root = tmp_path_factory.mktemp("page")
    run_study_text(STUDY, root, "page")
    assert main(["report", "page", "--storage", str(root), "--no-plots"]) == 0
    return root / "page" / "report.html"


def test_page_is_one_file_with_no_network_reference(page):
    """No element of the page loads anything: no script/link/img/iframe with a source (plotly.js is inline)."""
    from html.parser import HTMLParser

    class Sources(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and tag in ("script", "link", "img", "iframe", "embed", "object"):
                    self.found.append((tag, value))

    text = page.read_text()
    parser = Sources()
    parser.feed(text)
    assert parser.found == []
    assert "<script type=\"text/javascript\">" in text and "Plotly" in text  # plotly.js embedded


def test_page_renders_in_chromium_without_errors(page, tmp_path):
    p = chromium("--dump-dom", f"file://{page}", profile=tmp_path / "profile")
    assert p.returncode == 0, p.stderr[-2000:]
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line and "source: file://" in line]
    assert console == [], console  # nothing logged by the page: no errors, no warnings
    dom = p.stdout
    for fig in FIGURES:
        assert f'id="{fig}"' in dom, fig
    # plotly turned every figure div into a drawn plot (parallel coordinates included: WebGL worked)
    assert dom.count('class="plot-container plotly"') == 5  # parallel, curves, keys, pivot, importance
    assert 'class="parcoords"' in dom and 'class="hm"' in dom  # WebGL parallel coordinates; the heatmap
    assert re.search(r"12/12 trials \(12 terminated\); outcomes: .*; ranked by \w+", dom)


PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const out = {};
  for (const id of %s) {
    const r = document.getElementById(id).getBoundingClientRect();
    out[id] = [r.left, r.top + window.scrollY, r.width, r.height];
  }
  const pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000));
</script>"""
PLOTS = ("fig-parallel", "fig-curves", "fig-vs-keys", "fig-pivot", "fig-importance")


def test_screenshot_shows_drawn_figures(page, tmp_path):
    """Each figure's region of a screenshot holds a drawn plot: many colours, not a blank frame. Where the figures
    are comes from the same page in the same window size, with a probe script (test-only) that writes their
    bounding boxes into the DOM."""
    import json

    import numpy as np
    from PIL import Image

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE % json.dumps(list(PLOTS)) + "</body>"))
    size = "--window-size=1400,4400"
    dom = chromium(size, "--dump-dom", f"file://{probed}", profile=tmp_path / "p1").stdout
    boxes = json.loads(re.search(r'<pre id="layout-probe">(.*?)</pre>', dom).group(1).replace("&quot;", '"'))
    shot = tmp_path / "page.png"
    p = chromium(size, f"--screenshot={shot}", f"file://{page}", profile=tmp_path / "p2")
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    for fig, (left, top, width, height) in boxes.items():
        assert width > 300 and height > 80, (fig, width, height)
        region = np.asarray(img.crop((int(left), int(top), int(left + width), int(top + height)))).reshape(-1, 3)
        ink = float((region.astype(int).sum(axis=1) < 700).mean())
        colours = len(np.unique(region, axis=0))
        assert ink > 0.03 and colours > 40, (fig, ink, colours)  # drawn, not blank
    if os.environ.get("ADDER_SWEEP_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ADDER_SWEEP_KEEP_SCREENSHOT"])
