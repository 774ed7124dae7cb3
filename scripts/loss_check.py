"""
Does a fast path train the same model? Short GPT-2 small runs on enwiki, all at once on one GPU: AdamW and
Sophia-G, each with the reference output layer (output_layer='torch') on two seeds (the seed noise), a fast path
on the first seed, and compared at every evaluation.

    python scripts/loss_check.py --out results/kernels/loss_check
    python scripts/loss_check.py --variants "liger:--output_layer=liger" "fp8:--fp8=True"

Writes OUT/<optimizer>-<variant>/ (each run's metrics.jsonl), OUT/<optimizer>-<variant>.log, and OUT/loss_check.md:
the val loss at each evaluation, and each variant's largest difference from the reference against the seed noise
(the largest difference between the reference's two seeds). A variant passes when its difference is within the
seed noise.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from training.metrics import read_metrics  # noqa: E402
from training.rundir import RunDir  # noqa: E402

CONFIGS = {"adamw": "config/train_gpt2_small_adam.py", "sophiag": "config/train_gpt2_small_sophia.py"}
SHORT_RUN = ["--dataset=enwiki", "--total_bs=16", "--batch_size=16", "--max_iters=300", "--warmup_iters=30",
             "--lr_decay_iters=300", "--eval_interval=50", "--eval_iters=10", "--log_interval=10", "--overwrite=True"]
SEEDS = (1337, 1338)


def runs(variants):
    """{run name: extra arguments}: the reference on both seeds, each variant on the first."""
    reference = ["--output_layer=torch"]
    named = {f"torch-seed{seed}": reference + [f"--seed={seed}"] for seed in SEEDS}
    for variant in variants:
        name, _, args = variant.partition(":")
        named[name] = reference + args.split() + [f"--seed={SEEDS[0]}"]
    return named


def val_curve(run_dir):
    return {r["iter"]: r["val/loss"] for r in read_metrics(RunDir(run_dir).metrics) if "val/loss" in r}


def report(out, names):
    lines = []
    for optimizer in CONFIGS:
        curves = {name: val_curve(os.path.join(out, f"{optimizer}-{name}")) for name in names}
        reference, other_seed = curves[f"torch-seed{SEEDS[0]}"], curves[f"torch-seed{SEEDS[1]}"]
        iters = sorted(reference)
        noise = max(abs(reference[i] - other_seed[i]) for i in iters if i in other_seed)
        lines += [f"## {optimizer}", "", "| run | " + " | ".join(f"val @ {i}" for i in iters) + " | max diff vs "
                  f"torch-seed{SEEDS[0]} | within seed noise ({noise:.4f}) |", "|---|" + "---|" * (len(iters) + 2)]
        for name, curve in curves.items():
            diff = max(abs(curve[i] - reference[i]) for i in iters) if set(iters) <= set(curve) else float("nan")
            verdict = "" if name == f"torch-seed{SEEDS[0]}" else ("yes" if diff <= noise else "NO")
            lines.append(f"| {name} | " + " | ".join(f"{curve[i]:.4f}" if i in curve else "-" for i in iters)
                         + f" | {diff:.4f} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/kernels/loss_check")
    parser.add_argument("--variants", nargs="*", default=["liger:--output_layer=liger", "fp8:--fp8=True"],
                        help="NAME:ARGS, the train.py arguments of a fast path")
    parser.add_argument("--report_only", action="store_true", help="only summarise runs already made")
    args = parser.parse_args()
    named = runs(args.variants)
    args.out = os.path.abspath(args.out)  # the runs start in the repository
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        processes = []
        for optimizer, config in CONFIGS.items():
            for name, extra in named.items():
                run = f"{optimizer}-{name}"
                command = [sys.executable, "train.py", config, *SHORT_RUN, *extra, f"--out_dir={args.out}/{run}",
                           f"--wandb_run_name={run}"]
                with open(os.path.join(args.out, f"{run}.log"), "w") as log:  # the run keeps its own copy open
                    log.write(" ".join(command) + "\n")
                    log.flush()
                    processes.append((run, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
        failed = [run for run, process in processes if process.wait() != 0]
        if failed:
            raise SystemExit(f"error: these runs failed, see their logs in {args.out}: {', '.join(failed)}")
    text = report(args.out, named)
    print(text)
    with open(os.path.join(args.out, "loss_check.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
