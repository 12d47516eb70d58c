#!/usr/bin/env bash
# From a fresh clone to stories in one command: prepare the data, train, evaluate, write stories.
#
#   bash run.sh                         # TinyStories from the Hugging Face hub, the recipe for this machine
#   bash run.sh --input stories.txt     # your own text instead (also --val_input held_out.txt)
#   bash run.sh --max_minutes=10        # any other flag goes to train.py
#   bash run.sh --preset=presets/X.py   # another recipe
#
# The recipe is presets/gpu.py on a CUDA GPU, presets/laptop.py elsewhere; its "# prepare:" line
# says how to make its data. A stage whose output is there already is skipped: running this again
# resumes a stopped run, and a finished run is not trained again.
set -euo pipefail
cd "$(dirname "$0")"

preset="" prepare_flags=() train_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset=*) preset="${1#*=}" ;;
    --input=* | --val_input=*) prepare_flags+=("$1") ;;
    --preset | --input | --val_input) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --preset ]; then preset="$2"; else prepare_flags+=("$1=$2"); fi; shift ;;
    *) train_flags+=("$1") ;;
  esac
  shift
done
if [ -z "$preset" ]; then
  preset=$(python -c "import torch; print('presets/gpu.py' if torch.cuda.is_available() else 'presets/laptop.py')")
fi
prepare_command=$(sed -n 's/^# prepare: //p' "$preset" 2>/dev/null || true)
if [ -z "$prepare_command" ]; then
  echo "error: $preset has no '# prepare: python prepare.py ...' line saying how to make its data" >&2
  exit 2
fi

# The folders: the preset's data_dir and out-<preset>, unless the flags name others; local text
# gets folders of its own, so that it never mixes with the hub's data or runs.
folders=$(python - "$preset" "${train_flags[@]}" "${prepare_flags[@]}" <<'EOF'
import os, sys, config, common
def folders():  # this also checks the flags: a wrong one is a one-line error now, before any work
    given, inputs = set(), [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--input=")]
    cfg = config.parse_args([a for a in sys.argv[1:] if not a.startswith(("--input=", "--val_input="))], given)
    suffix = "-" + os.path.splitext(os.path.basename(inputs[-1].rstrip("/")))[0] if inputs else ""
    print(cfg.data_dir if "data_dir" in given else cfg.data_dir + suffix,
          cfg.out_dir if "out_dir" in given else "out-" + os.path.splitext(os.path.basename(sys.argv[1]))[0] + suffix)
common.run_main(folders)
EOF
)
read -r data_dir out_dir <<< "$folders"

echo "== 1/4 data: $prepare_command --out_dir=$data_dir ${prepare_flags[*]}"
$prepare_command --out_dir="$data_dir" "${prepare_flags[@]}"  # skips a folder that already holds this data

echo "== 2/4 training: $preset into $out_dir"
resume=()
if [ -f "$out_dir/ckpt.pt" ]; then resume=(--init_from=resume); fi  # goes on, or says there is nothing left
python train.py "$preset" --data_dir="$data_dir" --out_dir="$out_dir" "${train_flags[@]}" "${resume[@]}"

echo "== 3/4 evaluation on $data_dir/validation.bin (the first million tokens)"
python eval.py --out_dir="$out_dir" --data_dir="$data_dir" --max_tokens=1000000

echo "== 4/4 three stories"
python sample.py --out_dir="$out_dir" --num_samples=3

echo "== done. The run is in $out_dir. Next:"
echo "  python sample.py --out_dir=$out_dir --prompt \"Once upon a time\"   # more stories"
# export.py writes GPT-2's block only: a modern-block run (the laptop recipe's) has no Hugging Face form
if python -c "import json, sys, export; a = json.load(open(sys.argv[1]))['model_args']
sys.exit(any(a.get(k, v) != v for k, v in export.GPT2_OPTIONS.items()))" "$out_dir/config.json"; then
  echo "  python export.py --out_dir=$out_dir --to=${out_dir}-hf              # a Hugging Face folder"
fi
