#!/usr/bin/env python3
"""Compare two GGUF files tensor by tensor and key by key (llama.cpp's convert_hf_to_gguf.py
output against r1q convert's): tensor names, shapes, ggml types, data bytes (with the max abs
difference of the dequantized values where bytes differ), and every metadata key's value type and
value. Differences README.md lists as deliberate are reported but tagged `(deliberate)` and do not
count as findings.

Usage: compare_gguf.py PY.gguf R1Q.gguf [LABEL]
Prints the differences and one summary line `LABEL: ...`; exit status 1 when there is a finding.
Needs gguf-py (any version that has ReaderField.contents) and numpy.
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

# Metadata differences README.md ("Compatibility with llama.cpp's converter") documents.
DELIBERATE_ONLY_R1Q = ("r1q.", "deepseek2.expert_gating_func", "deepseek2.expert_weights_scale")
DELIBERATE_DIFF = ("general.size_label", "GGUF.kv_count")


def deliberate(key: str, prefixes) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def fields(r: GGUFReader):
    out = {}
    for name, f in r.fields.items():
        types = tuple(t.name for t in f.types)
        out[name] = (types, f.contents())
    return out


def dims(t) -> list[int]:
    return [int(x) for x in t.shape]


def short(v) -> str:
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:4])
        return f"[{len(v)} items: {head}{', …' if len(v) > 4 else ''}]"
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "…"


def first_diff(a, b) -> str:
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"lengths {len(a)} vs {len(b)}"
        idx = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        i = idx[0]
        return f"{len(idx)} of {len(a)} items differ, first at [{i}]: {a[i]!r} vs {b[i]!r}"
    return f"{short(a)} vs {short(b)}"


def main() -> int:
    py_path, r1q_path = sys.argv[1], sys.argv[2]
    label = sys.argv[3] if len(sys.argv) > 3 else f"{py_path} vs {r1q_path}"
    py, rq = GGUFReader(py_path), GGUFReader(r1q_path)
    findings = 0

    # --- metadata -------------------------------------------------------------------------
    fp, fr = fields(py), fields(rq)
    n_same = n_deliberate = 0
    for k in sorted(fp.keys() - fr.keys()):
        print(f"  key only in convert_hf_to_gguf.py: {k} = {short(fp[k][1])}")
        findings += 1
    for k in sorted(fr.keys() - fp.keys()):
        tag = deliberate(k, DELIBERATE_ONLY_R1Q)
        n_deliberate += tag
        findings += not tag
        print(f"  key only in r1q{' (deliberate)' if tag else ''}: {k} = {short(fr[k][1])}")
    for k in sorted(fp.keys() & fr.keys()):
        (tp, vp), (tr, vr) = fp[k], fr[k]
        if k in ("GGUF.tensor_count",) or (tp == tr and vp == vr):
            n_same += 1
            continue
        tag = deliberate(k, DELIBERATE_DIFF)
        n_deliberate += tag
        findings += not tag
        what = f"types {tp} vs {tr}" if tp != tr else first_diff(vp, vr)
        print(f"  key differs{' (deliberate)' if tag else ''}: {k}: {what}")

    # --- tensors --------------------------------------------------------------------------
    tp_ = {t.name: t for t in py.tensors}
    tr_ = {t.name: t for t in rq.tensors}
    for n in sorted(tp_.keys() - tr_.keys()):
        print(f"  tensor only in convert_hf_to_gguf.py: {n} {dims(tp_[n])} {tp_[n].tensor_type.name}")
        findings += 1
    for n in sorted(tr_.keys() - tp_.keys()):
        print(f"  tensor only in r1q: {n} {dims(tr_[n])} {tr_[n].tensor_type.name}")
        findings += 1
    n_eq = n_diff = 0
    worst = 0.0
    for n in sorted(tp_.keys() & tr_.keys()):
        a, b = tp_[n], tr_[n]
        if dims(a) != dims(b) or a.tensor_type != b.tensor_type:
            print(f"  tensor {n}: shape/type {dims(a)} {a.tensor_type.name} vs "
                  f"{dims(b)} {b.tensor_type.name}")
            findings += 1
            n_diff += 1
            continue
        da, db = np.asarray(a.data).tobytes(), np.asarray(b.data).tobytes()
        if da == db:
            n_eq += 1
            continue
        n_diff += 1
        findings += 1
        fa = dequantize(np.asarray(a.data), a.tensor_type).astype(np.float64).ravel()
        fb = dequantize(np.asarray(b.data), b.tensor_type).astype(np.float64).ravel()
        d = np.abs(fa - fb)
        m = float(d.max()) if d.size else 0.0
        worst = max(worst, m)
        rel = m / max(float(np.abs(fa).max()), 1e-30)
        print(f"  tensor {n} {a.tensor_type.name} {dims(a)}: bytes differ; "
              f"{int((d > 0).sum())} of {d.size} values differ, max abs diff {m:.3g} "
              f"(relative to max |x| {rel:.3g})")
    order_same = [t.name for t in py.tensors] == [t.name for t in rq.tensors]
    print(f"{label}: tensors {len(tp_)} vs {len(tr_)}, {n_eq} byte-identical, {n_diff} differ "
          f"(max abs diff {worst:.3g}), order {'same' if order_same else 'differs (deliberate)'}; "
          f"keys {len(fp)} vs {len(fr)}, {n_same} equal, {n_deliberate} deliberate differences; "
          f"{findings} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
