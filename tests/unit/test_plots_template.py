"""The offline `dvc plots show` template built by scripts/build_plots_template.sh.

The template is third-party JS built from npm and git-ignored, so these tests skip when
it has not been built (`scripts/build_plots_template.sh`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "build" / "dvc-plots-template.html"
ROWS = [
    {"system": "bm25", "metric": "ndcg@10", "value": 0.5},
    {"system": "flagops-zz-marker", "metric": "ndcg@10", "value": 0.71},
]
INLINE_SCRIPT = re.compile(r"<script[^>]*>.*?</script>", re.S | re.I)
REMOTE_SRC = re.compile(r"<script[^>]*\ssrc\s*=\s*[\"']?(https?:)?//", re.I)

pytestmark = pytest.mark.skipif(not TEMPLATE.is_file(), reason=f"{TEMPLATE} not built; run scripts/build_plots_template.sh (needs npm)")


@pytest.fixture(scope="module")
def template() -> str:
    return TEMPLATE.read_text(encoding="utf8")


def test_template_has_dvc_render_placeholder_and_no_cdn(template):
    assert "{plot_divs}" in template
    # dvc-render fills a `{scripts}` placeholder with CDN <script src> tags: it must be absent.
    assert "{scripts}" not in template
    assert not REMOTE_SRC.search(template)
    scripts = INLINE_SCRIPT.findall(template)
    assert len(scripts) == 3, "expected vega, vega-lite and vega-embed inlined"
    assert "vegaEmbed" in scripts[2]


def test_dvc_plots_show_renders_with_inlined_libs(template, tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=env, check=True, capture_output=True)

    dvc("init", "--no-scm", "-q")
    (tmp_path / "metrics.json").write_text(json.dumps(ROWS))
    dvc(
        "plots",
        "show",
        "metrics.json",
        "-x",
        "value",
        "-y",
        "system",
        "-t",
        "bar_horizontal",
        "--html-template",
        str(TEMPLATE),
        "-o",
        "out",
    )
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf8")

    for script in INLINE_SCRIPT.findall(template):
        assert script in html, "an inlined library did not reach the rendered page intact"
    assert not REMOTE_SRC.search(html)
    assert "{plot_divs}" not in html
    assert "vegaEmbed(" in html  # the plot div's call into the inlined library
    assert "flagops-zz-marker" in html and "0.71" in html
