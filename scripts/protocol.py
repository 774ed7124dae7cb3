"""
Tuned studies of the paper's question: does Sophia-G reach AdamW's loss in about half the steps when each
optimizer is tuned on its own merits? Each study is a set of runs that a planner derives from the results so
far (tuning by local search, then final runs on fresh seeds), run one per GPU, resumable.

    python data/enwiki/prepare.py
    python scripts/protocol.py [--study NAME]               # run what is not done yet (resumes)
    python scripts/protocol.py --study NAME --plan          # the plan so far, and what is done
    python scripts/protocol.py --study NAME --budget 540    # start no run that would not finish within 540 s
    python scripts/protocol.py --study NAME --budget 540 --finish-within 1500   # runs may go on in the next call
    python scripts/protocol_report.py                       # reports, claims table, figures (CPU is enough)

Every run decays its learning rate over its own length (cosine to lr/20 after a linear warmup of a fixed
fraction of that length) and takes its optimizer's other hyperparameters from its paper config
(config/train_gpt2_small_*.py). Tuning is on seed 1337 at length T: while a neighbour of an optimizer's best
point along an axis (lr x2 or /2, the next warmup fraction, rho x4 or /4) is untried, it is tried, so the best
point ends interior to every axis (or at an axis's limit).

Studies (--study):
  tuned       GPT-2 with 6 layers, 384 channels, block 512 (30M parameters; config/protocol_small.py), enwiki,
              64 x 512 tokens per iteration, T = 600. Tuning: AdamW lr x warmup; Sophia-G lr x warmup at
              rho 0.05, then lr x rho; Lion (AdamW's warmup) and sign momentum (Sophia-G's update with the
              Hessian switched off; Sophia-G's warmup): lr. Finals on seeds 2001-2003: AdamW at T/2, T, 2T,
              Sophia-G at T/2, T, Lion and sign momentum at T; the official AdamW baseline (the gradient
              summed over 6 micro-steps, against the mean); two variants of Sophia-G.
  inband      the tuned study's Hessian control where the Hessian acts: Sophia-G at its best tuning run whose
              mean win_rate is in 0.1-0.5, against sign momentum, on seeds 2001-2003, scored on the whole val
              split; also Sophia-G at its tuned rho and one rho step deeper in the band.
  bridge131k  the tuned study's model at 256 x 512 = 131k tokens per iteration: lr tuned again for AdamW,
              Sophia-G and sign momentum; finals on seeds 2101-2103 (AdamW at T/2, T, 2T, the others at T).
  gpt2small   GPT-2 small (124M; config/study_gpt2_small.py), 128 x 1024 = 131k tokens per iteration,
              T = 1000. Tuning: AdamW lr x warmup, Sophia-G lr x warmup at rho 0.05, then rho. Finals on
              seeds 3001-3003 at T: AdamW, Sophia-G, sign momentum at Sophia-G's tuned lr and warmup; then
              AdamW at T/2 or 2T by the sequential rule (docs/studies.md); Sophia-G in the win_rate band if its tuned
              rho is outside it; one pair without the attention's inverse-layer scaling; Lion last.

Each run's metrics.jsonl is copied to results/<study>/<run>/ (commit them: they are the studies' memory
across machines); a run that fails (e.g. a non-finite loss) is recorded as failed there and counts as
infinitely bad. Checkpoints stay in out-<study>/<run>/: an interrupted run resumes from its checkpoint.
"""

import argparse
import concurrent.futures
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

from training.config import load_config, paper_config  # noqa: E402
from training.metrics import read_metrics  # noqa: E402
from training.rundir import RunDir  # noqa: E402

# The axes every tuning searches, in order, with their limits.
WARMUPS = (1 / 24, 1 / 12, 1 / 4, 1 / 2, 3 / 4, 7 / 8, 1)  # fraction of the run's length (1: no decay)
RHOS = (0.003125, 0.0125, 0.05, 0.2, 0.8, 3.2)
LR_LIMITS = (1e-5, 0.1)
BAND = (0.1, 0.5)  # the mean win_rate the official README asks of a well-set rho: where the Hessian acts

# The tuned protocol's own phases
OFFICIAL = dict(total_bs=60, batch_size=10)  # 6 micro-batches, close to the 64 sequences of the other runs
VARIANTS = ({"hessian_bias_correction": True}, {"beta2": 0.95})

