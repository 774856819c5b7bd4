"""Independent FP8 block dequantization, for checking r1q's decoder bit for bit.

Usage: fp8_decode.py SHARD.safetensors B0 B1 OUT_DIR

Parses the safetensors header itself (8-byte little-endian length + JSON), and for every F8_E4M3
tensor NAME with a sibling NAME_scale_inv writes OUT_DIR/NAME.f32: raw little-endian float32 of
fp8(q) * scale_inv[r // B0][c // B1], the product taken in float32. The e4m3fn values are built
from the bit layout with numpy (sign, 4-bit exponent bias 7, 3-bit mantissa, subnormals, 0x7f/0xff
NaN), not with ml_dtypes or r1q's code.
"""

import json
import os
import struct
import sys

import numpy as np


def e4m3_to_f32(q: np.ndarray) -> np.ndarray:
    sign = np.where(q & 0x80, -1.0, 1.0)
    exp = ((q >> 3) & 0xF).astype(np.float64)
    man = (q & 0x7).astype(np.float64)
    subnormal = man / 8.0 * 2.0**-6
    normal = (1.0 + man / 8.0) * np.exp2(exp - 7.0)
    mag = np.where(exp == 0, subnormal, normal)
    val = sign * mag  # exact in float64; every e4m3 value is also exact in float32
    val = np.where((exp == 15) & (man == 7), np.nan, val)
    return val.astype(np.float32)


def main() -> None:
    path, b0, b1, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    base = 8 + n

    def raw(name):
        entry = header[name]
        start, end = entry["data_offsets"]
        return entry, buf[base + start : base + end]

    written = 0
    for name, entry in header.items():
        if name == "__metadata__" or entry["dtype"] != "F8_E4M3":
            continue
        scale_name = name + "_scale_inv"
        if scale_name not in header:
            continue
        rows, cols = entry["shape"]
        _, wbytes = raw(name)
        q = np.frombuffer(wbytes, dtype=np.uint8).reshape(rows, cols)
        sentry, sbytes = raw(scale_name)
        assert sentry["dtype"] == "F32", sentry
        s = np.frombuffer(sbytes, dtype="<f4").reshape(sentry["shape"])
        full = np.repeat(np.repeat(s, b0, axis=0), b1, axis=1)[:rows, :cols]
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            y = (e4m3_to_f32(q) * full).astype(np.float32)
        assert y.dtype == np.float32
        y.astype("<f4").tofile(os.path.join(out_dir, name + ".f32"))
        written += 1
    print(written)


if __name__ == "__main__":
    main()
