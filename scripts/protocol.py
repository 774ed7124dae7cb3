"""
The tuned small-scale protocol: does Sophia-G reach AdamW's loss in about half the steps when each
optimizer is tuned on its own merits? About 90 runs of a 30M GPT: 19 minutes on two H200s.

    python data/enwiki/prepare.py
    python scripts/protocol.py               # run what is not done yet (resumes), one worker per GPU
    python scripts/protocol.py --plan        # the plan so far, and what is done
    python scripts/protocol.py --budget 540  # start no run that would not finish within 540 s
    python scripts/protocol_report.py        # heatmaps, curves, speedup and verdict (CPU is enough)

Scale (config/protocol_small.py): GPT-2 with 6 layers, 384 channels, block 512, on the 50M-token
Wikipedia corpus, 64 x 512 tokens per iteration; T = 600 iterations. Every run decays its learning rate
over its own length (cosine to lr/20 after a linear warmup of a fixed fraction of that length), and takes
its optimizer's other hyperparameters from its paper config (config/train_gpt2_small_*.py).

Phases (each starts when what it needs is done):
  tune      seed 1337, length T. AdamW: lr x warmup. Sophia-G: lr x warmup at rho 0.05, then lr x rho at
            its best warmup. Lion (AdamW's warmup) and sign momentum (Sophia-G's warmup; Sophia-G's update
            with the Hessian switched off): lr. Then, for each optimizer, while a neighbour of its best
            point along an axis (lr x2 or /2, the next warmup fraction, rho x4 or /4) is untried, try it:
            the best point ends interior to every axis, or at an axis's limit.
  final     the fresh seeds FINAL_SEEDS at the tuned settings, warmup scaled with the length: AdamW at T/2,
            T and 2T; Sophia-G at T/2 and T; Lion and sign momentum at T.
  official  AdamW at T with 6 micro-batches of 10 sequences: the gradient as the mean over micro-steps
            (ours) and as their sum (the official train_adam.py), FINAL_SEEDS.
  variant   Sophia-G at T, FINAL_SEEDS, deviations from the official algorithm: bias-corrected h; beta2 0.95.

Each run's metrics.jsonl is copied to results/tuned/<run>/ (commit them: they are the protocol's memory
across machines); a run that fails (e.g. a non-finite loss) is recorded as failed there and counts as
infinitely bad. Checkpoints stay in out-tuned/<run>/: an interrupted run resumes from its checkpoint.
"""

import argparse
import concurrent.futures
import gc
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for train.py

from metrics import read_metrics  # noqa: E402

RESULTS = os.path.join("results", "tuned")
OUT = "out-tuned"
SCALE_CONFIG = os.path.join(ROOT, "config", "protocol_small.py")
T = 600
TUNE_SEED = 1337
FINAL_SEEDS = (2001, 2002, 2003)  # never used for tuning

# The axes the tuning searches, in order, with their limits; the grids start in the middle of them.
WARMUPS = (1 / 24, 1 / 12, 1 / 4, 1 / 2, 3 / 4, 7 / 8, 1)  # fraction of the run's length (1: no decay)
RHOS = (0.003125, 0.0125, 0.05, 0.2, 0.8, 3.2)
LR_LIMITS = (1e-5, 0.1)
ADAMW_GRID = dict(lr=(5e-4, 1e-3, 2e-3), warmup=(1 / 12, 1 / 4, 1 / 2))
SOPHIA_GRID = dict(lr=(1.25e-4, 2.5e-4, 5e-4), warmup=(1 / 12, 1 / 4, 1 / 2), rho=(0.05,))
SOPHIA_RHOS = (0.05, 0.2, 0.8)  # the second grid: lr x rho at the best warmup of the first
LION_LR_FACTORS = (1 / 8, 1 / 4, 1 / 2)  # of AdamW's best lr (the Lion paper: 3-10x smaller)
SIGN_LR_FACTORS = (1 / 2, 1, 2)  # of Sophia-G's best lr
OFFICIAL = dict(total_bs=60, batch_size=10)  # 6 micro-batches, close to the 64 sequences of the other runs
VARIANTS = ({"hessian_bias_correction": True}, {"beta2": 0.95})

