#!/usr/bin/env bash
# The GPU checks of the scale and benchmark issues, as one call on a lent H100/H200 (no network there):
#   1. the embedded default in bf16 (GRPO + checkpoint evaluations on the GPU),
#   2. the same through `accelerate launch` with DeepSpeed ZeRO-2 (one process),
#   3. `rlvlm bench --gpu-only`: GRPO tokens/s/GPU of Qwen2.5-VL-3B/7B-sized random-weight models,
#   4. if time is left, a cold warm-start (model build + SFT) on the GPU, shortened.
# What the image lacks travels as wheels in .whl/ (see the device README); the recipe's tiny model and
# warm-start travel in .rlvlm_cache/ so step 1 measures GRPO, not the SFT. Every phase has its own time
# box and a failure does not stop the next. Results land in $OUT (at most 8 files come back).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
START=$(date +%s)
left() { echo $(( ${BUDGET_S:-520} - ($(date +%s) - START) )); }
phase() {  # phase NAME SECONDS CMD...: run CMD under a time box, log its wall time and exit status
    local name=$1 box=$2; shift 2
    local t0=$(date +%s)
    echo "=== $name (box ${box}s, $(left)s left)" | tee -a "$LOG"
    timeout "$box" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc, $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { tail -20 "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
python3 -c "
import torch, transformers, trl, datasets, accelerate, peft, deepspeed, pydantic, math_verify, rlvlm.train
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'trl', trl.__version__,
      'datasets', datasets.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__)
" 2>&1 | tail -3 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { tail -30 "$LOG"; exit 1; }

export RLVLM_CACHE=$PWD/.rlvlm_cache
phase tiny-bf16 150 python3 -m rlvlm train recipes/tiny-shapes.yaml --bf16 true --max_steps 50 --save_steps 25 \
    --output_dir /tmp/runs/tiny-bf16 --quiet
cp /tmp/runs/tiny-bf16/eval/trace.jsonl "$OUT/tiny_bf16_trace.jsonl" 2>/dev/null
cp /tmp/runs/tiny-bf16/checkpoint-50/trainer_state.json "$OUT/tiny_bf16_state.json" 2>/dev/null

phase gpu-bench 300 python3 -m rlvlm bench --gpu-only --out "$OUT/gpu_bench.json"

phase zero2 $(( $(left) > 90 ? 90 : $(left) )) python3 -m accelerate.commands.launch --config_file launch/accelerate/zero2.yaml --num_processes 1 \
    -m rlvlm train recipes/tiny-shapes.yaml --bf16 true --max_steps 4 --save_steps 2 --output_dir /tmp/runs/zero2 --quiet
cp /tmp/runs/zero2/eval/trace.jsonl "$OUT/zero2_trace.jsonl" 2>/dev/null

if [ "$(left)" -gt 60 ]; then
    export RLVLM_CACHE=/tmp/cold_cache
    phase cold-warmstart $(( $(left) - 10 )) python3 -m rlvlm train recipes/tiny-shapes.yaml --bf16 true \
        --warm_start.n_examples 3200 --warm_start.epochs 1 --max_steps 2 --save_steps 2 --output_dir /tmp/runs/cold --quiet
    cp /tmp/runs/cold/eval/trace.jsonl "$OUT/cold_trace.jsonl" 2>/dev/null
fi
grep -E "^===|rlvlm:|Error|error:|tokens/s|transformers |vllm|^qwen" "$LOG" | tail -40
