"""kiln's latency estimates (compiler/src/cost.rs, the `cost:` section of configs/devices/*.yaml) against
published latencies of the same models on the same devices.

    .venv/bin/python scripts/bench_cost_model.py          # estimate vs published, with the error
    .venv/bin/python scripts/bench_cost_model.py --fit    # fit a profile's efficiencies (to write into it)

Published figures (sources named in each device profile):
- pixel-3: TensorFlow Lite's hosted-models table (tensorflow/tensorflow,
  tensorflow/lite/g3doc/guide/hosted_models.md; Pixel 3, Android 10, CPU, 4 threads): MobileNetV1 at
  four widths and four resolutions, float and quantized; MobileNetV2 1.0/224 float 17.5 ms, quantized 12 ms.
- pixel-3a: XNNPACK's README (google/XNNPACK README.md, single-threaded, end2end_bench, March 2020):
  MobileNet v1 1.0X 88 ms, v2 1.0X 55 ms, v3 Small 14 ms.
- jetson-agx-xavier: torch2trt's Jetson Xavier table (NVIDIA-AI-IOT/torch2trt
  docs/benchmarks/jetson_xavier.md, commit d1e7d4c; TensorRT fp16, batch 1, ms without data transfer):
  ResNet-18 1.64, ResNet-50 3.37, MobileNetV2 1.67, SqueezeNet 1.1 1.02.

The fits use MobileNetV1 (phones) and ResNet-18/50 (Xavier), generated here with their published
architectures and random weights (latency does not depend on the weights). The check models, MobileNetV2,
MobileNetV3-small and SqueezeNet 1.1 (../shared/models), are never fitted on. Each model goes through `kiln optimize` (cleanup, fuse: the
activations fused as TFLite fuses them), then `kiln profile --device D --no-measure --json`.
"""
import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
KILN = ROOT / "target" / "release" / "kiln"
SHARED = ROOT.parent / "shared" / "models"

# (width, resolution) -> ms, Pixel 3 CPU 4 threads (hosted_models.md).
PIXEL3_V1_FP32 = {
    (0.25, 128): 1.2, (0.25, 160): 1.7, (0.25, 192): 2.4, (0.25, 224): 3.3,
    (0.5, 128): 3.0, (0.5, 160): 4.4, (0.5, 192): 6.0, (0.5, 224): 7.9,
    (0.75, 128): 5.5, (0.75, 160): 8.2, (0.75, 192): 11.0, (0.75, 224): 14.6,
    (1.0, 128): 9.0, (1.0, 160): 13.4, (1.0, 192): 18.1, (1.0, 224): 24.0,
}
PIXEL3_V1_INT8 = {
    (0.25, 128): 0.8, (0.25, 160): 1.3, (0.25, 192): 1.8, (0.25, 224): 2.3,
    (0.5, 128): 1.7, (0.5, 160): 2.6, (0.5, 192): 3.6, (0.5, 224): 4.7,
    (0.75, 128): 3.1, (0.75, 160): 4.7, (0.75, 192): 6.4, (0.75, 224): 8.5,
    (1.0, 128): 4.8, (1.0, 160): 7.3, (1.0, 192): 9.9, (1.0, 224): 13.0,
}
# Held-out checks: (device, precision, model, published ms).
CHECKS = [
    ("pixel-3", "fp32", "mobilenet_v2", 17.5),
    ("pixel-3", "int8", "mobilenet_v2", 12.0),
    ("pixel-3a", "fp32", "mobilenet_v2", 55.0),
    ("pixel-3a", "fp32", "mobilenet_v3_small", 14.0),
    ("jetson-agx-xavier", "fp16", "mobilenet_v2", 1.67),
]
FITS = {
    "pixel-3": {"fp32": {f"v1_{w}_{r}": ms for (w, r), ms in PIXEL3_V1_FP32.items()},
                "int8": {f"v1_{w}_{r}": ms for (w, r), ms in PIXEL3_V1_INT8.items()}},
    "pixel-3a": {"fp32": {"v1_1.0_224": 88.0}},
    # torch2trt's Jetson Xavier table (TensorRT fp16, batch 1, ms without data transfer).
    "jetson-agx-xavier": {"fp16": {"resnet18": 1.64, "resnet50": 3.37, "squeezenet1_1": 1.02}},
}


