"""Export kiln's own small test models from PyTorch (committed under tests/models/, each well under 2 MB).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch onnx==1.19.1 onnxscript numpy
    /tmp/torchvenv/bin/python scripts/export_test_models.py

Weights are random but seeded, and BatchNorm statistics are set to realistic non-trivial values, so every
path (BN folding, activation fusion, quantization) sees the kind of numbers a trained model has. Each model
gets a small `.npy` of sample inputs beside it. Re-running reproduces the same files for the same torch.
"""
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


def export_torchscript(model, x, name, input_name, dynamic_batch=True, fold=True):
    path = OUT / f"{name}.onnx"
    axes = {input_name: {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=[input_name], output_names=["logits"],
                      dynamic_axes=axes, do_constant_folding=fold)
    return path


def main():
    OUT.mkdir(parents=True, exist_ok=True)
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
    for p in sorted(OUT.iterdir()):
        print(f"{p.name:32} {p.stat().st_size:>9} bytes")


if __name__ == "__main__":
    main()
