#!/usr/bin/env bash
# The README's first command: set up, make the embedded dataset, train a small GPT with Sophia-G on the
# CPU for a few minutes, then sample from it. Offline.
source "$(dirname "$0")/setup.sh"
python data/enwiki_sample/prepare.py
python train.py config/train_cpu_demo.py "$@"
python sample.py --out_dir=out-cpu-demo --prompt="The history of" --num_samples=2 --max_new_tokens=60