def mobilenet_v1(width, res, path):
    """MobileNetV1 (Howard et al. 2017): conv 3x3/2, 13 depthwise-separable blocks, global pool, fully
    connected; ReLU6 after every conv."""
    net = Net(res)
    ch = lambda c: max(8, int(c * width))
    x, cin = net.conv("input", 3, ch(32), 3, 2, act="relu6"), ch(32)
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for c, stride in blocks:
        x = net.conv(x, cin, cin, 3, stride, act="relu6", group=cin)
        x, cin = net.conv(x, cin, ch(c), 1, 1, act="relu6"), ch(c)
    net.head(x, cin, path)


class Net:
    """A tiny ONNX graph builder (random weights, BN folded into conv biases)."""

    def __init__(self, res):
        self.rng = np.random.default_rng(0)
        self.nodes, self.inits, self.n = [], [], 0
        self.res = res
        self.inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                       numpy_helper.from_array(np.array(6, np.float32), "six")]

    def name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def conv(self, x, cin, cout, k, stride, act="relu", group=1):
        name = self.name("conv")
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * 0.05).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, name + "_w"),
                       numpy_helper.from_array(np.zeros(cout, np.float32), name + "_b")]
        p = k // 2
        self.nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], group=group,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p]))
        return self.act(name, act)

    def act(self, x, act):
        if act == "relu":
            self.nodes.append(helper.make_node("Relu", [x], [x + "_relu"]))
            return x + "_relu"
        if act == "relu6":
            self.nodes.append(helper.make_node("Clip", [x, "zero", "six"], [x + "_relu6"]))
            return x + "_relu6"
        return x

    def add(self, a, b, act="relu"):
        name = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [name]))
        return self.act(name, act)

    def head(self, x, cin, path):
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
        self.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
        w = (self.rng.standard_normal((1000, cin)) * 0.05).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
        self.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
        g = helper.make_graph(self.nodes, path.stem, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, self.res, self.res])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        onnx.save(m, path)


