"""Export kiln's own small test models from PyTorch (committed under tests/models/, each well under 2 MB).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch onnx==1.19.1 onnxscript numpy scikit-learn
    /tmp/torchvenv/bin/python scripts/export_test_models.py                    # every model
    /tmp/torchvenv/bin/python scripts/export_test_models.py --only digits_se   # one group: tiny | digits_se

The `tiny` models' weights are random but seeded, and BatchNorm statistics are set to realistic non-trivial
values, so every path (BN folding, activation fusion, quantization) sees the kind of numbers a trained model
has. `digits_se` is really trained (on sklearn's digits, upsampled to 16x16) and ships calibration and
labelled validation samples, so accuracy after quantization can be checked. Each model gets a small `.npy` of
sample inputs beside it. Re-running reproduces the same files for the same torch.
"""
import argparse
import collections
import pathlib

import numpy as np
import torch
import torch.nn as nn

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "models"
torch.manual_seed(0)


def realistic_bn(m):
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


class Block(nn.Module):
    """MobileNetV2/V3-style inverted residual: expand 1x1, depthwise 3x3, project 1x1, optional SE."""

    def __init__(self, cin, cout, stride, act, se=False):
        super().__init__()
        mid = cin * 4
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), act())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, 8, 1), nn.ReLU(), nn.Conv2d(8, mid, 1), nn.Hardsigmoid()) if se else None
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.dw(self.expand(x))
        if self.se is not None:
            y = y * self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            Block(16, 16, 1, nn.ReLU6), Block(16, 24, 2, nn.Hardswish, se=True), Block(24, 24, 1, nn.Hardswish, se=True)
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1), nn.SiLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.head(self.pool(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(20, 32, batch_first=True)
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, ids):
        return self.fc(self.norm(self.layer(self.emb(ids))).mean(1))


class TinyQAT(nn.Module):
    """Fake-quantized convs (per-channel weights, per-tensor activations) as PyTorch QAT exports them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    @staticmethod
    def fq_w(w):
        scale = w.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-8) / 127.0
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -128, 127)

    @staticmethod
    def fq_a(x, scale):
        return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)

    def forward(self, x):
        x = self.fq_a(x, 1.0 / 127)
        x = torch.relu(nn.functional.conv2d(x, self.fq_w(self.c1.weight), self.c1.bias, 1, 1))
        x = self.fq_a(x, 0.05)
        x = torch.relu(nn.functional.conv2d(x, self.fq_w(self.c2.weight), self.c2.bias, 2, 1))
        x = self.fq_a(x, 0.05)
        return self.fc(x.mean((2, 3)))


class TinyMLP(nn.Module):
    """LayerNorm and both GELU forms, exported at opset 14 where they are decomposed into primitive ops."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(24, 48)
        self.norm1 = nn.LayerNorm(48)
        self.fc2 = nn.Linear(48, 48)
        self.norm2 = nn.LayerNorm(48, elementwise_affine=False)
        self.fc3 = nn.Linear(48, 5)

    def forward(self, x):
        x = nn.functional.gelu(self.norm1(self.fc1(x)), approximate="tanh")
        x = self.norm2(nn.functional.gelu(self.fc2(x)))
        return self.fc3(x)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-excite; the pooling is a plain mean so the exporters emit ReduceMean."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.reduce = nn.Conv2d(c, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, c, 1)

    def forward(self, y):
        s = y.mean((2, 3), keepdim=True)
        return y * nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(s))))


