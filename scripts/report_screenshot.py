"""Screenshot of report.html for docs/: builds a config (default: the MobileNetV2 example) and has headless
Chromium (tests/oracle/browser.py) capture the page's first 2400 px.

    .venv/bin/python scripts/report_screenshot.py [configs/examples/mobilenet_v2.yaml] [docs/report_mobilenet_v2.png]
"""
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "oracle"))
from browser import Page  # noqa: E402

config = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "configs" / "examples" / "mobilenet_v2.yaml")
png = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs" / "report_mobilenet_v2.png")
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([str(ROOT / "target" / "release" / "kiln"), "build", str(config), "--out-dir", tmp, "-q"], check=True)
    with Page() as page:
        page.open((pathlib.Path(tmp) / "report.html").as_uri())
        assert not page.failed_requests() and not page.errors()
        page.screenshot(png, max_height=2400)
print(f"wrote {png}")