def resnet(depth, path):
    """torchvision's ResNet-18 (basic blocks) or ResNet-50 (bottlenecks, stride on the 3x3)."""
    net = Net(224)
    x = net.conv("input", 3, 64, 7, 2)
    net.nodes.append(helper.make_node("MaxPool", [x], ["maxpool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "maxpool", 64
    blocks = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
    exp = 1 if depth == 18 else 4
    for stage, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512])):
        for b in range(n):
            stride = 2 if (b == 0 and stage > 0) else 1
            cout = width * exp
            short = net.conv(x, cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else x
            if depth == 18:
                y = net.conv(x, cin, width, 3, stride)
                y = net.conv(y, width, width, 3, 1, act=None)
            else:
                y = net.conv(x, cin, width, 1, 1)
                y = net.conv(y, width, width, 3, stride)
                y = net.conv(y, width, cout, 1, 1, act=None)
            x, cin = net.add(y, short), cout
    net.head(x, cin, path)


def layers(model, device, precision, tmp):
    """kiln's per-layer estimate of `model` (fused first) on `device`."""
    fused = tmp / (model.stem + ".fused.onnx")
    if not fused.exists():
        subprocess.run([str(KILN), "optimize", str(model), "-o", str(fused), "--passes", "cleanup,fuse"],
                       check=True, capture_output=True)
    out = tmp / f"{model.stem}.{device}.{precision}.json"
    subprocess.run([str(KILN), "profile", str(fused), "--device", device, "--precision", precision,
                    "--no-measure", "--json", str(out)], check=True, capture_output=True)
    return json.loads(out.read_text())["estimate"]


KINDS = {"conv": 0, "depthwise": 1, "fully_connected": 2}


def arrays(est):
    """A kiln estimate's layers as numpy arrays: kind index (3: other), MACs, bytes."""
    ls = est["layers"]
    return (np.array([KINDS.get(l["kind"], 3) for l in ls]), np.array([l["macs"] for l in ls], float),
            np.array([l["bytes"] for l in ls], float))


def predict(arr, peak, bw, e_conv, e_dw, e_fc, over_us):
    """The roofline of compiler/src/cost.rs, in ms."""
    kinds, macs, nbytes = arr
    eff = np.array([e_conv, e_dw, e_fc, 1.0])[kinds]
    return (np.maximum(macs / (peak * 1e9 * eff), nbytes / (bw * 1e9)).sum() + len(kinds) * over_us * 1e-6) * 1e3


def profile_yaml(device):
    import yaml
    return yaml.safe_load((ROOT / "configs" / "devices" / f"{device}.yaml").read_text())["cost"]


def fit(device, precision, models, published, tmp, ratio=None, over=None):
    """Least squares on log latency over a grid: conv efficiency, depthwise efficiency (or a fixed ratio to
    conv), per-layer overhead (or fixed). Fully connected takes the conv efficiency."""
    c = profile_yaml(device)
    peak, bw = c["precisions"][precision]["peak_gmacs"], c["bandwidth_gbs"]
    data = [(arrays(layers(models[k], device, precision, tmp)), ms) for k, ms in published.items()]
    grid = np.exp(np.linspace(math.log(0.002), math.log(1.0), 100))
    overs = np.array([over]) if over is not None else np.linspace(0, 60, 61)
    best = None
    for ec in grid:
        for ed in ([ec * ratio] if ratio is not None else grid):
            # Latency without overhead per model, then every overhead at once.
            base = np.array([predict(arr, peak, bw, ec, ed, ec, 0.0) for arr, _ in data])
            n = np.array([len(arr[0]) for arr, _ in data])
            pub = np.array([ms for _, ms in data])
            t = base[None, :] + overs[:, None] * 1e-3 * n[None, :]
            err = ((np.log(t) - np.log(pub)[None, :]) ** 2).sum(axis=1)
            i = int(err.argmin())
            if best is None or err[i] < best[0]:
                best = (float(err[i]), ec, ed, float(overs[i]))
    err, ec, ed, o = best
    rms = math.sqrt(err / len(data))
    print(f"{device} {precision}: conv {ec:.4f} depthwise {ed:.4f} fully_connected {ec:.4f} overhead_us {o:.1f}"
          f"  (rms log error on {len(data)} fit points {rms:.3f})")
    return ec, ed, o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit", action="store_true")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    models = {}
    for (w, r) in PIXEL3_V1_FP32:
        p = tmp / f"v1_{w}_{r}.onnx"
        mobilenet_v1(w, r, p)
        models[f"v1_{w}_{r}"] = p
    for depth in (18, 50):
        p = tmp / f"resnet{depth}.onnx"
        resnet(depth, p)
        models[f"resnet{depth}"] = p
    for s in ["mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1"]:
        if (SHARED / f"{s}.onnx").exists():
            models[s] = SHARED / f"{s}.onnx"
    if args.fit:
        ec, ed, o = fit("pixel-3", "fp32", models, FITS["pixel-3"]["fp32"], tmp)
        fit("pixel-3", "int8", models, FITS["pixel-3"]["int8"], tmp, over=o)
        # One published point: keep Pixel 3's depthwise/conv ratio and overhead (same core), fit the scale.
        fit("pixel-3a", "fp32", models, FITS["pixel-3a"]["fp32"], tmp, ratio=ed / ec, over=o)
        # ResNets have no depthwise convs: depthwise takes the dense convs' efficiency.
        fit("jetson-agx-xavier", "fp16", models, FITS["jetson-agx-xavier"]["fp16"], tmp, ratio=1.0)
        return
    rows = []
    for device, precs in FITS.items():
        for precision, pub in precs.items():
            for k, ms in pub.items():
                est = layers(models[k], device, precision, tmp)["total_ms"]
                rows.append(("fit", device, precision, k, ms, est))
    for device, precision, k, ms in CHECKS:
        if k not in models:
            print(f"skipped {k}: ../shared/models not found", file=sys.stderr)
            continue
        est = layers(models[k], device, precision, tmp)["total_ms"]
        rows.append(("check", device, precision, k, ms, est))
    print("| set | device | precision | model | published ms | kiln estimate ms | error |")
    print("|---|---|---|---|---|---|---|")
    for set_, device, precision, k, ms, est in rows:
        print(f"| {set_} | {device} | {precision} | {k} | {ms} | {est:.1f} | {100 * (est - ms) / ms:+.0f} % |")
    for set_ in ["fit", "check"]:
        errs = [abs(est - ms) / ms for s, _, _, _, ms, est in rows if s == set_]
        if errs:
            print(f"{set_}: mean |error| {100 * sum(errs) / len(errs):.0f} %, max {100 * max(errs):.0f} % over {len(errs)}")


if __name__ == "__main__":
    main()
