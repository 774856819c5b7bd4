#!/usr/bin/env bash
# Run from the workspace root after `cargo build --release` and `cargo xtask real-model`.
# The issue-6 real-model table: Qwen2.5-Coder-0.5B, base = F32 dequantization of the published file;
# Q4_K_M, Q3_K_M, Q2_K, IQ4_XS each without imatrix, with r1q's imatrix, with llama-imatrix's
# (both calibrated on calibration.txt), measured with r1q verify on wiki-eval.txt.
set -euo pipefail
R=$(pwd)/target/release/r1q
P=~/.cache/r1q/peer/0.3.36/build/bin
M=~/.cache/r1q/models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
D=$(pwd)/../shared/data/text
W=${1:-target/real-model-imatrix}
mkdir -p $W && cd $W
[ -f f32.gguf ] || $R quantize --quiet --allow-requantize $M f32.gguf F32
[ -f r1q.imatrix.gguf ] || $R imatrix f32.gguf -f $D/calibration.txt -o r1q.imatrix.gguf -c 512 --chunks 10 --no-ppl --quiet
[ -f llama.imatrix.gguf ] || $P/llama-imatrix -m f32.gguf -f $D/calibration.txt -o llama.imatrix.gguf -c 512 -b 512 --chunks 10 -t 2 -ngl 0 --no-ppl > llama-imatrix.log 2>&1
Q=()
for t in Q4_K_M Q3_K_M Q2_K IQ4_XS; do
  [ -f $t.none.gguf ] || $R quantize --quiet f32.gguf $t.none.gguf $t
  [ -f $t.r1q.gguf ] || $R quantize --quiet --imatrix r1q.imatrix.gguf f32.gguf $t.r1q.gguf $t
  [ -f $t.llama.gguf ] || $R quantize --quiet --imatrix llama.imatrix.gguf f32.gguf $t.llama.gguf $t
  Q+=($t.none.gguf $t.r1q.gguf $t.llama.gguf)
done
$R verify f32.gguf "${Q[@]}" -f $D/wiki-eval.txt -c 512 --chunks 24 > table.txt 2> verify.log
cat table.txt
