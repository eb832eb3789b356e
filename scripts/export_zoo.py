"""Export kiln's beyond-classifier test corpus (tests/models/zoo/): segmentation, detection, grouped-conv and
speech families, each at opset 17, 12 and 11, the way PyTorch users export them.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision onnx==1.19.1 onnxscript numpy pillow
    /tmp/torchvenv/bin/python scripts/export_zoo.py                 # every model
    /tmp/torchvenv/bin/python scripts/export_zoo.py --only yolo     # one family

The architectures are torchvision's own (LR-ASPP and DeepLabV3 heads on a dilated MobileNetV3-Large,
SSDLite's backbone and heads, RegNetX's grouped bottlenecks) or written here after a public design (a
YOLOv8-style detector: C2f/CSP blocks, SiLU, SPPF max-pools, nearest 2x upsampling, a DFL box head; a
streaming speech model: reflect padding, 1-D convolutions, a GRU with its state as input and output), built
narrow and fed small inputs so each file stays well under 1 MB and CI stays fast. Weights are random but seeded;
BatchNorm statistics are set to realistic values so folding and quantization see trained-like numbers. Every
model gets `<name>_inputs.npy` (8 samples along axis 0) for calibration and the tests.

The exports use PyTorch's TorchScript exporter (`dynamo=False`), which still writes opset 11 and 12 as
PyTorch 1.x and most published ONNX files do; `_op11`/`_op12` files are the same weights at those opsets.
"""
import argparse
import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenetv3, regnet
from torchvision.models.detection import ssdlite
from torchvision.models.segmentation import deeplabv3, lraspp

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "models" / "zoo"
OPSETS = (17, 12, 11)


def realistic(m):
    """Seeded BN statistics and affine parameters of trained-model magnitude; eval mode."""
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
    return m.eval()


def backbone(width):
    """torchvision's dilated MobileNetV3-Large (as its segmentation models use), narrowed."""
    return mobilenetv3.mobilenet_v3_large(width_mult=width, dilated=True, reduced_tail=True)


class Dense(nn.Module):
    """torchvision segmentation models return {"out": map}: export the map."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def seg_lraspp():
    m = lraspp._lraspp_mobilenetv3(backbone(0.25), num_classes=6)
    m.classifier.cbr[0] = nn.Conv2d(m.classifier.cbr[0].in_channels, 32, 1, bias=False)
    m.classifier.cbr[1] = nn.BatchNorm2d(32)
    m.classifier.scale[1] = nn.Conv2d(m.classifier.scale[1].in_channels, 32, 1, bias=False)
    m.classifier.high_classifier = nn.Conv2d(32, 6, 1)
    return Dense(m), (1, 3, 96, 96)


def seg_deeplabv3():
    m = deeplabv3._deeplabv3_mobilenetv3(backbone(0.25), num_classes=6, aux=False)
    cin = m.classifier[0].convs[0][0].in_channels
    # DeepLabHead with a 32-channel ASPP (torchvision's is 256 wide): atrous rates 12/24/36 and image pooling.
    m.classifier = nn.Sequential(
        deeplabv3.ASPP(cin, [12, 24, 36], out_channels=32),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 6, 1),
    )
    return Dense(m), (1, 3, 96, 96)


class SsdHeads(nn.Module):
    """SSDLite320-MobileNetV3 without its post-processing: box regression and class logits per anchor."""

    def __init__(self):
        super().__init__()
        norm = lambda c: nn.BatchNorm2d(c, eps=0.001, momentum=0.03)  # noqa: E731
        bb = mobilenetv3.mobilenet_v3_large(width_mult=0.25, reduced_tail=True, norm_layer=norm).features
        # ssdlite._mobilenet_extractor, with its extra layers narrowed like the backbone.
        c4 = [i for i, b in enumerate(bb) if getattr(b, "_is_cn", False)][-1]
        self.backbone = ssdlite.SSDLiteFeatureExtractorMobileNet(bb, c4, norm, width_mult=0.25)
        with torch.no_grad():
            chans = [f.shape[1] for f in self.backbone.eval()(torch.zeros(1, 3, 96, 96)).values()]
        self.head = ssdlite.SSDLiteHead(chans, [6] * len(chans), 5, norm)

    def forward(self, x):
        h = self.head(list(self.backbone(x).values()))
        return h["bbox_regression"], h["cls_logits"]


def det_ssdlite():
    return SsdHeads(), (1, 3, 96, 96)


def cls_regnet_x():
    params = regnet.BlockParams.from_init_params(depth=7, w_0=16, w_a=10.0, w_m=2.5, group_width=8)
    return regnet.RegNet(params, num_classes=10, stem_width=16), (1, 3, 64, 64)


class ConvBnSiLU(nn.Module):
    def __init__(self, cin, cout, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's CSP bottleneck with two convolutions: split, a chain of bottlenecks, concat everything."""

    def __init__(self, cin, cout, n=1, shortcut=True):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnSiLU(cin, 2 * self.c)
        self.cv2 = ConvBnSiLU((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin, cout, k=5):
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(cin, cin // 2), ConvBnSiLU(cin // 2 * 4, cout)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over 16 bins, expectation by a fixed 1x1 conv."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Yolo(nn.Module):
    """A YOLOv8-n-style detector at a quarter width: backbone, PAN neck, decoupled DFL head with box decoding."""

    def __init__(self, nc=4, size=96):
        super().__init__()
        w = [8, 16, 24, 32]
        self.stem = ConvBnSiLU(3, w[0], 3, 2)
        self.s1 = nn.Sequential(ConvBnSiLU(w[0], w[1], 3, 2), C2f(w[1], w[1]))
        self.s2 = nn.Sequential(ConvBnSiLU(w[1], w[2], 3, 2), C2f(w[2], w[2]))  # P3/8
        self.s3 = nn.Sequential(ConvBnSiLU(w[2], w[3], 3, 2), C2f(w[3], w[3]))  # P4/16
        self.s4 = nn.Sequential(ConvBnSiLU(w[3], w[3], 3, 2), C2f(w[3], w[3]), SPPF(w[3], w[3]))  # P5/32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(w[3] * 2, w[3], shortcut=False)
        self.n2 = C2f(w[3] + w[2], w[2], shortcut=False)
        self.d1 = ConvBnSiLU(w[2], w[2], 3, 2)
        self.n3 = C2f(w[2] + w[3], w[3], shortcut=False)
        self.d2 = ConvBnSiLU(w[3], w[3], 3, 2)
        self.n4 = C2f(w[3] * 2, w[3], shortcut=False)
        self.nc, self.reg = nc, 16
        ch = (w[2], w[3], w[3])
        c2, c3 = 16, 8
        self.box = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c2, 3), ConvBnSiLU(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg, 1)) for c in ch)
        self.cls = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c3, 3), ConvBnSiLU(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL(self.reg)
        anchors, strides = [], []
        for s in (8, 16, 32):
            n = size // s
            sy, sx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((n * n, 1), float(s)))
        self.register_buffer("anchors", torch.cat(anchors).transpose(0, 1).unsqueeze(0))
        self.register_buffer("strides", torch.cat(strides).transpose(0, 1).unsqueeze(0))

    def forward(self, x):
        x = self.stem(x)
        p3 = self.s2(self.s1(x))
        p4 = self.s3(p3)
        p5 = self.s4(p4)
        h4 = self.n1(torch.cat((self.up(p5), p4), 1))
        h3 = self.n2(torch.cat((self.up(h4), p3), 1))
        h4 = self.n3(torch.cat((self.d1(h3), h4), 1))
        h5 = self.n4(torch.cat((self.d2(h4), p5), 1))
        b = x.shape[0]
        feats = [torch.cat((self.box[i](f), self.cls[i](f)), 1).view(b, 4 * self.reg + self.nc, -1) for i, f in enumerate((h3, h4, h5))]
        y = torch.cat(feats, 2)
        box, cls = y.split((4 * self.reg, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.sigmoid()), 1)


