"""kiln in a real build (issue 18): the summary table, progress bars only on a terminal, --quiet,
--message-format json, --target, --out-dir, the Make/Ninja depfile, device profiles relative to the config,
and the CMake module building the example project with real cmake and ninja."""
import json
import os
import pathlib
import pty
import re
import select
import shutil
import subprocess
import time

import numpy as np
import pytest
import yaml

from kiln_oracle import KILN, LOCAL_MODELS, ROOT, kiln

TARGETS = [
    {"name": "reference", "backend": "onnx", "precision": "fp32"},
    {"name": "phone-int8", "backend": "tflite", "precision": "int8"},
    {"name": "coral", "backend": "npu", "precision": "int8", "device": "edgetpu"},
]


def digits_config(project, targets=TARGETS, **extra):
    project.copy(LOCAL_MODELS / "digits_se.onnx", LOCAL_MODELS / "digits_se_inputs.npy",
                 LOCAL_MODELS / "digits_se_val.npy", LOCAL_MODELS / "digits_se_val_labels.npy")
    cfg = {
        "model": "digits_se.onnx",
        "inputs": {"input": [1, 1, 16, 16]},
        "passes": ["cleanup", "fuse"],
        "calibration": {"tensors": "digits_se_inputs.npy"},
        "validation": {"tensors": "digits_se_val.npy", "labels": "digits_se_val_labels.npy"},
        "targets": targets,
        "output": "out",
        **extra,
    }
    return project.write(cfg)


