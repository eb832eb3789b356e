"""TensorRT's explicit-quantization rules, checked on an ONNX file. Written from the documented rules
(TensorRT developer guide, "Explicit Quantization" and "Q/DQ layer-placement recommendations"; summarized
in ../shared/REFERENCE.md, "TensorRT (Jetson)"), not from kiln's code:

- Q/DQ are int8 with zero point 0 (no uint8, no missing zero point, which means uint8), positive finite
  constant scales; no QOperator ops (QLinearConv, ConvInteger, MatMulInteger, ...);
- weights are per-channel on the output-channel axis (Conv axis 0, ConvTranspose axis 1, Gemm axis 0 with
  transB=1 and 1 without, MatMul the last axis) or per-tensor, in [-127, 127]; activations per-tensor;
  biases stay float (no int32 DequantizeLinear);
- the activation input of every Conv/ConvTranspose/Gemm/MatMul with quantized weights comes through Q/DQ;
- a residual Add whose input is written by a weighted op (read by nothing else) has its other input
  through Q/DQ (so Conv+Add fuses);
- all Q/DQ-fed inputs of a Concat share one scale, and so do a MaxPool's Q/DQ input and the Q after it.
"""
import onnx
from onnx import numpy_helper

QOPERATOR = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def check(path):
    """The list of rule violations in the model at `path` (empty when it follows every rule)."""
    m = onnx.load(str(path))
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            inits[n.output[0]] = numpy_helper.to_array(_attr(n, "value"))
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    bad = []

    def dq_of(v):
        """The DequantizeLinear writing `v`, or None."""
        p = producer.get(v)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    def scale(node):
        return inits.get(node.input[1])

    for n in g.node:
        if n.op_type in QOPERATOR:
            bad.append(f"{n.name}: QOperator op {n.op_type}")
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or n.input[2] == "":
            bad.append(f"{n.name}: no zero point (uint8 by default)")
            continue
        z = inits.get(n.input[2])
        s = scale(n)
        if z is None or s is None:
            bad.append(f"{n.name}: scale or zero point not a constant")
            continue
        if z.dtype.name != "int8":
            if not (n.op_type == "DequantizeLinear" and z.dtype.name == "int32"):
                bad.append(f"{n.name}: zero point {z.dtype}")
        if (z != 0).any():
            bad.append(f"{n.name}: zero point not 0")
        if not ((s > 0).all() and (abs(s) < float("inf")).all()):
            bad.append(f"{n.name}: scale not positive and finite")
        x = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and x is not None:
            if x.dtype.name == "int32":
                bad.append(f"{n.name}: int32 bias (TensorRT adds float biases)")
            elif x.dtype.name != "int8":
                bad.append(f"{n.name}: weight type {x.dtype}")
            elif x.min() < -127:
                bad.append(f"{n.name}: weight value -128 (range is [-127, 127])")
        elif s.size != 1:
            bad.append(f"{n.name}: activation scale per-axis")

    for n in g.node:
        if n.op_type not in WEIGHTED:
            continue
        w = dq_of(n.input[1]) if len(n.input) > 1 else None
        if w is not None and w.input[0] in inits:
            wq = inits[w.input[0]]
            s = scale(w)
            if s.size > 1:
                axis = _attr(w, "axis", 1)
                axis = axis + wq.ndim if axis < 0 else axis
                want = {
                    "Conv": 0,
                    "ConvTranspose": 1,
                    "Gemm": 0 if _attr(n, "transB", 0) else 1,
                    "MatMul": wq.ndim - 1,
                }[n.op_type]
                if axis != want or s.size != wq.shape[want]:
                    bad.append(f"{n.name}: weight scales on axis {axis} ({s.size}), want axis {want}")
            x = dq_of(n.input[0])
            if x is None or producer.get(x.input[0]) is None or producer[x.input[0]].op_type != "QuantizeLinear":
                bad.append(f"{n.name}: activation input not through Q/DQ")
        elif n.op_type != "MatMul" and len(n.input) > 1 and n.input[1] not in inits and dq_of(n.input[1]) is None:
            pass  # a weighted op kept in float (mixed precision): no Q/DQ at all is allowed

    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        if any(i in inits for i in n.input):
            continue
        fused = [
            i
            for i in n.input
            if producer.get(i) is not None and producer[i].op_type in WEIGHTED and len(consumers.get(i, [])) == 1
        ]
        if not fused:
            continue
        others = [i for i in n.input if i not in fused] or n.input[:1]
        if len(fused) == 2:
            # Either branch may be the fused one; the other must be quantized.
            if not any(dq_of(i) is not None for i in n.input):
                bad.append(f"{n.name}: residual Add with neither input through Q/DQ")
            continue
        for i in others:
            if dq_of(i) is None:
                bad.append(f"{n.name}: residual skip input '{i}' not through Q/DQ")

    def eq(a, b):
        return a.shape == b.shape and (abs(a - b) <= 1e-12 * abs(b).max()).all()

    for n in g.node:
        if n.op_type == "Concat":
            scales = [scale(dq_of(i)) for i in n.input if dq_of(i) is not None]
            after = [scale(c) for c in consumers.get(n.output[0], []) if c.op_type == "QuantizeLinear"]
            allv = scales + after
            if scales and any(not eq(s, allv[0]) for s in allv):
                bad.append(f"{n.name}: Concat inputs/output with different scales {[float(s) for s in allv]}")
        if n.op_type == "MaxPool":
            before = dq_of(n.input[0])
            after = [scale(c) for c in consumers.get(n.output[0], []) if c.op_type == "QuantizeLinear"]
            if before is not None and any(not eq(a, scale(before)) for a in after):
                bad.append(f"{n.name}: MaxPool input and output scales differ")
    return bad


def counts(path):
    """(Q nodes, DQ nodes on activations, weighted ops) in the model: for reports."""
    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    q = sum(1 for n in m.graph.node if n.op_type == "QuantizeLinear")
    dq = sum(1 for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
    w = sum(1 for n in m.graph.node if n.op_type in WEIGHTED)
    return q, dq, w
