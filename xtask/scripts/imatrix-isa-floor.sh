#!/usr/bin/env bash
# How far llama-imatrix is from ITSELF: the same llama.cpp source (the peer, llama-cpp-python
# 0.3.36) built for AVX2 (the peer `cargo xtask peer` builds) and for AVX-512 sums its f32
# activations in different orders, so its imatrices differ in the last bits — and quantizing with
# them gives identical Q4_K blocks for only ~99.2 %. This is the floor any independent imatrix
# (r1q's included) can reach against llama-imatrix's: the issue's 99.9 % is below the noise of
# llama.cpp's own builds. Needs an AVX-512 machine, cmake + ninja, `cargo build --release`,
# `cargo xtask peer` and target/venv (from `cargo xtask test`). Run from the workspace root.
set -euo pipefail
ROOT=$(pwd)
P=~/.cache/r1q/peer/0.3.36/build/bin
S=$(ls -d ~/.cache/r1q/peer/0.3.36/src/llama_cpp_python-*/vendor/llama.cpp)
B512=${B512:-$ROOT/target/peer-avx512}
R=$ROOT/target/release/r1q
PY=$ROOT/target/venv/bin/python
W=${1:-$ROOT/target/imatrix-isa-floor}
if [ ! -x "$B512/bin/llama-imatrix" ]; then
  cmake -S "$S" -B "$B512" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON \
    -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > /dev/null
  cmake --build "$B512" --target llama-imatrix > /dev/null
fi
mkdir -p "$W" && cd "$W"
head -c 20000 "$ROOT/../shared/data/text/calibration.txt" > calib.txt
for a in deepseek-v3 qwen2 llama; do
  [ -d $a-hf ] || (cd "$ROOT" && cargo xtask fixture --arch $a --out "$W/$a-hf" > /dev/null)
  [ -f $a.f32.gguf ] || $R convert $a-hf -o $a.f32.gguf --outtype f32 --quiet
  for v in avx2:$P avx512:$B512/bin; do
    "${v#*:}"/llama-imatrix -m $a.f32.gguf -f calib.txt -o $a.${v%%:*}.imatrix.gguf -c 128 -b 128 \
      --chunks 2 -t 2 -ngl 0 -ctk f32 -ctv f32 -fa off --no-ppl > $a.${v%%:*}.log 2>&1
  done
  $R imatrix $a.f32.gguf -f calib.txt -o $a.r1q.imatrix.gguf -c 128 --chunks 2 --quiet --no-ppl
  for n in avx2 avx512 r1q; do
    $P/llama-quantize --pure --imatrix $a.$n.imatrix.gguf $a.f32.gguf $a.$n.Q4_K.gguf Q4_K 2 > /dev/null 2>&1
  done
done
$PY - <<'PYEOF'
import numpy as np
from gguf import GGUFReader
def q4k(p):
    return {t.name: np.asarray(t.data).reshape(-1, 144) for t in GGUFReader(p).tensors if t.tensor_type.name == 'Q4_K'}
def sums(p):
    return {t.name: np.asarray(t.data, dtype=np.float64).ravel() for t in GGUFReader(p).tensors if t.name.endswith('.in_sum2')}
for arch in ['deepseek-v3', 'qwen2', 'llama']:
    for x, y in [('avx2', 'avx512'), ('r1q', 'avx2'), ('r1q', 'avx512')]:
        A, B = q4k(f'{arch}.{x}.Q4_K.gguf'), q4k(f'{arch}.{y}.Q4_K.gguf')
        s = sum(int((A[k] == B[k]).all(axis=1).sum()) for k in A); n = sum(A[k].shape[0] for k in A)
        a, b = sums(f'{arch}.{x}.imatrix.gguf'), sums(f'{arch}.{y}.imatrix.gguf')
        rel = max(float((np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-30)).max()) for k in a)
        print(f'{arch:12} imatrix {x:6} vs {y:6}: max rel diff {rel:.2e}; Q4_K blocks identical {s}/{n} = {100*s/n:.3f} %')
PYEOF
