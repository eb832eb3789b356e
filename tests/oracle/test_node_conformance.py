"""ONNX backend node tests round-trip through kiln's IR (see node_conformance.py for the method).

Two suites: the cases that ship inside the pinned `onnx` package (always present in the test venv) and
Debian's libonnx-testdata (when installed). At least 99% must round-trip; every other case must be listed,
with its reason, in tests/onnx_node_expectations.txt."""
import pathlib
import tempfile

import onnx
import pytest

import node_conformance as nc
from kiln_oracle import ROOT

SUITES = {
    "onnx-package": pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "node",
    "debian-libonnx-testdata": pathlib.Path(nc.DEFAULT_CASES),
}


def expectations():
    out = {}
    for line in (ROOT / "tests" / "onnx_node_expectations.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, why = line.partition(":")
            out[name.strip()] = why.strip()
    return out


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_node_cases_round_trip(suite):
    cases_dir = SUITES[suite]
    if not cases_dir.is_dir():
        pytest.skip(f"{suite}: {cases_dir} not installed")
    cases = sorted(d for d in cases_dir.iterdir() if (d / "model.onnx").exists())
    assert len(cases) > 500
    expected = expectations()
    failures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in cases:
            status, why = nc.check_case(str(c), tmp)
            if not status.startswith("pass"):
                failures[c.name] = f"{status}: {why}"
    unexpected = {k: v for k, v in failures.items() if k not in expected}
    assert not unexpected, f"{len(unexpected)} new failures: {unexpected}"
    stale = [k for k in expected if k in {c.name for c in cases} and k not in failures]
    assert not stale, f"listed in onnx_node_expectations.txt but now pass: {stale}"
    assert (len(cases) - len(failures)) / len(cases) >= 0.99
    print(f"{suite}: {len(cases) - len(failures)}/{len(cases)} round-trip")
