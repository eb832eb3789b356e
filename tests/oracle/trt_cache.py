"""A reader of TensorRT calibration caches, written from the format (../shared/REFERENCE.md, "TensorRT
(Jetson)"): a first line `TRT-<version>-<Algorithm>` (EntropyCalibration2, MinMaxCalibration, ...), then
one line per tensor `name: <hex>`, hex the IEEE-754 bit pattern of the float32 scale (amax / 127) as 8
lowercase digits, big-endian as printed. Readers split each line at its last ': '.
"""
import re
import struct

HEADER = re.compile(r"^TRT-(\d+)-(EntropyCalibration2|EntropyCalibration|MinMaxCalibration|LegacyCalibration)$")


def version_number(version):
    """TensorRT's version integer for "major.minor[.patch]": 8601 for 8.6.1, 100300 for 10.3, 101401 for 10.14.1."""
    parts = [int(p) for p in version.split(".")] + [0]
    major, minor, patch = parts[0], parts[1], parts[2]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def parse(text):
    """(version integer, algorithm, {tensor name: scale}) of a cache's text; raises ValueError on any line
    that is not in the format."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("empty cache")
    m = HEADER.match(lines[0])
    if not m:
        raise ValueError(f"bad header {lines[0]!r}")
    scales = {}
    for ln in lines[1:]:
        name, sep, hexs = ln.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-f]{8}", hexs) or not name:
            raise ValueError(f"bad line {ln!r}")
        if name in scales:
            raise ValueError(f"tensor {name!r} twice")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexs))[0]
    return int(m.group(1)), m.group(2), scales


def write(version, scales, algorithm="EntropyCalibration2"):
    """The text of a cache with these scales (for round trips)."""
    out = [f"TRT-{version}-{algorithm}"]
    out += [f"{k}: {struct.pack('>f', v).hex()}" for k, v in scales.items()]
    return "\n".join(out) + "\n"
