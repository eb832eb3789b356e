"""report.html (issue 18): every build writes a self-contained page beside report.json; headless Chromium
opens it, sees every target's row, makes no request beyond the file itself (no failed request, no console
error), and takes a screenshot. The MobileNetV2 example config's page is the one in docs/."""
import json
import pathlib
import shutil

import pytest

from browser import Page, chromium
from kiln_oracle import CORPUS, ROOT, kiln

needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium not installed (scripts/test.sh installs it)")


def check_page(out, png):
    report = json.loads((out / "report.json").read_text())
    html = out / "report.html"
    assert html.exists()
    with Page() as page:
        page.open(html.resolve().as_uri())
        # Self-contained: the only request is the page itself; nothing failed, nothing logged an error.
        assert page.requests() == [html.resolve().as_uri()], page.requests()
        assert page.failed_requests() == [] and page.errors() == []
        rows = page.evaluate(
            "Array.from(document.querySelectorAll('#targets tr.target')).map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
        assert [r[0] for r in rows] == [s["target"] for s in report["summary"]]
        for r, s in zip(rows, report["summary"]):
            assert r[1:3] == [s["backend"], s["precision"]]
            assert r[3] == (s["artifact"] if not s["failed"] else "failed")
            acc = report["accuracy"].get(s["target"])
            if acc:
                assert r[6] == f"{acc['top1_agreement']:.3f}" and r[7] == f"{acc['mean_cosine']:.4f}"
        # Every quantized target's per-layer table, with a row per measured layer.
        tables = page.evaluate("Array.from(document.querySelectorAll('table.sqnr')).map(t => t.rows.length)")
        assert tables == [len(v) for v in report["layer_sqnr"].values()]
        page.screenshot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@needs_chromium
def test_report_html_of_the_tiny_example(tmp_path):
    out = tmp_path / "out"
    kiln("build", ROOT / "configs" / "examples" / "tiny_cnn.yaml", "--out-dir", out, "-q")
    check_page(out, tmp_path / "report.png")
    # The NPU target's partition map: one cell per op.
    report = json.loads((out / "report.json").read_text())
    placement = report["backend"]["coral"]["placement"]
    assert len(placement) == report["backend"]["coral"]["ops_total"]
    assert placement.count("N") == report["backend"]["coral"]["ops_on_npu"]
    assert (out / "report.html").read_text().count('<rect x="') == len(placement)


@needs_chromium
@pytest.mark.corpus
def test_report_html_of_the_mobilenet_v2_example(tmp_path):
    if not (CORPUS / "mobilenet_v2.onnx").exists():
        pytest.skip("corpus absent")
    out = tmp_path / "out"
    kiln("build", ROOT / "configs" / "examples" / "mobilenet_v2.yaml", "--out-dir", out, "-q")
    check_page(out, tmp_path / "report.png")
    # `profile: true`: the before/after table, measured on this host (issue 19).
    import json

    report = json.loads((out / "report.json").read_text())
    rows = {r["stage"]: r for r in report["profile"]}
    assert list(rows) == ["original", "optimized", "reference", "int8-per-channel"], rows
    assert all(r["latency_ms"] > 0 and r["runtime"] == "tract" for r in rows.values()), rows
    print("MobileNetV2 on this host:", {k: round(r["latency_ms"], 2) for k, r in rows.items()})
    assert (out / "report.html").read_text().count('class="profile"') == 4
