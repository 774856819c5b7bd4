#!/usr/bin/env bash
# r1q convert against llama.cpp's own convert_hf_to_gguf.py (the peer: llama-cpp-python 0.3.36's
# vendored llama.cpp), tensor by tensor and key by key, for the three fixture families at
# f32/f16/bf16/q8_0. The fixtures carry the real R1 / R1-Distill tokenizers (../shared/data):
# convert_hf_to_gguf.py recognises a BPE pre-tokenizer only by hashing a real vocabulary's output.
# deepseek-v3 is FP8 with weight_scale_inv blocks; both converters dequantize it themselves (f32
# product of the FP8 value and its block scale), so no BF16 cast step sits in between.
#
# NOT part of CI: convert_hf_to_gguf.py needs torch, and PyPI's linux x86_64 torch is the CUDA
# build (~3 GB of wheels, 5.6 GB installed; it runs on CPU). The first run creates
# target/venv-torch for it (separate from target/venv, whose pins CI owns); TORCH_SPEC overrides
# the torch requirement (default: the newest on PyPI; 2.15.0 when this was written).
#
# Needs: `cargo xtask peer` (or just the peer sdist under ~/.cache/r1q/peer), ../shared/data.
# Run from the workspace root: xtask/scripts/compare-convert-hf-to-gguf.sh [WORKDIR]
# Prints the differences per file pair and a summary line per architecture and outtype; exit
# status 1 when anything beyond README's deliberate differences shows up.
set -euo pipefail
ROOT=$(pwd)
W=${1:-$ROOT/target/cmp-hf}
L=$(ls -d ~/.cache/r1q/peer/0.3.36/src/llama_cpp_python-*/vendor/llama.cpp)
T=$ROOT/../shared/data/tokenizers
V=$ROOT/target/venv-torch
PY="env PYTHONPATH=$L/gguf-py $V/bin/python"
OUTTYPES=${OUTTYPES:-"f32 f16 bf16 q8_0"}

if [ ! -x "$V/bin/python" ] || ! "$V/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  echo "setting up $V (torch from PyPI: ~3 GB download)"
  python3 -m venv "$V"
  "$V/bin/pip" install --quiet --upgrade pip
  # The peer's requirements/requirements-convert_*.txt, minus its CPU index (not reachable
  # everywhere) and its torch pin; gguf comes from the peer's own gguf-py via PYTHONPATH.
  "$V/bin/pip" install --quiet "${TORCH_SPEC:-torch}" 'numpy~=2.2.6' \
    'sentencepiece>=0.1.98,<0.3.0' 'transformers==4.57.6' 'protobuf>=4.21.0,<5.0.0' \
    safetensors tqdm pyyaml requests
fi
$PY -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'

cargo build --release --quiet --bin r1q
R=$ROOT/target/release/r1q
mkdir -p "$W"
summary=()
status=0
for p in deepseek-v3:deepseek-r1 qwen2:deepseek-r1-distill-qwen-7b llama:deepseek-r1-distill-llama-8b; do
  a=${p%%:*}
  rm -rf "$W/$a-hf"
  cargo xtask fixture --arch "$a" --out "$W/$a-hf" --tokenizer "$T/${p#*:}/tokenizer.json" > /dev/null
  for t in $OUTTYPES; do
    (cd "$W" && $PY "$L/convert_hf_to_gguf.py" "$a-hf" --outfile "$a.py.$t.gguf" --outtype "$t" \
      > "$a.py.$t.log" 2>&1) || { echo "convert_hf_to_gguf.py failed: $W/$a.py.$t.log"; exit 1; }
    (cd "$W" && "$R" convert "$a-hf" -o "$a.r1q.$t.gguf" --outtype "$t" --quiet > "$a.r1q.$t.log" 2>&1)
    echo "== $a $t"
    if out=$($PY "$ROOT/xtask/scripts/compare_gguf.py" "$W/$a.py.$t.gguf" "$W/$a.r1q.$t.gguf" "$a $t"); then :; else status=1; fi
    echo "$out"
    summary+=("$(echo "$out" | tail -1)")
  done
done
echo
echo "summary (convert_hf_to_gguf.py vs r1q convert):"
printf '  %s\n' "${summary[@]}"
exit $status