STARTUP_SECONDS = 15  # start-up and evaluations of a run, beside its iterations (a study may set its own)
COMPILE_SECONDS = 60  # a worker's first run of an optimizer also compiles


# ----------------------------------------------------------------------------- studies

@dataclass(frozen=True)
class Tuning:
    """Where a tuning starts: the first grids (the search widens them), and the controls' lr as factors of the
    best lr they follow (Lion AdamW's, sign momentum Sophia-G's; () leaves the control out of the tuning)."""
    adamw: dict  # lr=(...), warmup=(...)
    sophiag: dict  # lr=(...), warmup=(...), rho=(...): lr x warmup at one rho
    sophia_rhos: tuple  # the second grid: lr x rho at the best warmup of the first
    lion_factors: tuple = (1 / 8, 1 / 4, 1 / 2)  # the Lion paper: 3-10x smaller than AdamW's
    sign_factors: tuple = (1 / 2, 1, 2)


@dataclass(frozen=True)
class Study:
    """A set of runs that answers one question: their shared config, length T, seeds, and the plan that says,
    from the results so far, which runs it needs. Metrics go to results/<name>/, checkpoints to out-<name>/."""
    name: str
    scale_config: str
    T: int
    final_seeds: tuple  # never used for tuning
    planner: object  # planner(study, losses) -> Plan
    tuning: Tuning = None
    tune_seed: int = 1337
    settings: tuple = ()  # (key, value) config pairs every run of the study sets
    guess_seconds_per_iter: float = 0.03  # until its runs have measured it
    startup_seconds: float = STARTUP_SECONDS

    @property
    def results(self):
        return os.path.join("results", self.name)

    @property
    def out(self):
        return f"out-{self.name}"


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

    def train_args(self, study, resume):
        """train.py's command-line arguments for this run of `study`."""
        settings = dict(optimizer_name=self.optimizer, learning_rate=self.lr, min_lr=self.lr / 20,
                        warmup_iters=self.warmup_iters, max_iters=self.iters, lr_decay_iters=self.iters,
                        seed=self.seed, out_dir=os.path.join(study.out, self.name), wandb_run_name=self.name,
                        init_from="resume" if resume else "scratch", **dict(study.settings), **dict(self.overrides))
        if not resume:  # a start that died before its first checkpoint left a metrics.jsonl: keep it aside
            settings["overwrite"] = True
        if self.rho is not None:
            settings["rho"] = self.rho
        return [paper_config(self.optimizer), study.scale_config,
                *(f"--{k}={v}" for k, v in settings.items())]


def tuning_run(study, optimizer, lr, warmup, rho=None):
    return Run("tune", optimizer, lr, warmup, study.T, study.tune_seed, rho)


def grid(study, optimizer, lr, warmup, rho=(None,)):
    return [tuning_run(study, optimizer, a, w, r) for w in warmup for r in rho for a in lr]


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


def tune(study, losses):
    """The tuning runs of `study` (seed tune_seed, length T) so far, in order of priority, and each optimizer's
    tuned Run once its search is complete. AdamW: lr x warmup. Sophia-G: lr x warmup at one rho, then lr x rho
    at its best warmup, then the search over all three axes. Lion (AdamW's warmup) and sign momentum
    (Sophia-G's warmup): lr, from the best lr they follow."""
    grids, best = study.tuning, {}
    adamw, best["adamw"] = local_search(grid(study, "adamw", **grids.adamw), losses, ("lr", "warmup"))
    sophia, best["sophiag"] = local_search(grid(study, "sophiag", **grids.sophiag), losses, ("lr", "warmup"))
    if best["sophiag"]:
        lrs = sorted({r.lr for r in sophia if r.warmup == best["sophiag"].warmup})
        second = grid(study, "sophiag", lrs, (best["sophiag"].warmup,), grids.sophia_rhos)
        sophia, best["sophiag"] = local_search(sophia + [r for r in second if r not in sophia], losses,
                                               ("lr", "warmup", "rho"))
    runs = adamw + sophia
    for control, leader, factors in (("lion", "adamw", grids.lion_factors),
                                     ("signmomentum", "sophiag", grids.sign_factors)):
        if best[leader] and factors:
            base = best[leader]
            found, best[control] = local_search(grid(study, control, [base.lr * f for f in factors], (base.warmup,)),
                                                losses, ("lr",))
            runs += found
    return runs, {k: v for k, v in best.items() if v}


