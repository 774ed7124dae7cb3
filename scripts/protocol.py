"""
The small-scale protocol: does Sophia-G reach AdamW's loss in about half the steps? One GPU, ~1 hour.

    python scripts/protocol.py              # run what is not done yet, then compare
    python scripts/protocol.py --budget 540 # start no run that would not finish within 540 s
    python scripts/protocol.py --plan       # print the plan and what is done

The paper compares runs with their own schedule lengths (Sophia-G at T steps against AdamW at 2T, each
with warmup and cosine decay over its own length), so the protocol is, with T = 600 iterations of
64 x 512 tokens (19.7M tokens; 2T = 39M stays within one pass over the 50M-token corpus):
  1. sweep:  AdamW and Sophia-G at T, peak learning rate in LEARNING_RATES (factors of 2);
  2. final:  at each one's best rate (lowest final val loss): AdamW at T/2 and 2T, Sophia-G at T/2,
             and a second seed at T for both;
  3. extra:  Lion (at a quarter of AdamW's best rate, the Lion paper's advice) and Sophia-H at T;
  4. refresh: Sophia-G at T with cheaper Hessian refreshes (REFRESH_VARIANTS; see gnb_batch in
             configurator.py), against the official refresh (its two seeds at T).
Every run uses its paper config (config/train_gpt2_small_*.py) for the optimizer's hyperparameters,
then config/protocol_small.py for the scale, then min_lr = lr / 20 (the paper's schedule).

Each run's metrics.jsonl is copied to results/protocol/<run>/ (committed); checkpoints stay in
out-protocol/<run>/. A run complete in results/ is skipped; an interrupted one resumes from its
checkpoint. At the end, scripts/compare.py writes results/protocol_{sweep,main,refresh}.*.
"""

import argparse
import gc
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for train.py

import torch  # noqa: E402

import train  # noqa: E402
RESULTS = os.path.join(ROOT, "results", "protocol")
OUT = os.path.join(ROOT, "out-protocol")
T = 600
LEARNING_RATES = {  # Sophia-G's best was at the grid's low edge, so its grid goes one step lower
    "adamw": (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3),
    "sophiag": (1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3),
}
REFRESH_VARIANTS = (  # cheaper Sophia-G refreshes: the half batch (paper), and from the iteration's own batch
    {"hess_total_bs": 32, "batch_size": 32},  # (two micro-batches of 32: the same batch, in two passes)
    {"gnb_batch": "train"},
    {"gnb_batch": "train", "hess_total_bs": 32, "batch_size": 32},
)
PAPER_CONFIGS = {"adamw": "adam", "sophiag": "sophia", "lion": "lion", "sophiah": "sophiah"}
STARTUP_SECONDS = 20  # start-up and evaluations (compiled graphs are reused by later runs in the process)
GUESS_SECONDS_PER_ITER = 0.05


@dataclass
class Run:
    optimizer: str
    lr: float
    iters: int
    seed: int = 1337
    phase: str = "sweep"
    overrides: dict = field(default_factory=dict)

    @property
    def name(self):
        return f"{self.optimizer}-lr{self.lr:g}-{self.iters}it-s{self.seed}" + "".join(
            f"-{k}={v}" for k, v in self.overrides.items())

    def train_args(self, resume):
        """train.py's command-line arguments for this run."""
        config = os.path.join("config", f"train_gpt2_small_{PAPER_CONFIGS[self.optimizer]}.py")
        settings = dict(optimizer_name=self.optimizer, learning_rate=self.lr, min_lr=self.lr / 20,
                        max_iters=self.iters, lr_decay_iters=self.iters, seed=self.seed,
                        out_dir=os.path.join("out-protocol", self.name), wandb_run_name=self.name,
                        init_from="resume" if resume else "scratch", **self.overrides)
        return [config, "config/protocol_small.py", *(f"--{k}={v}" for k, v in settings.items())]


