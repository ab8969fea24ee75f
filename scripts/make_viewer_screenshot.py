"""Regenerate docs/_static/viewer.png and docs/_static/viewer-index.png, the viewer guide's
screenshots, from the output of ``volcam demo``.

The demo's first held-out case gets its viewer rebuilt (``volcam view``, soft-tissue
window), is opened in headless Chromium (Debian's ``chromium``, driven through its DevTools
protocol by ``tests/chromium_cdp.py``), the pointer is put on the "bright" lesion and the
page is captured; then the run's ``index.html``.

    volcam demo --output demo-output
    python scripts/make_viewer_screenshot.py demo-output/cams [docs/_static]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from chromium_cdp import Chromium  # noqa: E402

from volcam import cli  # noqa: E402


def main(argv: list[str]) -> int:
    run = Path(argv[0]) if argv else ROOT / "demo-output" / "cams"
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "_static"
    out.mkdir(parents=True, exist_ok=True)
    case = sorted(p.parent for p in run.glob("*/volcam-case.json"))[0]
    if cli.main(["view", str(run), "--window", "soft_tissue"]) != 0:
        return 1
    with Chromium(1400, 860) as browser:
        page = browser.page()
        page.goto(case / "viewer.html")
        page.evaluate("volcamViewer.ready.then(() => true)")
        peak = page.evaluate("volcamViewer.meta.layers[0].peak.voxel")
        x, y = page.evaluate(f"(() => {{ const p = volcamViewer.screenPoint('axial', {peak}); return [p.x, p.y]; }})()")
        page.mouse("mouseMoved", x + 6, y - 4)
        page.save_screenshot(out / "viewer.png")
        assert page.errors() == [], page.errors()
        index = browser.page()
        index.goto(run / "index.html")
        index.save_screenshot(out / "viewer-index.png")
    print(out / "viewer.png", out / "viewer-index.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