def finals(study, best, lengths, phase="final"):
    """The tuned runs on the final seeds at the given lengths ({optimizer: lengths}), warmup scaled with
    the length."""
    return [replace(best[o], phase=phase, iters=n, seed=s) for o, ns in lengths.items() if o in best
            for s in study.final_seeds for n in ns]


def tuned_plan(study, losses):
    """The tuned protocol: the tuning; final runs (AdamW at T/2, T and 2T, Sophia-G at T/2 and T, Lion and sign
    momentum at T); the official AdamW baseline (gradient mean vs sum over micro-steps); Sophia-G's variants."""
    runs, best = tune(study, losses)
    T = study.T
    runs += finals(study, best, {"adamw": (T // 2, T, 2 * T), "sophiag": (T // 2, T), "lion": (T,),
                                 "signmomentum": (T,)})
    if "adamw" in best:
        runs += [replace(best["adamw"], phase="official", seed=s,
                         overrides=tuple({**OFFICIAL, "grad_accumulation": how}.items()))
                 for s in study.final_seeds for how in ("mean", "sum")]
    if "sophiag" in best:
        runs += [replace(best["sophiag"], phase="variant", seed=s, overrides=tuple(v.items()))
                 for v in VARIANTS for s in study.final_seeds]
    return Plan(runs, best)


def in_band(study, runs, losses):
    """The run of `runs` (done, finite) with the lowest final loss among those whose mean win_rate lies in
    BAND; None if there is none."""
    inside = [r for r in runs if math.isfinite(losses.get(r.name, math.inf))
              and BAND[0] <= (mean_metric(study, r, "train/win_rate") or -1) <= BAND[1]]
    return min(inside, key=lambda r: losses[r.name], default=None)


def inband_plan(study, losses):
    """The Hessian control with the Hessian acting, on the tuned protocol's final seeds: Sophia-G at its best
    tuning run (lr, warmup, rho) whose mean win_rate is in BAND, against sign momentum as tuned, both scored on
    the whole val split. Also Sophia-G at its tuned rho (the protocol's finals, re-scored) and, one rho step up,
    deeper in the band."""
    source = make_plan(TUNED)
    band = in_band(TUNED, [r for r in source.runs if r.phase == "tune" and r.optimizer == "sophiag"],
                   known_losses(TUNED))
    if band is None or not {"sophiag", "signmomentum"} <= set(source.best):
        return Plan([], {})
    best = {"sophiag": source.best["sophiag"], "signmomentum": source.best["signmomentum"], "inband": band}
    groups = [("inband", band), ("final", best["signmomentum"]), ("final", best["sophiag"])]
    if band.rho != RHOS[-1]:
        groups.append(("deeper", replace(band, rho=RHOS[RHOS.index(band.rho) + 1])))
    runs = [replace(r, phase=phase, seed=s) for phase, r in groups for s in study.final_seeds]
    return Plan(runs, best)


def bridge_plan(study, losses):
    """The tuned protocol's model at another batch: each optimizer's lr tuned again (from the tuned protocol's
    settings, the search widening along lr; warmup and rho kept), then AdamW at T/2, T and 2T, Sophia-G and
    sign momentum at T, on the final seeds."""
    source = make_plan(TUNED).best
    runs, best = [], {}
    for optimizer in ("adamw", "sophiag", "signmomentum"):
        if optimizer in source:
            centre = replace(source[optimizer], iters=study.T, seed=study.tune_seed)
            found, best[optimizer] = local_search([replace(centre, lr=centre.lr * f) for f in (1 / 2, 1, 2)],
                                                  losses, ("lr",))
            runs += found
    best = {k: v for k, v in best.items() if v}
    T = study.T
    return Plan(runs + finals(study, best, {"adamw": (T // 2, T, 2 * T), "sophiag": (T,), "signmomentum": (T,)}),
                best)


def gpt2_small_plan(study, losses):
    """GPT-2 small. The tuning (without sign momentum); finals at T: AdamW, Sophia-G, and sign momentum at
    Sophia-G's tuned lr and warmup. Then the sequential stage, decided by the finals at T: AdamW at T/2 if
    Sophia-G's mean final loss is above AdamW's, else at 2T. If the tuned rho's mean win_rate is outside
    BAND, Sophia-G at its best tuning run inside it (the Hessian control). One pair (AdamW, Sophia-G) without
    the attention's inverse-layer scaling on the first final seed. Lion's tuning and its final at T last."""
    runs, best = tune(study, losses)
    lion, runs = [r for r in runs if r.optimizer == "lion"], [r for r in runs if r.optimizer != "lion"]
    T = study.T
    if "sophiag" in best:
        best["signmomentum"] = replace(best["sophiag"], optimizer="signmomentum", rho=None)
    runs += finals(study, best, {"adamw": (T,), "sophiag": (T,), "signmomentum": (T,)})
    at_T = {o: [losses.get(r.name) for r in finals(study, best, {o: (T,)})] for o in ("adamw", "sophiag")}
    if all(at_T.values()) and all(loss is not None for v in at_T.values() for loss in v):
        slower = sum(at_T["sophiag"]) > sum(at_T["adamw"])
        runs += finals(study, best, {"adamw": (T // 2,) if slower else (2 * T,)}, phase="sequential")
    if "sophiag" in best:
        tuning = [r for r in runs if r.phase == "tune" and r.optimizer == "sophiag"]
        band = in_band(study, tuning, losses)
        if band is not None and band != best["sophiag"]:
            best["inband"] = band
            runs += [replace(band, phase="inband", seed=s) for s in study.final_seeds]
    no_scaling = (("scale_attn_by_inverse_layer_idx", False),)
    runs += [replace(best[o], phase="noscale", seed=study.final_seeds[0], overrides=no_scaling)
             for o in ("adamw", "sophiag") if o in best]
    runs += lion
    if "lion" in best:
        runs += finals(study, best, {"lion": (T,)})
    return Plan(runs, best)


CONFIG = os.path.join(ROOT, "config")
SMALL = os.path.join(CONFIG, "protocol_small.py")
FULL_VAL = (("val_eval", "full"),)
TUNED = Study("tuned", SMALL, T=600, final_seeds=(2001, 2002, 2003), planner=tuned_plan, tuning=Tuning(
    adamw=dict(lr=(5e-4, 1e-3, 2e-3), warmup=(1 / 12, 1 / 4, 1 / 2)),
    sophiag=dict(lr=(1.25e-4, 2.5e-4, 5e-4), warmup=(1 / 12, 1 / 4, 1 / 2), rho=(0.05,)),
    sophia_rhos=(0.05, 0.2, 0.8)))
INBAND = Study("inband", SMALL, T=600, final_seeds=TUNED.final_seeds, planner=inband_plan, settings=FULL_VAL)
# 131,072 tokens per iteration: at T a run reads 78.6M tokens, 1.6 passes over the 50M-token corpus (2T: 3.1)
BRIDGE = Study("bridge131k", SMALL, T=600, final_seeds=(2101, 2102, 2103), planner=bridge_plan,
               settings=(("total_bs", 256), ("batch_size", 128), *FULL_VAL), guess_seconds_per_iter=0.09)
GPT2_SMALL = Study("gpt2small", os.path.join(CONFIG, "study_gpt2_small.py"), T=1000, final_seeds=(3001, 3002, 3003),
                   # start-up: 11 evaluations of the whole val split and a 1.5 GB checkpoint; call 30's cold run
                   # took 415 s for 279 s of training, against an estimate of ~355 s with 15 s
                   planner=gpt2_small_plan, guess_seconds_per_iter=0.3, startup_seconds=60, tuning=Tuning(
                       adamw=dict(lr=(7.5e-4, 1.5e-3, 3e-3), warmup=(1 / 4, 3 / 4)),
                       sophiag=dict(lr=(3e-4, 6e-4, 1.2e-3), warmup=(1 / 4, 3 / 4), rho=(0.05,)),
                       sophia_rhos=(0.05, 0.2), sign_factors=()))
STUDIES = {s.name: s for s in (TUNED, INBAND, BRIDGE, GPT2_SMALL)}


def make_plan(study, losses=None):
    """Every run `study` needs given the final losses so far ({run name: loss}; default: its results), in
    order of priority, and the tuned settings known so far."""
    return study.planner(study, known_losses(study) if losses is None else losses)


# ----------------------------------------------------------------------------- results

def result_dir(study, run):
    return os.path.join(study.results, run.name)


def records(study, run):
    path = RunDir(result_dir(study, run)).metrics
    return read_metrics(path) if os.path.exists(path) else []


def mean_metric(study, run, key):
    """The mean of a metric over a run's training records (None if it has none)."""
    values = [r[key] for r in records(study, run) if key in r and "train/loss" in r]
    return sum(values) / len(values) if values else None


def final_loss(study, name):
    """A run's final val loss from results/: None while it is not done, inf if it failed."""
    folder = os.path.join(study.results, name)
    if os.path.exists(os.path.join(folder, "failed")):
        return math.inf
    path = RunDir(folder).metrics
    if not os.path.exists(path):
        return None
    records = read_metrics(path)
    max_iters = [r["config"]["max_iters"] for r in records if "config" in r][-1]
    finals = [r["val/loss"] for r in records if r.get("iter") == max_iters and "val/loss" in r]
    return finals[-1] if finals else None


def known_losses(study):
    """{run name: final val loss} of the runs of `study` done (failed ones: inf)."""
    if not os.path.isdir(study.results):
        return {}
    losses = {name: final_loss(study, name) for name in sorted(os.listdir(study.results))}
    return {name: loss for name, loss in losses.items() if loss is not None}


def seconds_per_iter(study, optimizer):
    """The slowest median seconds per iteration of this optimizer's runs so far (or the study's guess)."""
    rates = []
    for name in os.listdir(study.results) if os.path.isdir(study.results) else ():
        path = RunDir(os.path.join(study.results, name)).metrics
        if name.startswith(optimizer + "-") and os.path.exists(path):
            ms = sorted(r["ms_per_iter"] for r in read_metrics(path) if "ms_per_iter" in r)
            rates += [ms[len(ms) // 2] / 1000] if ms else []
    return max(rates) if rates else study.guess_seconds_per_iter


def iterations_done(study, run):
    """How far a stopped run has come in out-<study>/ (its log's last iteration; 0 without a checkpoint)."""
    run_dir = RunDir(os.path.join(study.out, run.name))
    if not (os.path.exists(run_dir.checkpoint) and os.path.exists(run_dir.metrics)):
        return 0
    return max((r["iter"] for r in read_metrics(run_dir.metrics) if "iter" in r), default=0)


def estimate_seconds(study, run, compiled):
    """How long a run will take: the iterations it has left at the optimizer's measured speed, plus start-up
    (and compilation, if this worker has not run this optimizer yet)."""
    # the official phase's 6 micro-batches of 10 took 2.4x as long per iteration on an H200
    per_iter = seconds_per_iter(study, run.optimizer) * (2.5 if run.phase == "official" else 1)
    return (study.startup_seconds + (0 if compiled else COMPILE_SECONDS)
            + (run.iters - iterations_done(study, run)) * per_iter)


# ----------------------------------------------------------------------------- running

def execute(study, run, deadline):
    """Train one run in this process (resuming from its checkpoint if it has one), so that later runs
    reuse the compiled graphs; a SIGTERM at the deadline makes it save and stop. Its metrics are copied
    to results/ either way, so a cut-off run leaves its log; a run that exits with an error is marked
    failed there. Returns (run, whether it completed)."""
    import torch
    import train

    run_dir = RunDir(os.path.join(study.out, run.name))
    resume = os.path.exists(run_dir.checkpoint)
    argv = run.train_args(study, resume)
    load_config(argv)  # a ConfigError here is a bug of the protocol, not a failed run: it must not count as one
    print(f"== {run.name} ({run.phase}{', resuming' if resume else ''})", flush=True)
    alarm = None
    if math.isfinite(deadline):
        alarm = threading.Timer(max(1.0, deadline - time.time()), os.kill, (os.getpid(), signal.SIGTERM))
        alarm.start()
    failure = None
    try:
        train.main(argv)
    except SystemExit as e:  # status 0: nothing to do, e.g. a finished run whose results/ copy was lost
        if e.code not in (0, None):
            failure = f"train.py exited with status {e.code}"
    finally:
        if alarm:
            alarm.cancel()
        if torch.cuda.is_available():  # the run is freed: give its memory back before the next one
            torch.cuda.empty_cache()
    folder = result_dir(study, run)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(run_dir.metrics):
        shutil.copy(run_dir.metrics, RunDir(folder).metrics)
    if failure:
        with open(os.path.join(folder, "failed"), "w") as f:
            f.write(failure + "\n")
        print(f"== {run.name} failed: {failure}", flush=True)
    return run, final_loss(study, run.name) is not None


def init_worker(gpus):
    """A worker process uses one GPU of its own (CUDA is not initialised yet here)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def gpu_count():
    import torch
    return torch.cuda.device_count()


def run_protocol(study, budget, workers, finish_within=None):
    """Run what the plan of `study` needs, `workers` runs at a time (one GPU each), highest priority first,
    for at most `budget` seconds (then the runs save and stop), starting no run that would not finish within
    `finish_within` seconds (default: the budget) but a later one that would; re-plan whenever a run finishes."""
    now = time.time()
    deadline = now + budget
    start_deadline = now + (budget if finish_within is None else finish_within)
    pool = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        gpus = context.Queue()
        for i in range(workers):
            gpus.put(i)
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker,
                                                      initargs=(gpus,))

    def submit(run):
        if pool:
            return pool.submit(execute, study, run, deadline)
        future = concurrent.futures.Future()  # one worker: this process, so that Ctrl-C reaches the run
        future.set_result(execute(study, run, deadline))
        return future

    started, too_long, compiled, running, stopping = set(), set(), set(), {}, False
    try:
        while True:
            todo = [r for r in make_plan(study).runs if final_loss(study, r.name) is None and r.name not in started]
            for run in todo:
                if len(running) == workers or stopping:
                    break
                estimate = estimate_seconds(study, run, run.optimizer in compiled)
                if time.time() + estimate > start_deadline:  # a shorter run further down may still fit
                    if run.name not in too_long:
                        print(f"== not starting {run.name}: needs ~{estimate:.0f} s, "
                              f"{start_deadline - time.time():.0f} s left", flush=True)
                        too_long.add(run.name)
                    continue
                started.add(run.name)
                compiled.add(run.optimizer)
                running[submit(run)] = run
            if not running:
                break
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                run, completed = future.result()  # an exception here is a bug of the protocol, not a failed run
                if not completed and final_loss(study, run.name) is None:  # stopped (deadline, Ctrl-C, SIGTERM)
                    print(f"== {run.name} stopped with its log at iteration {iterations_done(study, run)} of "
                          f"{run.iters}: the next invocation on this machine resumes it from {study.out}/", flush=True)
                    stopping = True
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    plan = make_plan(study)
    left = sum(final_loss(study, r.name) is None for r in plan.runs)
    print(f"== {len(plan.runs) - left} of the {len(plan.runs)} runs planned so far are done"
          if left else "== the protocol is complete", flush=True)


def print_plan(study):
    losses = known_losses(study)
    plan = make_plan(study, losses)
    for run in plan.runs:
        loss = losses.get(run.name)
        state = "to do" if loss is None else "failed" if math.isinf(loss) else f"val {loss:.4f}"
        print(f"{run.phase:10} {run.name:60} {state}")
    for optimizer, run in plan.best.items():
        loss = losses.get(run.name) if run.seed == study.tune_seed else None
        print(f"tuned {optimizer}: lr {run.lr:g}, warmup {run.warmup:.4g} of the length"
              + ("" if run.rho is None else f", rho {run.rho:g}") + ("" if loss is None else f" (val {loss:.4f} at T)"))


def main(argv=None):
    os.chdir(ROOT)  # train.py reads data/ and config/ relative to the repository
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=STUDIES, default=TUNED.name, help="which study (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds this invocation may run; then the runs save a checkpoint and stop")
    parser.add_argument("--finish-within", type=float, default=None,
                        help="start only runs that finish within this many seconds (default: the budget); more than "
                             "the budget lets a run go on in the next invocation on the same machine")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs side by side, one GPU each (default: the number of GPUs, at least 1)")
    parser.add_argument("--plan", action="store_true", help="print the plan and what is done, run nothing")
    args = parser.parse_args(argv)
    study = STUDIES[args.study]
    if args.plan:
        return print_plan(study)
    run_protocol(study, args.budget, args.workers or max(1, gpu_count()), args.finish_within)


if __name__ == "__main__":
    main()
