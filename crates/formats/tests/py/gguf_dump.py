"""Dump a GGUF file as canonical JSON using the PyPI `gguf` package's GGUFReader.

Used by crates/formats/tests/gguf_interop.rs: the Rust test builds the same JSON from r1q's reader
(or from what it wrote) and asserts equality, so every field is checked by an independent reader.

Canonical forms: integers as JSON integers, bools as JSON bools, strings as JSON strings,
FLOAT32 as "f32:<8 hex digits of the bits>", FLOAT64 as "f64:<16 hex digits>", arrays as lists
(GGUFReader flattens nested arrays, so the tests use none). Tensor shapes are GGUF `ne` order
(innermost first), exactly as stored; tensor bytes are hex.
"""
import json
import struct
import sys

import gguf
from gguf import GGUFValueType as VT


def canon(v, vtype):
    if vtype == VT.FLOAT32:
        return "f32:%08x" % struct.unpack("<I", struct.pack("<f", v))[0]
    if vtype == VT.FLOAT64:
        return "f64:%016x" % struct.unpack("<Q", struct.pack("<d", v))[0]
    if vtype == VT.BOOL:
        return bool(v)
    if vtype == VT.STRING:
        return v
    return int(v)


def dump(path):
    r = gguf.GGUFReader(path)
    kv = []
    for key, field in r.fields.items():
        if key in ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"):
            continue
        main = field.types[0]
        if main == VT.ARRAY:
            # parts: key len, key bytes, value type, element type, count, elements...
            elem = VT(int(field.parts[3][0]))
            value = [canon(x, elem) for x in field.contents()]
            kv.append([key, int(main), int(elem), value])
        else:
            kv.append([key, int(main), None, canon(field.contents(), main)])
    tensors = []
    for t in r.tensors:
        tensors.append([
            t.name,
            int(t.tensor_type),
            [int(d) for d in t.shape.tolist()],
            int(t.n_bytes),
            int(t.data_offset),
            t.data.tobytes().hex(),
        ])
    return {
        "version": int(r.fields["GGUF.version"].parts[0][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "kv": kv,
        "tensors": tensors,
    }


if __name__ == "__main__":
    json.dump(dump(sys.argv[1]), sys.stdout)
