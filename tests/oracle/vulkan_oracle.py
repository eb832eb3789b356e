"""Running kiln Vulkan bundles (.kvk) on Mesa's lavapipe, the CPU Vulkan driver, with the Khronos validation
layer on: `kiln run` (the kiln-vk runtime) executes every feed in one process (inputs stacked along a new
first axis) and fails on any validation error. `lavapipe()` says whether the driver and layer are installed
(scripts/test.sh installs mesa-vulkan-drivers and vulkan-validationlayers from Debian)."""
import os
import pathlib
import subprocess
import tempfile

import numpy as np

from kiln_oracle import KILN

ICD = pathlib.Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
LAYER = pathlib.Path("/usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json")
# One pipeline cache for the whole test session: every bundle uses the same few kernels.
PIPELINE_CACHE = pathlib.Path(tempfile.gettempdir()) / f"kiln-vk-tests-{os.getpid()}.cache"


def lavapipe():
    """None when lavapipe and the validation layer are installed, else why not (a skip reason)."""
    for f, pkg in ((ICD, "mesa-vulkan-drivers"), (LAYER, "vulkan-validationlayers")):
        if not f.exists():
            return f"{f} is absent (Debian package {pkg})"
    return None


def env(validation=True, threads=None):
    e = dict(os.environ)
    e["VK_DRIVER_FILES"] = str(ICD)
    e["VK_ICD_FILENAMES"] = str(ICD)
    e["KILN_VK_VALIDATION"] = "1" if validation else "0"
    e["KILN_VK_PIPELINE_CACHE"] = str(PIPELINE_CACHE)
    if threads:
        e["LP_NUM_THREADS"] = str(threads)
    return e


def vk_run(bundle, feeds, validation=True):
    """Run `bundle` (model.kvk or its folder) on each feed ({input name: array}); returns, per feed, the list
    of its outputs in the bundle's output order. Raises on any failure, validation errors included."""
    import json

    bundle = pathlib.Path(bundle)
    path = bundle / "model.kvk" if bundle.is_dir() else bundle
    raw = path.read_bytes()
    n = int.from_bytes(raw[8:16], "little")
    manifest = json.loads(raw[16 : 16 + n])
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        args = []
        for k, name in enumerate(feeds[0]):
            np.save(d / f"in_{k}.npy", np.stack([np.asarray(f[name]) for f in feeds]))
            args += ["--input", f"{name}={d / f'in_{k}.npy'}"]
        r = subprocess.run([str(KILN), "run", str(path), *args, "--output-dir", str(d / "out")], env=env(validation), capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"kiln run {path} failed ({r.returncode}):\n{r.stderr[-4000:]}")
        outs = []
        for o in manifest["outputs"]:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in o["name"])
            outs.append(np.load(d / "out" / f"{safe}.npy"))
    return [[o[i] for o in outs] for i in range(len(feeds))], r.stderr


def spirv_val(bundle):
    """spirv-val (--target-env vulkan1.1) every module of a bundle; returns its manifest."""
    import json

    raw = pathlib.Path(bundle).read_bytes()
    n = int.from_bytes(raw[8:16], "little")
    man = json.loads(raw[16 : 16 + n])
    base = (16 + n + 15) // 16 * 16
    with tempfile.TemporaryDirectory() as d:
        for mod in man["modules"]:
            spv = raw[base + mod["spirv"]["offset"] : base + mod["spirv"]["offset"] + mod["spirv"]["len"]]
            f = pathlib.Path(d) / f"{mod['name']}.spv"
            f.write_bytes(spv)
            r = subprocess.run(["spirv-val", "--target-env", "vulkan1.1", str(f)], capture_output=True, text=True)
            assert r.returncode == 0, f"{mod['name']}: {r.stderr}"
    return man