class SEBlock(nn.Module):
    """MobileNetV3 bneck: expand 1x1, depthwise 3x3, optional SE, linear project 1x1 (+ residual)."""

    def __init__(self, cin, mid, cout, stride, act, se):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), act())
        self.se = SqueezeExcite(mid, max(8, mid // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class DigitsSE(nn.Module):
    """MobileNetV3-small-like classifier for 16x16 digits: 16x16 -> 8x8 -> 4x4 -> 2x2, SE in three blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            SEBlock(16, 32, 16, 2, nn.ReLU, se=True),
            SEBlock(16, 48, 24, 2, nn.ReLU, se=False),
            SEBlock(24, 72, 24, 1, nn.Hardswish, se=True),
            SEBlock(24, 96, 32, 2, nn.Hardswish, se=True),
        )
        self.head = nn.Sequential(nn.Linear(32, 64), nn.Hardswish(), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def export_torchscript(model, x, name, input_name, dynamic_batch=True, fold=True):
    path = OUT / f"{name}.onnx"
    axes = {input_name: {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=[input_name], output_names=["logits"],
                      dynamic_axes=axes, do_constant_folding=fold)
    return path


def export_tiny():
    """The random-weight models; they share one RNG stream, so they are exported together and in this order."""
    rng = np.random.default_rng(0)
    with torch.no_grad():
        cnn = realistic_bn(TinyCNN())
        x = torch.from_numpy(rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
        export_torchscript(cnn, x[:1], "tiny_cnn", "input", fold=False)  # keeps BatchNormalization nodes
        np.save(OUT / "tiny_cnn_inputs.npy", x.numpy())
        # The same network through the dynamo exporter, weights in an external data file.
        path = OUT / "tiny_cnn_dynamo.onnx"
        prog = torch.onnx.export(cnn, (x[:1],), dynamo=True, input_names=["input"], output_names=["logits"])
        prog.save(str(path), external_data=True)

        lstm = TinyLSTM().eval()
        s = torch.from_numpy(rng.standard_normal((8, 12, 20)).astype(np.float32))
        export_torchscript(lstm, s[:1], "tiny_lstm", "features", dynamic_batch=False)
        np.save(OUT / "tiny_lstm_inputs.npy", s.numpy())

        enc = TinyEncoder().eval()
        ids = torch.from_numpy(rng.integers(0, 100, (8, 16)).astype(np.int64))
        prog = torch.onnx.export(enc, (ids[:1],), dynamo=True, input_names=["ids"], output_names=["logits"])
        prog.save(str(OUT / "tiny_encoder.onnx"))
        np.save(OUT / "tiny_encoder_inputs.npy", ids.numpy())

        mlp = TinyMLP().eval()
        with torch.no_grad():
            mlp.norm1.weight.uniform_(0.5, 1.5)
            mlp.norm1.bias.uniform_(-0.2, 0.2)
        f = torch.from_numpy(rng.standard_normal((8, 24)).astype(np.float32))
        torch.onnx.export(mlp, (f[:1],), str(OUT / "tiny_mlp_op14.onnx"), dynamo=False, opset_version=14,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        np.save(OUT / "tiny_mlp_op14_inputs.npy", f.numpy())

        qat = TinyQAT().eval()
        d = torch.from_numpy(rng.uniform(-1, 1, (8, 1, 16, 16)).astype(np.float32))
        export_torchscript(qat, d[:1], "tiny_qat", "input", fold=False)
        np.save(OUT / "tiny_qat_inputs.npy", d.numpy())


def digits_data():
    """sklearn digits (8x8, 0..16) upsampled bilinearly to 16x16 and scaled to [-1, 1]; a seeded split into
    1297 training samples and 500 held out (the first 200 for calibration, the last 300 for validation)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)[:, None])
    x = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False) / 8.0 - 1.0
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    train, held = perm[:1297], perm[1297:]
    return (x[train], y[train]), (x[held[:200]], y[held[:200]]), (x[held[200:]], y[held[200:]])


def op_histogram(model):
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def export_digits_se():
    """A MobileNetV3-style classifier with squeeze-excite, trained (about a minute on one CPU thread) and exported
    by the dynamo exporter with embedded weights and a dynamic batch."""
    import onnx

    torch.manual_seed(0)
    np.random.seed(0)
    (xt, yt), (xc, _), (xv, yv) = digits_data()
    model = DigitsSE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    epochs, batch = 40, 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(xt) // batch))
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        torch_acc = (model(xv).argmax(1) == yv).float().mean().item()
    print(f"digits_se: torch fp32 validation accuracy {torch_acc:.4f} ({len(xv)} samples), final train loss {loss.item():.4f}")
    assert torch_acc >= 0.95, torch_acc

    path = OUT / "digits_se.onnx"
    prog = torch.onnx.export(model, (xc[:2],), dynamo=True, input_names=["input"], output_names=["logits"],
                             dynamic_shapes=({0: "batch"},))
    prog.save(str(path), external_data=False)
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    hist = op_histogram(m)
    print(f"digits_se: opset {m.opset_import[0].version}, ops {hist}")
    assert hist.get("ReduceMean", 0) >= 3, hist
    assert not (OUT / "digits_se.onnx.data").exists()
    np.save(OUT / "digits_se_inputs.npy", xc.numpy())
    np.save(OUT / "digits_se_val.npy", xv.numpy())
    np.save(OUT / "digits_se_val_labels.npy", yv.numpy())
    try:
        import onnxruntime as ort
    except ImportError:
        print("digits_se: onnxruntime not installed here; ONNX accuracy not checked")
        return
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": xv.numpy()})[0]
    ort_acc = float((logits.argmax(1) == yv.numpy()).mean())
    print(f"digits_se: onnxruntime fp32 validation accuracy {ort_acc:.4f}")
    assert ort_acc == torch_acc, (ort_acc, torch_acc)


GROUPS = {"tiny": export_tiny, "digits_se": export_digits_se}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(GROUPS), help="export only this group (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, export in GROUPS.items():  # fixed order: `tiny` first, as it draws on the module-level torch seed
        if args.only is None or name in args.only:
            export()
    for p in sorted(OUT.iterdir()):
        print(f"{p.name:32} {p.stat().st_size:>9} bytes")


if __name__ == "__main__":
    main()
