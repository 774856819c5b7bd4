"""Write a GGUF file with the PyPI `gguf` package's GGUFWriter, then print its canonical dump.

Usage: gguf_write.py OUT.gguf [ALIGNMENT]
Covers every scalar KV type, string/int/float/bool/u64 arrays, non-ASCII strings, and tensors of
F32 (1-D to 4-D), F16, BF16, F64, I8..I64 and raw quantized bytes (Q8_0, Q4_K, IQ4_NL).
"""
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as VT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_dump import dump  # noqa: E402

out = sys.argv[1]
align = int(sys.argv[2]) if len(sys.argv) > 2 else None

w = gguf.GGUFWriter(out, arch="llama")
if align is not None:
    w.add_custom_alignment(align)
w.add_uint8("t.u8", 250)
w.add_int8("t.i8", -100)
w.add_uint16("t.u16", 65000)
w.add_int16("t.i16", -32000)
w.add_uint32("t.u32", 4_000_000_000)
w.add_int32("t.i32", -2_000_000_000)
w.add_float32("t.f32", 3.14159)
w.add_uint64("t.u64", 2**64 - 1)
w.add_int64("t.i64", -(2**63))
w.add_float64("t.f64", 2.718281828459045)
w.add_bool("t.true", True)
w.add_bool("t.false", False)
w.add_string("general.name", "Ünïcödé ✓ 模型 🚀")
w.add_array("t.strs", ["a", "", "Ġhello", "日本"])
w.add_array("t.ints", [1, -2, 3])
w.add_array("t.floats", [0.5, -1.25, 1e-7])
w.add_array("t.bools", [True, False, True])
w.add_key_value("t.u64s", [0, 2**63, 2**64 - 1], VT.ARRAY, sub_type=VT.UINT64)
w.add_key_value("t.u8s", [0, 255], VT.ARRAY, sub_type=VT.UINT8)
w.add_key_value("t.f64s", [1.5, -0.0], VT.ARRAY, sub_type=VT.FLOAT64)

rng = np.random.default_rng(1234)
w.add_tensor("f32_1d", rng.standard_normal(5).astype(np.float32))
w.add_tensor("f32_2d", rng.standard_normal((3, 7)).astype(np.float32))
w.add_tensor("f32_3d", rng.standard_normal((2, 3, 4)).astype(np.float32))
w.add_tensor("f32_4d", rng.standard_normal((2, 1, 3, 8)).astype(np.float32))
w.add_tensor("f16", rng.standard_normal((4, 9)).astype(np.float16))
w.add_tensor("bf16", rng.integers(0, 2**16, (3, 16), dtype=np.uint16), raw_dtype=T.BF16)
w.add_tensor("f64", rng.standard_normal(3).astype(np.float64))
w.add_tensor("i8", rng.integers(-128, 128, 11, dtype=np.int8))
w.add_tensor("i16", rng.integers(-(2**15), 2**15, 6, dtype=np.int16))
w.add_tensor("i32", rng.integers(-(2**31), 2**31, (2, 3), dtype=np.int32))
w.add_tensor("i64", rng.integers(-(2**62), 2**62, 2, dtype=np.int64))
w.add_tensor("q8_0", rng.integers(0, 256, (2, 34 * 2), dtype=np.uint8), raw_dtype=T.Q8_0)
w.add_tensor("q4_k", rng.integers(0, 256, (3, 144), dtype=np.uint8), raw_dtype=T.Q4_K)
w.add_tensor("iq4_nl", rng.integers(0, 256, (1, 18), dtype=np.uint8), raw_dtype=T.IQ4_NL)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

json.dump(dump(out), sys.stdout)
