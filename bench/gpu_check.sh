#!/usr/bin/env bash
# One prepared GPU session (one H100 or H200, about ten minutes): the full-size benchmark and the
# GPU tests, everything written under one output folder.
#
#     bash bench/gpu_check.sh /path/to/out          # from the repository root, with .venv/ installed
#
# Steps, each under its own time limit so that one hang cannot eat the session:
#   1. the card (nvidia-smi) and the versions;
#   2. a CUDA smoke run of bench/full_size.py (tiny widths: the GPU code paths in seconds);
#   3. bench/full_size.py on the real sizes -> <out>/full_size.json (decode loops, SFT, GRPO,
#      max batch; the issue-17 keys at the top level), with a torch.profiler trace and operator
#      table of the dynamic decode loop -> <out>/decode_profile.{json,txt};
#   4. pytest -m gpu (the decode loops on the device, each strategy's toy run) -> <out>/pytest_gpu.txt.
# Then copy <out>/full_size.json to bench/results/full_size_<card>.json to publish it.
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUT_FOLDER}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
export TOKENIZERS_PARALLELISM=false
{ nvidia-smi; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } \
    > "$OUT/card.txt" 2>&1
$PY -c "from ambinb import vocab; vocab.cached_vocab_and_merges()"  # the real vocabulary's cache, once
timeout 150 $PY bench/full_size.py --smoke --device cuda --out "$OUT/full_size_smoke.json" > "$OUT/full_size_smoke.log" 2>&1
echo "smoke: exit $?"
timeout 420 $PY bench/full_size.py --caps 5 5 150 60 90 60 --profile "$OUT/decode_profile" \
    --out "$OUT/full_size.json" > "$OUT/full_size.log" 2>&1
echo "full size: exit $?"
timeout 180 $PY -m pytest -m gpu tests/test_rollout_gpu.py tests/test_gpu.py -q -p no:cacheprovider \
    > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest -m gpu: exit $?"
$PY - "$OUT/full_size.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k in ("decode_ms_per_step", "decode_floor_ms", "rollout_tokens_per_s", "grpo_step_s", "sft_tokens_per_s",
          "sft_mfu", "peak_gib"):
    print(f"{k}: {d.get(k)}")
PY