def summary_rows(stdout):
    """The table's data rows, split into cells (header, rule and trailing lines left out)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["target", "backend", "precision"])
    rows = []
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("time:", "wrote ", "up to date")):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_summary_table_at_the_end_of_every_build_and_no_bars_in_pipes(project):
    cfg = digits_config(project)
    p = kiln("build", cfg)
    rows = summary_rows(p.stdout)
    assert [r[0] for r in rows] == [t["name"] for t in TARGETS]
    manifest = json.loads((project.root / "out" / "manifest.json").read_text())
    report = json.loads((project.root / "out" / "report.json").read_text())
    for row, t in zip(rows, TARGETS):
        # The artifact named in the table exists and its size is the manifest's.
        files = {a["path"]: a["bytes"] for a in manifest["artifacts"] if a["target"] == t["name"]}
        assert row[3] in files, (row, files)
        line = next(r for r in report["summary"] if r["target"] == t["name"])
        assert line["bytes"] == files[row[3]] + files.get(row[3] + ".data", 0)
        if t["precision"] == "int8":
            # Agreement and cosine printed are the report's accuracy, measured on the validation data.
            acc = report["accuracy"][t["name"]]
            assert row[6] == f"{acc['top1_agreement']:.3f}" and row[7] == f"{acc['mean_cosine']:.4f}"
    # Pipes (this test's) get plain lines: no carriage returns, no escape sequences, no bars.
    assert "\r" not in p.stderr and "\x1b[" not in p.stderr and "[=" not in p.stderr
    # An up-to-date build prints the same table.
    again = kiln("build", cfg)
    assert "up to date" in again.stdout and summary_rows(again.stdout) == rows


def run_on_pty(args, timeout=300):
    """Run `args` with stdout and stderr on a pseudo-terminal; returns (exit status, everything printed)."""
    pid, fd = pty.fork()
    if pid == 0:
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env["TERM"] = "xterm"
        os.execve(args[0], args, env)
    out, end = b"", time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 1.0)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_progress_bars_on_a_terminal(project):
    cfg = digits_config(project)
    code, out = run_on_pty([str(KILN), "build", str(cfg)])
    assert code == 0, out
    # A bar for calibration (every calibration sample) and one for range refinement, drawn and redrawn.
    n = len(np.load(LOCAL_MODELS / "digits_se_inputs.npy"))
    assert re.search(rf"calibration +\[[=> ]+\] \d+/{n}", out), out[-2000:]
    assert re.search(r"range refinement +\[", out), out[-2000:]
    assert "\x1b[" in out
    # The table after the bars (indicatif pads its lines to the terminal's width rather than ending them).
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    table = plain[plain.index("target      backend"):]
    for t in TARGETS:
        assert re.search(rf"\n{t['name']} +{t['backend']} +{t['precision']} +{t['name']}/model\.", table), table


def test_quiet_prints_nothing_and_errors_still_show(project):
    cfg = digits_config(project)
    p = kiln("build", cfg, "--quiet")
    assert p.stdout == "" and p.stderr == ""
    assert (project.root / "out" / "manifest.json").exists()
    bad = project.write({"model": "missing.onnx", "targets": TARGETS[:1], "output": "out2"}, name="bad.yaml")
    p = kiln("build", bad, "--quiet", check=False)
    assert p.returncode == 1 and "missing.onnx" in p.stderr


def test_message_format_json_events(project):
    cfg = digits_config(project)
    p = kiln("build", cfg, "--message-format", "json")
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert all("reason" in e for e in events)
    reasons = [e["reason"] for e in events]
    assert "message" in reasons and reasons[-1] == "build-finished"
    starts = {e["stage"] for e in events if e["reason"] == "progress-start"}
    assert {"calibration", "range refinement"} <= starts, starts
    manifest = json.loads((project.root / "out" / "manifest.json").read_text())
    arts = [{k: e[k] for k in ("target", "path", "bytes", "sha256")} for e in events if e["reason"] == "artifact"]
    assert arts == [{k: a[k] for k in ("target", "path", "bytes", "sha256")} for a in manifest["artifacts"]]
    done = events[-1]
    assert done["success"] and [r["target"] for r in done["summary"]] == [t["name"] for t in TARGETS]
    assert p.stderr == ""


def test_depfile_lists_every_input_and_target_and_out_dir_select(project, tmp_path):
    profile = yaml.safe_load((ROOT / "configs" / "devices" / "edgetpu.yaml").read_text())
    (project.root / "profiles").mkdir()
    (project.root / "profiles" / "my_npu.yaml").write_text(yaml.safe_dump(profile))
    targets = TARGETS[:2] + [{"name": "mine", "backend": "npu", "precision": "int8", "device": "profiles/my_npu.yaml"}]
    cfg = digits_config(project, targets=targets)
    out, dep = tmp_path / "elsewhere" / "o", tmp_path / "o.d"
    # From another working directory: the profile is found relative to the config, as every path is.
    p = kiln("build", cfg, "--out-dir", out, "--depfile", dep, "--target", "reference", "--target", "mine",
             cwd=tmp_path)
    text = dep.read_text()
    head, deps = text.split(":", 1)
    assert pathlib.Path(head) == out / "manifest.json"
    listed = {pathlib.Path(d) for d in deps.replace("\\\n", " ").split()}
    r = project.root
    assert listed == {r / "k.yaml", r / "digits_se.onnx", r / "digits_se_inputs.npy", r / "digits_se_val.npy",
                      r / "digits_se_val_labels.npy", r / "profiles" / "my_npu.yaml"}, listed
    assert all(d.is_absolute() for d in listed)
    built = {a["target"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert built == {"reference", "mine"} and not (project.root / "out").exists()
    assert [r[0] for r in summary_rows(p.stdout)] == ["reference", "mine"]
    # Up to date: the manifest is touched (newer than its inputs again, for Make and Ninja).
    before = (out / "manifest.json").stat().st_mtime_ns
    time.sleep(0.05)
    assert "up to date" in kiln("build", cfg, "--out-dir", out, "--target", "reference", "--target", "mine").stdout
    assert (out / "manifest.json").stat().st_mtime_ns > before
    # Another subset is not "up to date"; an edited device profile rebuilds.
    assert "up to date" not in kiln("build", cfg, "--out-dir", out).stdout
    profile["name"] = "mine, edited"
    (project.root / "profiles" / "my_npu.yaml").write_text(yaml.safe_dump(profile))
    assert "up to date" not in kiln("build", cfg, "--out-dir", out).stdout
    p = kiln("build", cfg, "--target", "nope", check=False)
    assert p.returncode == 1 and "--target nope" in p.stderr and "reference, phone-int8, mine" in p.stderr


def ninja_log(build):
    """What ninja ran, from `ninja -v` output: the kiln models built."""
    return sorted(re.findall(r"kiln: building (\w+)", build.stdout))


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja")),
                    reason="cmake and ninja-build not installed (scripts/test.sh installs them)")
def test_cmake_example_rebuilds_exactly_what_changed(tmp_path):
    # The example project and what its configs read, copied so touching data leaves the checkout alone.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "cmake", src / "cmake")
    shutil.copytree(ROOT / "configs" / "examples" / "cmake", src / "configs" / "examples" / "cmake")
    shutil.copytree(LOCAL_MODELS, src / "tests" / "models")
    build = tmp_path / "build"
    run = lambda *a: subprocess.run(a, capture_output=True, text=True, timeout=600, check=True)  # noqa: E731
    run("cmake", "-S", src / "configs" / "examples" / "cmake", "-B", build, "-G", "Ninja",
        f"-DKILN_EXECUTABLE={KILN}")
    first = run("cmake", "--build", build)
    assert ninja_log(first) == ["digits_se", "tiny_cnn"], first.stdout
    for name, targets in (("tiny_cnn", {"reference", "phone-int8"}), ("digits_se", {"phone-int8"})):
        m = json.loads((build / "kiln" / name / "manifest.json").read_text())
        assert {a["target"] for a in m["artifacts"]} == targets
    nothing = run("cmake", "--build", build)
    assert "no work to do" in nothing.stdout, nothing.stdout
    time.sleep(1.1)  # past the file system's time granularity
    (src / "tests" / "models" / "digits_se_inputs.npy").touch()
    again = run("cmake", "--build", build)
    assert ninja_log(again) == ["digits_se"], again.stdout
    assert "no work to do" in run("cmake", "--build", build).stdout
    # A changed config rebuilds its model alone too.
    cfg = src / "configs" / "examples" / "cmake" / "tiny_cnn.yaml"
    cfg.write_text(cfg.read_text() + "\n# edited\n")
    assert ninja_log(run("cmake", "--build", build)) == ["tiny_cnn"]


def test_parallel_targets_write_the_same_artifacts(tmp_path):
    # Six targets of four backends: -j 1 and -j 3 (each cold: its own output folder, so its own
    # calibration) write byte-identical artifacts and the same report rows, in config order.
    cfg = ROOT / "configs" / "examples" / "tiny_cnn.yaml"
    for j in ("1", "3"):
        kiln("build", cfg, "--out-dir", tmp_path / j, "-j", j, "-q")
    a, b = (json.loads((tmp_path / j / "manifest.json").read_text()) for j in ("1", "3"))
    assert a["artifacts"] == b["artifacts"] and len(a["artifacts"]) >= 6
    ra, rb = (json.loads((tmp_path / j / "report.json").read_text()) for j in ("1", "3"))
    for key in ("quantization", "accuracy", "layer_sqnr", "backend"):
        assert ra[key] == rb[key], key
    assert [r["target"] for r in ra["summary"]] == [r["target"] for r in rb["summary"]]


def bazel_processes(out):
    """Bazel's process summary line: {'linux-sandbox': 2, 'remote cache hit': 0, ...}."""
    line = next(l for l in out.splitlines() if re.match(r"INFO: \d+ process(es)?: ", l))
    return {k.strip(): int(n) for n, k in re.findall(r"(\d+) ([a-z -]+?)(?:[,.]|$)", line.split(": ", 1)[1])}