STARTUP_SECONDS = 15  # start-up and evaluations of a run, beside its iterations
COMPILE_SECONDS = 60  # a worker's first run of an optimizer also compiles
GUESS_SECONDS_PER_ITER = 0.03


# ----------------------------------------------------------------------------- runs

@dataclass(frozen=True)
class Run:
    phase: str
    optimizer: str
    lr: float
    warmup: float  # fraction of iters
    iters: int
    seed: int
    rho: float = None  # Sophia-G's (None: the optimizer has none)
    overrides: tuple = ()  # more config keys, as (key, value) pairs

    @property
    def warmup_iters(self):
        return round(self.warmup * self.iters)

    @property
    def name(self):
        rho = "" if self.rho is None else f"-rho{self.rho:g}"
        extra = "".join(f"-{k}={v}" for k, v in self.overrides)
        return f"{self.optimizer}-lr{self.lr:g}-wu{self.warmup_iters}{rho}-{self.iters}it-s{self.seed}{extra}"

    def train_args(self, out, resume):
        """train.py's command-line arguments for this run."""
        settings = dict(optimizer_name=self.optimizer, learning_rate=self.lr, min_lr=self.lr / 20,
                        warmup_iters=self.warmup_iters, max_iters=self.iters, lr_decay_iters=self.iters,
                        seed=self.seed, out_dir=os.path.join(out, self.name), wandb_run_name=self.name,
                        init_from="resume" if resume else "scratch", **dict(self.overrides))
        if not resume:  # a start that died before its first checkpoint left a metrics.jsonl: keep it aside
            settings["overwrite"] = True
        if self.rho is not None:
            settings["rho"] = self.rho
        from optimizers import OPTIMIZERS  # here: the planner itself needs no torch

        return [OPTIMIZERS[self.optimizer].paper_config(), SCALE_CONFIG, *(f"--{k}={v}" for k, v in settings.items())]


def tuning_run(optimizer, lr, warmup, rho=None):
    return Run("tune", optimizer, lr, warmup, T, TUNE_SEED, rho)


def grid(optimizer, lr, warmup, rho=(None,)):
    return [tuning_run(optimizer, a, w, r) for w in warmup for r in rho for a in lr]


def neighbours(run, axes):
    """The runs one step away from `run` along each axis, within the axes' limits."""
    found = []
    if "lr" in axes:
        found += [replace(run, lr=run.lr * f) for f in (0.5, 2) if LR_LIMITS[0] <= run.lr * f <= LR_LIMITS[1]]
    for axis, values in (("warmup", WARMUPS), ("rho", RHOS)):
        if axis in axes:
            i = values.index(getattr(run, axis))
            found += [replace(run, **{axis: values[j]}) for j in (i - 1, i + 1) if 0 <= j < len(values)]
    return found


def local_search(runs, losses, axes):
    """`runs` plus the neighbours needed to show that the best of them is a local optimum along `axes`:
    (all runs, best) once every run is done and no neighbour of the best is untried, else (runs so
    far, None)."""
    runs = list(runs)
    while all(r.name in losses for r in runs):
        best = min(runs, key=lambda r: losses[r.name])
        if math.isinf(losses[best.name]):  # every run failed: nothing to tune from
            return runs, None
        missing = [n for n in neighbours(best, axes) if n not in runs]
        if not missing:
            return runs, best
        runs += missing
    return runs, None


@dataclass
class Plan:
    runs: list  # in order of priority
    best: dict  # optimizer -> its tuned Run (present once its tuning is complete)