def read_records(name):
    path = os.path.join(RESULTS, name, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_val_loss(run):
    """The run's val loss at its last iteration, or None while it is not complete."""
    finals = [r["val/loss"] for r in read_records(run.name) if r.get("iter") == run.iters and "val/loss" in r]
    return finals[-1] if finals else None


def seconds_per_iter(optimizer):
    """The slowest median seconds per iteration of this optimizer's earlier runs (or a guess)."""
    rates = []
    for run_dir in glob.glob(os.path.join(RESULTS, f"{optimizer}-*")):
        ms = sorted(r["ms_per_iter"] for r in read_records(os.path.basename(run_dir)) if "ms_per_iter" in r)
        if ms:
            rates.append(ms[len(ms) // 2] / 1000)
    return max(rates) if rates else GUESS_SECONDS_PER_ITER


def best_lr(optimizer):
    done = [(final_val_loss(r), r.lr) for r in sweep() if r.optimizer == optimizer and final_val_loss(r)]
    return min(done)[1] if len(done) == len(LEARNING_RATES[optimizer]) else None


def sweep():
    return [Run(opt, lr, T) for opt, rates in LEARNING_RATES.items() for lr in rates]


def final_runs():
    """The runs after the sweep, or None while the sweep is not complete."""
    adamw, sophia = best_lr("adamw"), best_lr("sophiag")
    if adamw is None or sophia is None:
        return None
    return [
        Run("sophiag", sophia, T // 2, phase="final"),
        Run("adamw", adamw, T // 2, phase="final"),
        Run("adamw", adamw, 2 * T, phase="final"),
        Run("adamw", adamw, T, seed=1338, phase="final"),
        Run("sophiag", sophia, T, seed=1338, phase="final"),
        Run("lion", adamw / 4, T, phase="extra"),
        Run("sophiah", sophia, T, phase="extra"),
        *(Run("sophiag", sophia, T, phase="refresh", overrides=o) for o in REFRESH_VARIANTS),
    ]


def execute(run, deadline):
    """Train one run (resuming if it has a checkpoint) in this process, so that later runs reuse the
    compiled graphs; a SIGTERM at the deadline makes it save and stop. Its metrics are copied to
    results/ either way, so a cut-off run leaves its log."""
    resume = os.path.exists(os.path.join(OUT, run.name, "ckpt.pt"))
    print(f"== {run.name} ({run.phase}{', resuming' if resume else ''})", flush=True)
    alarm = None
    if deadline < float("inf"):
        alarm = threading.Timer(max(1.0, deadline - time.time()), os.kill, (os.getpid(), signal.SIGTERM))
        alarm.start()
    try:
        train.main(run.train_args(resume))
    finally:
        if alarm:
            alarm.cancel()
        gc.collect()
        torch.cuda.empty_cache()
    metrics = os.path.join(OUT, run.name, "metrics.jsonl")
    if os.path.exists(metrics):
        os.makedirs(os.path.join(RESULTS, run.name), exist_ok=True)
        shutil.copy(metrics, os.path.join(RESULTS, run.name, "metrics.jsonl"))


def compare():
    def run_dirs(runs):
        return [os.path.join(RESULTS, r.name) for r in runs if final_val_loss(r) is not None]

    finals = final_runs()
    if finals is None:
        return
    adamw = best_lr("adamw")
    main_runs = [r for r in sweep() if r.lr == best_lr(r.optimizer)] + [r for r in finals if r.phase != "refresh"]
    refresh_runs = [r for r in main_runs if r.optimizer == "adamw" or r.optimizer == "sophiag" and r.iters == T]
    refresh_runs += [r for r in finals if r.phase == "refresh"]
    for name, runs, group_by, baseline, needed_phases in (  # each written once those phases are complete
            ("protocol_sweep", sweep(), "optimizer_name,learning_rate", f"adamw learning_rate={adamw:g}", ()),
            ("protocol_main", main_runs, "optimizer_name,max_iters", f"adamw max_iters={2 * T}", ("final",)),
            ("protocol_refresh", refresh_runs, "optimizer_name,max_iters,gnb_batch,hess_total_bs",
             f"adamw max_iters={2 * T} gnb_batch=fresh hess_total_bs=0", ("final", "refresh"))):
        if not all(final_val_loss(r) for r in finals if r.phase in needed_phases):
            continue
        subprocess.run([sys.executable, "scripts/compare.py", *run_dirs(runs), "--out",
                        os.path.join("results", name), "--group_by", group_by, "--baseline", baseline],
                       cwd=ROOT, check=True)


def main():
    os.chdir(ROOT)  # train.py reads data/ and config/ relative to the repository
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds this invocation may run")
    parser.add_argument("--plan", action="store_true", help="print the plan and what is done, run nothing")
    args = parser.parse_args()
    deadline = time.time() + args.budget
    attempted = set()

    while True:
        planned = sweep() + (final_runs() or [])
        todo = [r for r in planned if final_val_loss(r) is None]
        if args.plan:
            for r in planned:
                loss = final_val_loss(r)
                print(f"{r.phase:6} {r.name:36} {'val %.4f' % loss if loss else 'to do'}")
            print("" if final_runs() else "(the final and extra runs are planned once the sweep is complete)")
            return
        if not todo:
            break
        run = todo[0]
        if run.name in attempted:  # it stopped early: out of time (it saved a checkpoint to resume from)
            print(f"== stopping: {run.name} did not finish; {len(todo)} run(s) to do", flush=True)
            break
        attempted.add(run.name)
        estimate = STARTUP_SECONDS + run.iters * seconds_per_iter(run.optimizer)
        if time.time() + estimate > deadline:
            print(f"== stopping: {run.name} needs ~{estimate:.0f} s, {deadline - time.time():.0f} s left; "
                  f"{len(todo)} run(s) to do", flush=True)
            break
        execute(run, deadline)
    compare()


if __name__ == "__main__":
    main()