@pytest.mark.skipif(not shutil.which("bazel"), reason="bazel not installed (scripts/test.sh installs bazel-bootstrap)")
def test_bazel_example_is_sandboxed_hermetic_and_cached(tmp_path):
    # The example workspace with its symlinks (rule, models, kiln) resolved: a workspace of its own.
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "configs" / "examples" / "bazel", ws, symlinks=False)
    cache = tmp_path / "cache"

    def bazel(output_base):
        p = subprocess.run(["bazel", "--batch", f"--output_base={tmp_path / output_base}", "build",
                            "--spawn_strategy=sandboxed", f"--disk_cache={cache}", "--symlink_prefix=/",
                            "//:all"], cwd=ws, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        return bazel_processes(p.stderr)

    first = bazel("ob1")
    assert first.get("linux-sandbox") == 2, first  # both kiln actions ran in the sandbox
    outs = {}
    for name, targets in (("digits", {"phone-int8", "coral"}), ("tiny_cnn", {"reference", "phone-int8"})):
        bin_dir = next((tmp_path / "ob1").glob("execroot/*/bazel-out/*/bin"))
        m = json.loads((bin_dir / name / "manifest.json").read_text())
        assert {a["target"] for a in m["artifacts"]} == targets
        assert (bin_dir / name / "report.html").exists()
        outs[name] = m["artifacts"]
    # The same artifacts as kiln outside Bazel: nothing of the sandbox leaks into them.
    direct = tmp_path / "direct"
    kiln("build", ws / "digits_se.yaml", "--out-dir", direct, "--target", "phone-int8", "--target", "coral", "-q")
    assert json.loads((direct / "manifest.json").read_text())["artifacts"] == outs["digits"]
    # A clean output base: every kiln action comes from the cache (same action keys: hermetic).
    again = bazel("ob2")
    assert again.get("remote cache hit", 0) + again.get("disk cache hit", 0) == 2, again
    assert "linux-sandbox" not in again, again
