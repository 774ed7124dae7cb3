#!/usr/bin/env bash
# The README's first command: set up, make the embedded dataset, train the same small GPT with AdamW
# and with Sophia-G on the CPU (a few minutes each), compare the two runs, and sample. Offline.
source "$(dirname "$0")/setup.sh"
python data/enwiki_sample/prepare.py
# --overwrite=True: running the demo again moves the last demo's runs into out-cpu-demo/*/overwritten-*/
python train.py config/train_gpt2_small_adam.py config/train_cpu_demo.py --out_dir=out-cpu-demo/adamw \
    --learning_rate=1e-2 --min_lr=5e-4 --overwrite=True "$@"
python train.py config/train_gpt2_small_sophia.py config/train_cpu_demo.py --out_dir=out-cpu-demo/sophiag \
    --learning_rate=3e-3 --min_lr=3e-4 --overwrite=True "$@"
python scripts/compare.py out-cpu-demo/adamw out-cpu-demo/sophiag --out out-cpu-demo/compare
echo "plot: out-cpu-demo/compare.png"
python sample.py --out_dir=out-cpu-demo/sophiag --prompt="The history of" --num_samples=2 --max_new_tokens=60
