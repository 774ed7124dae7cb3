#!/usr/bin/env bash
# The README's first command: set up, make the embedded dataset, train the same small GPT with AdamW
# and with Sophia-G on the CPU (a few minutes each), compare the two runs, and sample. Offline.
source "$(dirname "$0")/setup.sh"
python data/enwiki_sample/prepare.py
python train.py config/train_cpu_demo_adam.py "$@"
python train.py config/train_cpu_demo_sophia.py "$@"
python scripts/compare.py out-cpu-demo/adamw out-cpu-demo/sophiag --out out-cpu-demo/compare
echo "plot: out-cpu-demo/compare.png"
python sample.py --out_dir=out-cpu-demo/sophiag --prompt="The history of" --num_samples=2 --max_new_tokens=60
