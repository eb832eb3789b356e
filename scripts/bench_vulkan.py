#!/usr/bin/env python3
"""kiln's Vulkan bundle against ncnn's Vulkan path on the same device, same threads, same model (issue 15).

Builds the model with kiln (`vulkan` fp32 and fp16 targets, and `tflite` fp32 for context), converts the same
ONNX with pnnx (`fp16=0`: fp32 weights) for ncnn, then times, alternating engine by engine each round after
warm-up: kiln's bundle through the kiln-vk C API (libkiln_vk.so via ctypes: set input, run, read output),
ncnn with Vulkan compute (its default options, which use fp16 storage/arithmetic where the device has them,
and forced fp32), ncnn on the CPU, and kiln's TFLite in LiteRT. Lavapipe's threads are LP_NUM_THREADS
(--threads), ncnn's and LiteRT's CPU threads the same number. Prints medians and ratios; with --json the last
line is one JSON object (kiln_ms, kiln_fp16_ms, ncnn_vulkan_ms, ncnn_vulkan_fp32_ms, ncnn_cpu_ms, tflite_ms,
runs, ...). Also: dispatches per inference against the model's op count, and the time to first result in a
fresh process with a cold Mesa shader cache (MESA_SHADER_CACHE_DISABLE=true) for both engines, and for kiln
again with its pipeline cache from the first start.

Needs: a release build (`cargo build --release --workspace`), Mesa lavapipe (or another Vulkan driver), and
in the Python environment `ncnn pnnx ai-edge-litert numpy pillow` (`pip install ncnn pnnx`).

    python scripts/bench_vulkan.py --model ../shared/models/mobilenet_v2.onnx [--runs 20] [--threads 2] [--json]
"""
import argparse
import ctypes
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILN = ROOT / "target" / "release" / "kiln"
LIB = ROOT / "target" / "release" / "libkiln_vk.so"
ICD = pathlib.Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")


class TensorInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_char_p), ("rank", ctypes.c_size_t), ("shape", ctypes.POINTER(ctypes.c_uint64)), ("elements", ctypes.c_size_t)]


class Kiln:
    """A kiln-vk session through the C API."""

    def __init__(self, bundle, cache=None):
        lib = ctypes.CDLL(str(LIB))
        lib.kiln_vk_create.restype = ctypes.c_void_p
        lib.kiln_vk_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.kiln_vk_last_error.restype = ctypes.c_char_p
        for f in ("kiln_vk_set_input", "kiln_vk_get_output"):
            getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
        lib.kiln_vk_run.argtypes = [ctypes.c_void_p]
        lib.kiln_vk_input_info.argtypes = lib.kiln_vk_output_info.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(TensorInfo)]
        lib.kiln_vk_destroy.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.s = lib.kiln_vk_create(str(bundle).encode(), str(cache).encode() if cache else None)
        if not self.s:
            raise RuntimeError(lib.kiln_vk_last_error().decode())
        info = TensorInfo()
        lib.kiln_vk_output_info(self.s, 0, ctypes.byref(info))
        import numpy as np

        self.out = np.zeros(info.elements, np.float32)

    def __call__(self, x):
        import numpy as np

        x = np.ascontiguousarray(x, np.float32)
        p = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
        if self.lib.kiln_vk_set_input(self.s, 0, p(x), x.size) or self.lib.kiln_vk_run(self.s) or self.lib.kiln_vk_get_output(self.s, 0, p(self.out), self.out.size):
            raise RuntimeError(self.lib.kiln_vk_last_error().decode())
        return self.out

    def close(self):
        self.lib.kiln_vk_destroy(self.s)


def ncnn_net(param, binf, vulkan, fp16, threads):
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = vulkan
    net.opt.num_threads = threads
    if not fp16:
        net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.load_param(str(param))
    net.load_model(str(binf))
    return net


def ncnn_run(net, x):
    import ncnn
    import numpy as np

    with net.create_extractor() as ex:
        ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])).clone())
        _, out = ex.extract("out0")
        return np.array(out).reshape(-1)


def first_result(cmd, env):
    """Seconds from process start to the first result (the command prints `FIRST <ms>` itself, or not)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr[-2000:]}")
    return (time.perf_counter() - t0) * 1e3, r.stdout + r.stderr


NCNN_FIRST = """
import sys, time, numpy as np
t0 = time.perf_counter()
import ncnn
net = ncnn.Net(); net.opt.use_vulkan_compute = True; net.opt.num_threads = int(sys.argv[3])
net.load_param(sys.argv[1]); net.load_model(sys.argv[2])
with net.create_extractor() as ex:
    ex.input("in0", ncnn.Mat(np.zeros(tuple(int(d) for d in sys.argv[4].split(",")), np.float32)).clone())
    ex.extract("out0")