def make_plan(losses):
    """Every run the protocol needs given the final losses so far ({run name: loss}), in order of
    priority, and the tuned settings known so far."""
    best = {}
    adamw, best["adamw"] = local_search(grid("adamw", **ADAMW_GRID), losses, ("lr", "warmup"))
    sophia, best["sophiag"] = local_search(grid("sophiag", **SOPHIA_GRID), losses, ("lr", "warmup"))
    if best["sophiag"]:  # the second grid, lr x rho at the best warmup; then the search over all three axes
        lrs = sorted({r.lr for r in sophia if r.warmup == best["sophiag"].warmup})
        second = grid("sophiag", lrs, (best["sophiag"].warmup,), SOPHIA_RHOS)
        sophia, best["sophiag"] = local_search(sophia + [r for r in second if r not in sophia], losses,
                                               ("lr", "warmup", "rho"))
    runs = adamw + sophia
    if best["adamw"]:
        base = best["adamw"]
        lion, best["lion"] = local_search(grid("lion", [base.lr * f for f in LION_LR_FACTORS], (base.warmup,)),
                                          losses, ("lr",))
        runs += lion
    if best["sophiag"]:
        base = best["sophiag"]
        sign, best["signmomentum"] = local_search(
            grid("signmomentum", [base.lr * f for f in SIGN_LR_FACTORS], (base.warmup,)), losses, ("lr",))
        runs += sign
    best = {k: v for k, v in best.items() if v}

    lengths = {"adamw": (T // 2, T, 2 * T), "sophiag": (T // 2, T), "lion": (T,), "signmomentum": (T,)}
    for optimizer, tuned in best.items():
        runs += [replace(tuned, phase="final", iters=n, seed=s) for s in FINAL_SEEDS for n in lengths[optimizer]]
    if "adamw" in best:
        runs += [replace(best["adamw"], phase="official", seed=s,
                         overrides=tuple({**OFFICIAL, "grad_accumulation": how}.items()))
                 for s in FINAL_SEEDS for how in ("mean", "sum")]
    if "sophiag" in best:
        runs += [replace(best["sophiag"], phase="variant", seed=s, overrides=tuple(v.items()))
                 for v in VARIANTS for s in FINAL_SEEDS]
    return Plan(runs, best)


# ----------------------------------------------------------------------------- results

def result_dir(run):
    return os.path.join(RESULTS, run.name)


def final_loss(name):
    """A run's final val loss from results/: None while it is not done, inf if it failed."""
    folder = os.path.join(RESULTS, name)
    if os.path.exists(os.path.join(folder, "failed")):
        return math.inf
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    records = read_metrics(path)
    max_iters = [r["config"]["max_iters"] for r in records if "config" in r][-1]
    finals = [r["val/loss"] for r in records if r.get("iter") == max_iters and "val/loss" in r]
    return finals[-1] if finals else None


def known_losses():
    """{run name: final val loss} of the runs done (failed ones: inf)."""
    if not os.path.isdir(RESULTS):
        return {}
    losses = {name: final_loss(name) for name in sorted(os.listdir(RESULTS))}
    return {name: loss for name, loss in losses.items() if loss is not None}


def seconds_per_iter(optimizer):
    """The slowest median seconds per iteration of this optimizer's runs so far (or a guess)."""
    rates = []
    for name in os.listdir(RESULTS) if os.path.isdir(RESULTS) else ():
        path = os.path.join(RESULTS, name, "metrics.jsonl")
        if name.startswith(optimizer + "-") and os.path.exists(path):
            ms = sorted(r["ms_per_iter"] for r in read_metrics(path) if "ms_per_iter" in r)
            rates += [ms[len(ms) // 2] / 1000] if ms else []
    return max(rates) if rates else GUESS_SECONDS_PER_ITER


def estimate_seconds(run, compiled):
    """How long a run will take: its iterations at the optimizer's measured speed, plus start-up (and
    compilation, if this worker has not run this optimizer yet)."""
    # the official phase's 6 micro-batches of 10 took 2.4x as long per iteration on an H200
    per_iter = seconds_per_iter(run.optimizer) * (2.5 if run.phase == "official" else 1)
    return STARTUP_SECONDS + (0 if compiled else COMPILE_SECONDS) + run.iters * per_iter


# ----------------------------------------------------------------------------- running

def execute(run, deadline):
    """Train one run in this process (resuming from its checkpoint if it has one), so that later runs
    reuse the compiled graphs; a SIGTERM at the deadline makes it save and stop. Its metrics are copied
    to results/ either way, so a cut-off run leaves its log; a run that exits with an error is marked
    failed there. Returns (run, whether it completed)."""
    import torch
    import train

    resume = os.path.exists(os.path.join(OUT, run.name, "ckpt.pt"))
    print(f"== {run.name} ({run.phase}{', resuming' if resume else ''})", flush=True)
    alarm = None
    if math.isfinite(deadline):
        alarm = threading.Timer(max(1.0, deadline - time.time()), os.kill, (os.getpid(), signal.SIGTERM))
        alarm.start()
    failure = None
    try:
        train.main(run.train_args(OUT, resume))
    except SystemExit as e:
        failure = f"train.py exited with status {e.code}"
    finally:
        if alarm:
            alarm.cancel()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    folder = result_dir(run)
    os.makedirs(folder, exist_ok=True)
    metrics = os.path.join(OUT, run.name, "metrics.jsonl")
    if os.path.exists(metrics):
        shutil.copy(metrics, os.path.join(folder, "metrics.jsonl"))
    if failure:
        with open(os.path.join(folder, "failed"), "w") as f:
            f.write(failure + "\n")
        print(f"== {run.name} failed: {failure}", flush=True)
    return run, final_loss(run.name) is not None


SETTINGS = ("RESULTS", "OUT", "SCALE_CONFIG", "T")  # what a worker must share with the process that plans


def init_worker(gpus, settings):
    """A worker process uses one GPU of its own (CUDA is not initialised yet here) and the planner's
    settings."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    globals().update(settings)


def gpu_count():
    import torch
    return torch.cuda.device_count()


def run_protocol(budget, workers):
    """Run what the plan needs, `workers` runs at a time (one GPU each), highest priority first, starting
    no run that would not finish within `budget` seconds; re-plan whenever a run finishes."""
    deadline = time.time() + budget
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        gpus = context.Queue()
        for i in range(workers):
            gpus.put(i)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                                      initargs=(gpus, {k: globals()[k] for k in SETTINGS}))

    def submit(run):
        if pool:
            return pool.submit(execute, run, deadline)
        future = concurrent.futures.Future()  # one worker: this process, so that Ctrl-C reaches the run
        future.set_result(execute(run, deadline))
        return future

    started, compiled, running, stopping = set(), set(), {}, False
    try:
        while True:
            todo = [r for r in make_plan(known_losses()).runs if final_loss(r.name) is None and r.name not in started]
            while todo and len(running) < workers and not stopping:
                run = todo.pop(0)
                estimate = estimate_seconds(run, run.optimizer in compiled)
                if time.time() + estimate > deadline:
                    print(f"== not starting {run.name}: needs ~{estimate:.0f} s, {deadline - time.time():.0f} s "
                          f"left", flush=True)
                    stopping = True
                    break
                started.add(run.name)
                compiled.add(run.optimizer)
                running[submit(run)] = run
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                run, completed = future.result()  # an exception here is a bug of the protocol, not a failed run
                if not completed and final_loss(run.name) is None:  # stopped (deadline, Ctrl-C, SIGTERM)
                    stopping = True
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    plan = make_plan(known_losses())
    left = sum(final_loss(r.name) is None for r in plan.runs)
    print(f"== {len(plan.runs) - left} of the {len(plan.runs)} runs planned so far are done"
          if left else "== the protocol is complete", flush=True)


def print_plan():
    losses = known_losses()
    plan = make_plan(losses)
    for run in plan.runs:
        loss = losses.get(run.name)
        state = "to do" if loss is None else "failed" if math.isinf(loss) else f"val {loss:.4f}"
        print(f"{run.phase:8} {run.name:60} {state}")
    for optimizer, run in plan.best.items():
        print(f"tuned {optimizer}: lr {run.lr:g}, warmup {run.warmup:.4g} of the length"
              + ("" if run.rho is None else f", rho {run.rho:g}") + f" (val {losses[run.name]:.4f} at T)")


def main(argv=None):
    os.chdir(ROOT)  # train.py reads data/ and config/ relative to the repository
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds this invocation may run")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs side by side, one GPU each (default: the number of GPUs, at least 1)")
    parser.add_argument("--plan", action="store_true", help="print the plan and what is done, run nothing")
    args = parser.parse_args(argv)
    if args.plan:
        return print_plan()
    run_protocol(args.budget, args.workers or max(1, gpu_count()))


if __name__ == "__main__":
    main()