def det_yolo():
    return Yolo(), (1, 3, 96, 96)


class Speech(nn.Module):
    """A streaming keyword-spotting / voice-activity model: log-mel frames in (reflect-padded), two 1-D
    convolutions, a GRU whose state comes in and goes out (so the app carries it across calls), per-frame
    class logits."""

    def __init__(self, mels=16, hidden=32, classes=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(mels, 24, 5), nn.BatchNorm1d(24)
        self.conv2, self.bn2 = nn.Conv1d(24, 24, 3, stride=2, padding=1), nn.BatchNorm1d(24)
        self.gru = nn.GRU(24, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x, h0):
        x = F.pad(x, (2, 2), mode="reflect")
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        y, h = self.gru(x.transpose(1, 2), h0)
        return self.fc(y), h


def speech_gru():
    return Speech(), (1, 16, 40)


MODELS = {
    "seg_lraspp": seg_lraspp,
    "seg_deeplabv3": seg_deeplabv3,
    "det_ssdlite": det_ssdlite,
    "cls_regnet_x": cls_regnet_x,
    "det_yolo": det_yolo,
    "speech_gru": speech_gru,
}


def inputs(shape, n=8):
    """Image-like samples: smooth random fields in about [-2, 2] (normalized RGB statistics)."""
    g = np.random.default_rng(7)
    lo = g.standard_normal((n, shape[1], max(shape[2] // 8, 1), max(shape[3] // 8, 1))).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(lo), size=shape[2:], mode="bilinear", align_corners=False)
    return (up.numpy() + 0.2 * g.standard_normal((n, *shape[1:]))).astype(np.float32)


def export(name):
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    model = realistic(model)
    OUT.mkdir(parents=True, exist_ok=True)
    if name == "speech_gru":
        # Frames of a smooth spectrogram-like signal, and a carried GRU state.
        g = np.random.default_rng(7)
        x = np.cumsum(g.standard_normal((8, *shape[1:])).astype(np.float32) * 0.3, axis=2)
        # h0 is [layers, batch, hidden]; samples stack along a new axis 0 like every kiln data file.
        h0 = (g.standard_normal((8, 1, model.gru.hidden_size)) * 0.5).astype(np.float32).clip(-1, 1)
        np.save(OUT / f"{name}_inputs.npy", x.astype(np.float32))
        np.save(OUT / f"{name}_state.npy", h0)
        args, in_names, names = (torch.from_numpy(x[:1]), torch.from_numpy(h0[:1])), ["frames", "h0"], ["logits", "h"]
    else:
        x = inputs(shape)
        np.save(OUT / f"{name}_inputs.npy", x)
        with torch.no_grad():
            outs = model(torch.from_numpy(x[:1]))
        n_out = len(outs) if isinstance(outs, tuple) else 1
        args, in_names, names = (torch.from_numpy(x[:1]),), ["image"], ["boxes", "scores"] if n_out == 2 else ["out"]
    for opset in OPSETS:
        path = OUT / (f"{name}.onnx" if opset == 17 else f"{name}_op{opset}.onnx")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset, input_names=in_names, output_names=names)
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=sorted(MODELS))
    a = ap.parse_args()
    for name in [a.only] if a.only else MODELS:
        export(name)


if __name__ == "__main__":
    main()