print("FIRST", (time.perf_counter() - t0) * 1e3)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "mobilenet_v2.onnx"))
    ap.add_argument("--input-shape", default=None, help="e.g. 1,3,224,224 (default: the model's, batch 1)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-first-load", action="store_true", help="skip the cold-start measurements")
    args = ap.parse_args()
    os.environ["LP_NUM_THREADS"] = str(args.threads)
    if ICD.exists() and "VK_ICD_FILENAMES" not in os.environ:
        os.environ["VK_ICD_FILENAMES"] = os.environ["VK_DRIVER_FILES"] = str(ICD)
    import numpy as np
    import onnx

    model = pathlib.Path(args.model).resolve()
    m = onnx.load(str(model), load_external_data=False)
    init = {t.name for t in m.graph.initializer}
    inp = [i for i in m.graph.input if i.name not in init][0]
    shape = [int(x) for x in args.input_shape.split(",")] if args.input_shape else [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_vulkan_"))
    cfg = {"model": str(model), "inputs": {inp.name: shape}, "passes": ["cleanup", "fuse"], "output": str(work / "out"), "targets": [{"name": "vk32", "backend": "vulkan"}, {"name": "vk16", "backend": "vulkan", "precision": "fp16"}, {"name": "tfl", "backend": "tflite"}]}
    (work / "k.yaml").write_text(json.dumps(cfg))
    subprocess.run([str(KILN), "build", str(work / "k.yaml"), "-q"], check=True)
    plan = (work / "out" / "vk32" / "plan.txt").read_text().splitlines()[0]
    # pnnx writes its outputs beside the model it reads, and crashes on external data: give it a
    # single-file copy in the work folder, never the original's folder.
    onnx.save(onnx.load(str(model)), str(work / model.name))
    pnnx_bin = pathlib.Path(__import__("pnnx").EXEC_PATH)
    subprocess.run([str(pnnx_bin), str(work / model.name), f"inputshape=[{','.join(map(str, shape))}]", "fp16=0"], cwd=work, check=True, capture_output=True)
    param, binf = work / f"{model.stem}.ncnn.param", work / f"{model.stem}.ncnn.bin"

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    engines = {
        "kiln": Kiln(work / "out" / "vk32" / "model.kvk"),
        "kiln_fp16": Kiln(work / "out" / "vk16" / "model.kvk"),
    }
    nv = ncnn_net(param, binf, True, True, args.threads)
    nv32 = ncnn_net(param, binf, True, False, args.threads)
    nc = ncnn_net(param, binf, False, False, args.threads)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(work / "out" / "tfl" / "model.tflite"), num_threads=args.threads)
    it.allocate_tensors()
    tin, tout = it.get_input_details()[0], it.get_output_details()[0]
    xt = x.transpose(0, 2, 3, 1) if len(shape) == 4 and list(tin["shape"]) != shape else x

    def tfl(_):
        it.set_tensor(tin["index"], xt)
        it.invoke()
        return it.get_tensor(tout["index"])

    calls = {
        "kiln": engines["kiln"],
        "kiln_fp16": engines["kiln_fp16"],
        "ncnn_vulkan": lambda v: ncnn_run(nv, v),
        "ncnn_vulkan_fp32": lambda v: ncnn_run(nv32, v),
        "ncnn_cpu": lambda v: ncnn_run(nc, v),
        "tflite": tfl,
    }
    # Outputs agree (a benchmark of a wrong result is no benchmark).
    ref = calls["ncnn_cpu"](x).copy()
    for k in ("kiln", "kiln_fp16", "ncnn_vulkan"):
        got = calls[k](x).reshape(-1)
        cos = float(np.dot(ref, got) / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30))
        print(f"{k}: cosine against ncnn cpu {cos:.6f}", file=sys.stderr)
    for _ in range(args.warmup):
        for f in calls.values():
            f(x)
    times = {k: [] for k in calls}
    for _ in range(args.runs):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {f"{k}_ms": round(v, 3) for k, v in med.items()}
    res["runs"] = args.runs
    res["threads"] = args.threads
    res["model"] = model.name
    res["kiln_over_ncnn_vulkan"] = round(med["kiln"] / min(med["ncnn_vulkan"], med["ncnn_vulkan_fp32"]), 3)
    res["kiln_fp16_over_kiln"] = round(med["kiln_fp16"] / med["kiln"], 3)
    res["plan"] = plan
    if not args.no_first_load:
        env = dict(os.environ, MESA_SHADER_CACHE_DISABLE="true")
        cache = work / "pipelines.cache"
        xs = work / "x.npy"
        np.save(xs, x)
        kcmd = [str(KILN), "run", str(work / "out" / "vk32" / "model.kvk"), "--input", f"{inp.name}={xs}", "--output-dir", str(work / "o")]
        res["kiln_first_ms"] = round(first_result(kcmd, env)[0], 1)
        env_c = dict(env, KILN_VK_PIPELINE_CACHE=str(cache))
        first_result(kcmd, env_c)
        res["kiln_first_with_pipeline_cache_ms"] = round(first_result(kcmd, env_c)[0], 1)
        res["pipeline_cache_bytes"] = cache.stat().st_size if cache.exists() else 0
        ncmd = [sys.executable, "-c", NCNN_FIRST, str(param), str(binf), str(args.threads), ",".join(map(str, shape[1:]))]
        res["ncnn_first_ms"] = round(first_result(ncmd, env)[0], 1)
    for k, v in med.items():
        print(f"{k:<18} median {v:9.2f} ms over {args.runs}")
    print(f"kiln / ncnn vulkan (its faster setting): {res['kiln_over_ncnn_vulkan']}; kiln fp16 / fp32: {res['kiln_fp16_over_kiln']}")
    if args.json:
        print(json.dumps(res))
    for e in engines.values():
        e.close()


if __name__ == "__main__":
    main()
