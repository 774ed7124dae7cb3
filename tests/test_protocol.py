"""Tests for the tuned studies (scripts/protocol.py) and their reports (scripts/protocol_report.py).

1. The planners, as pure functions. The tuned study: the runs' names and train.py arguments, the neighbour
   steps, the first plan, and whole tunings simulated by feeding back losses from a smooth function with a
   known optimum (the search must find it, widening past the initial grid where needed, and plan the later
   phases). gpt2small: its first grids; simulated to completion, the finals at T (sign momentum at Sophia-G's
   tuned settings, untuned), the sequential stage (AdamW at T/2 or at 2T, as Sophia-G's finals at T fall
   against AdamW's; absent until those six are done), the pair without the inverse-layer scaling, Lion last,
   and Sophia-G in the win_rate band from the tuning runs' win rates. inband and bridge131k: derived from
   the tuned study's results (written to a temporary folder). Each study's train.py config.
2. The tuned protocol end to end on a tiny scale, in this process (one worker): T = 4 iterations of the tiny
   GPT of tests/test_train.py, grids of one value, an lr axis of two; a budget too small, a run cut at the
   budget and resumed by the next invocation, a full run, a second invocation, a run that exits with an
   error; then the report over those results.
   The gpt2small study end to end on the tiny GPT (2 layers, the whole val split scored): every phase runs
   with its config, and its report and claims measurements are made.
3. The claims table's words on synthetic regimes (each claim's verdict, "not a test" outside the win_rate
   band, the gain with model size).
4. The committed results (results/tuned/ and the other studies): the tuned plan is complete, and the verdict
   the code computes is the one results/tuned_report.md and the README state; the claims table in
   results/claims.md and the README is the one the records give, and so is the in-band report.
"""

import contextlib
import dataclasses
import functools
import glob
import io
import json
import math
import os
import pickle
import queue
import re
import shutil
import signal
import threading

import numpy as np
import protocol_report
import pytest
from conftest import write_tiny_dataset

from training.config import ConfigError, load_config, make_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

protocol = protocol_report.protocol  # the same modules the report uses, so that monkeypatches reach it
compare = protocol_report.compare

TUNED = protocol.TUNED
T = TUNED.T
ADAMW_LENGTHS = (T // 2, T, 2 * T)


# ----------------------------------------------------------------------------- runs

def test_run_name_and_warmup_iters_scale_with_the_length():
    run = protocol.Run("tune", "sophiag", 2.5e-4, 1 / 12, 600, 1337, rho=0.05)
    assert run.warmup_iters == 50
    assert run.name == "sophiag-lr0.00025-wu50-rho0.05-600it-s1337"
    assert dataclasses.replace(run, iters=300).warmup_iters == 25
    assert dataclasses.replace(run, iters=1200).warmup_iters == 100
    assert dataclasses.replace(run, warmup=7 / 8, iters=300).warmup_iters == round(262.5) == 262
    official = protocol.Run("official", "adamw", 1e-3, 1 / 4, 600, 2001,
                            overrides=(("total_bs", 60), ("batch_size", 10), ("grad_accumulation", "sum")))
    assert official.name == "adamw-lr0.001-wu150-600it-s2001-total_bs=60-batch_size=10-grad_accumulation=sum"


def test_train_args_give_the_intended_config():
    """train.py's arguments parse (paper config, then the scale config, then the run's settings)."""
    study = dataclasses.replace(TUNED, name="x")  # its checkpoints in out-x/

    def config(run, resume=False):
        argv = run.train_args(study, resume)
        assert argv[1] == TUNED.scale_config
        return load_config(argv)

    adamw = protocol.Run("tune", "adamw", 2e-3, 1 / 4, 600, 1337)
    cfg = config(adamw)
    assert (cfg.optimizer_name, cfg.learning_rate, cfg.min_lr) == ("adamw", 2e-3, 2e-3 / 20)
    assert (cfg.warmup_iters, cfg.max_iters, cfg.lr_decay_iters, cfg.seed) == (150, 600, 600, 1337)
    assert cfg.out_dir == os.path.join("out-x", adamw.name) and cfg.wandb_run_name == adamw.name
    assert cfg.init_from == "scratch" and config(adamw, resume=True).init_from == "resume"
    assert cfg.overwrite and not config(adamw, resume=True).overwrite  # a failed start's files moved aside
    assert (cfg.weight_decay, cfg.beta2) == (0.1, 0.95)  # the AdamW paper config
    assert (cfg.n_layer, cfg.n_embd, cfg.total_bs, cfg.dataset) == (6, 384, 64, "enwiki")  # the scale config

    sign = config(protocol.Run("final", "signmomentum", 5e-4, 7 / 8, 300, 2001))
    assert sign.optimizer_name == "signmomentum" and sign.weight_decay == 0.2  # Sophia-G's paper config
    assert sign.warmup_iters == 262 and sign.max_iters == sign.lr_decay_iters == 300

    for warmup in protocol.WARMUPS:  # every point of the warmup axis is a config train.py accepts
        assert config(dataclasses.replace(adamw, warmup=warmup)).warmup_iters == round(warmup * 600)

    sophia = protocol.Run("tune", "sophiag", 2.5e-4, 1 / 12, 600, 1337, rho=0.2)
    assert config(sophia).rho == 0.2 and config(sophia).hess_interval == 10
    assert "--rho" not in " ".join(adamw.train_args(study, False))

    official = config(dataclasses.replace(adamw, phase="official", overrides=(
        ("total_bs", 60), ("batch_size", 10), ("grad_accumulation", "sum"))))
    assert (official.total_bs, official.batch_size, official.grad_accumulation) == (60, 10, "sum")
    variant = config(dataclasses.replace(sophia, phase="variant", overrides=(("hessian_bias_correction", True),)))
    assert variant.hessian_bias_correction is True


def test_neighbours_step_along_each_axis_within_its_limits():
    run = protocol.tuning_run(TUNED, "sophiag", 1e-3, 1 / 4, 0.05)
    assert {(r.lr, r.warmup, r.rho) for r in protocol.neighbours(run, ("lr", "warmup", "rho"))} == {
        (5e-4, 1 / 4, 0.05), (2e-3, 1 / 4, 0.05), (1e-3, 1 / 12, 0.05), (1e-3, 1 / 2, 0.05),
        (1e-3, 1 / 4, 0.0125), (1e-3, 1 / 4, 0.2)}
    assert {r.lr for r in protocol.neighbours(run, ("lr",))} == {5e-4, 2e-3}
    edge = protocol.tuning_run(TUNED, "sophiag", 0.1, 1, 3.2)  # at the top of every axis
    assert {(r.lr, r.warmup, r.rho) for r in protocol.neighbours(edge, ("lr", "warmup", "rho"))} == {
        (0.05, 1, 3.2), (0.1, 7 / 8, 3.2), (0.1, 1, 0.8)}
    bottom = protocol.tuning_run(TUNED, "adamw", 1e-5, 1 / 24)
    assert {(r.lr, r.warmup) for r in protocol.neighbours(bottom, ("lr", "warmup"))} == {(2e-5, 1 / 24), (1e-5, 1 / 12)}
    assert {r.lr for r in protocol.neighbours(protocol.tuning_run(TUNED, "lion", 0.05, 1 / 4), ("lr",))} == {0.025, 0.1}
    assert {r.lr for r in protocol.neighbours(protocol.tuning_run(TUNED, "lion", 2e-5, 1 / 4), ("lr",))} == {1e-5, 4e-5}


# ----------------------------------------------------------------------------- results

def write_metrics(study, run, loss, win_rate=0.2, stop_at=None, ms_per_iter=(20,)):
    """A run's metrics.jsonl in results/<study>/: its config, training records every 10 iterations (ms_per_iter in
    turn), evaluations every 100 and at the end (max_iters, or `stop_at` for a run cut off)."""
    cfg = make_config(optimizer_name=run.optimizer, max_iters=run.iters, learning_rate=run.lr, seed=run.seed,
                      total_bs=64, block_size=512)
    end = run.iters if stop_at is None else stop_at
    records = [{"config": dataclasses.asdict(cfg)}]
    for i, it in enumerate(range(10, end + 1, 10)):
        ms = ms_per_iter[i % len(ms_per_iter)]
        records.append({"iter": it, "time": ms / 1000 * it, "train/loss": loss + 1, "train/win_rate": win_rate,
                        "ms_per_iter": ms})
        if it % 100 == 0 or it == run.iters:
            records.append({"iter": it, "tokens": it * 64 * 512, "time": ms / 1000 * it, "val/loss": loss})
    folder = protocol.result_dir(study, run)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def mark_failed(study, run):
    os.makedirs(protocol.result_dir(study, run), exist_ok=True)
    with open(os.path.join(protocol.result_dir(study, run), "failed"), "w") as f:
        f.write("train.py exited with status 1\n")


def test_final_loss_and_known_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tuned study's results in results/tuned/ there
    assert protocol.known_losses(TUNED) == {}  # no results/ yet
    done, cut, failed, resumed = (protocol.tuning_run(TUNED, "adamw", lr, 1 / 4) for lr in (1e-3, 2e-3, 4e-3, 8e-3))
    write_metrics(TUNED, done, 4.5)
    write_metrics(TUNED, cut, 4.6, stop_at=300)  # no evaluation at max_iters: not done
    write_metrics(TUNED, failed, 4.7, stop_at=100)
    mark_failed(TUNED, failed)
    short = dataclasses.replace(resumed, iters=300)  # its log starts as a complete 300-iteration run's ...
    write_metrics(TUNED, short, 4.9)
    os.rename(protocol.result_dir(TUNED, short), protocol.result_dir(TUNED, resumed))
    with open(os.path.join(protocol.result_dir(TUNED, resumed), "metrics.jsonl"), "a") as f:  # ... then to 600
        f.write(json.dumps({"config": dataclasses.asdict(make_config(optimizer_name="adamw", max_iters=600))}) + "\n")
        f.write(json.dumps({"iter": 310, "train/loss": 5.0}) + "\n")
    (tmp_path / "results" / "tuned" / "notes.md").write_text("not a run\n")
    assert protocol.final_loss(TUNED, done.name) == 4.5
    assert protocol.final_loss(TUNED, cut.name) is None and protocol.final_loss(TUNED, resumed.name) is None
    assert protocol.final_loss(TUNED, failed.name) == math.inf
    assert protocol.final_loss(TUNED, "never-run") is None
    assert protocol.known_losses(TUNED) == {done.name: 4.5, failed.name: math.inf}
    assert protocol.known_losses(protocol.BRIDGE) == {}  # each study reads its own folder


def test_the_time_estimate_uses_the_slowest_measured_speed(tmp_path, monkeypatch):
    """Per study: the slowest median ms_per_iter of an optimizer's runs in its folder, else the study's guess."""
    monkeypatch.chdir(tmp_path)
    run = protocol.tuning_run(TUNED, "sophiag", 1e-3, 1 / 4, 0.05)
    guess = TUNED.guess_seconds_per_iter
    assert protocol.seconds_per_iter(TUNED, "sophiag") == guess
    write_metrics(TUNED, run, 5.0, ms_per_iter=(30, 40, 90))  # median 40 ms
    write_metrics(TUNED, dataclasses.replace(run, lr=2e-3), 5.0, ms_per_iter=(50, 60, 70))  # median 60 ms
    write_metrics(TUNED, protocol.tuning_run(TUNED, "signmomentum", 1e-3, 1 / 4), 5.0, ms_per_iter=(500, 500, 500))
    assert protocol.seconds_per_iter(TUNED, "sophiag") == pytest.approx(0.06)
    assert protocol.seconds_per_iter(TUNED, "adamw") == guess
    bridge = protocol.BRIDGE  # another study: its own guess, not the tuned study's measurements
    assert protocol.seconds_per_iter(bridge, "sophiag") == bridge.guess_seconds_per_iter != guess
    assert protocol.estimate_seconds(TUNED, run, compiled=True) == pytest.approx(
        protocol.STARTUP_SECONDS + 600 * 0.06)
    assert protocol.estimate_seconds(TUNED, run, compiled=False) == pytest.approx(
        protocol.STARTUP_SECONDS + protocol.COMPILE_SECONDS + 600 * 0.06)
    official = protocol.Run("official", "adamw", 1e-3, 1 / 4, 600, 2001)  # smaller micro-batches: slower
    assert protocol.estimate_seconds(TUNED, official, compiled=True) > protocol.STARTUP_SECONDS + 600 * guess
    small = protocol.GPT2_SMALL  # the 124M study's own start-up time
    big = protocol.tuning_run(small, "adamw", 1e-3, 1 / 4)
    assert protocol.estimate_seconds(small, big, compiled=True) == pytest.approx(
        small.startup_seconds + 1000 * small.guess_seconds_per_iter)
    assert small.startup_seconds > protocol.STARTUP_SECONDS


# ----------------------------------------------------------------------------- the planner

def test_the_first_plan_is_the_two_grids():
    plan = protocol.make_plan(TUNED, {})
    assert plan.best == {}
    assert all((r.phase, r.seed, r.iters) == ("tune", TUNED.tune_seed, T) for r in plan.runs)
    adamw = [r for r in plan.runs if r.optimizer == "adamw"]
    sophia = [r for r in plan.runs if r.optimizer == "sophiag"]
    assert len(adamw) == len(sophia) == 9 and len(plan.runs) == 18
    assert {(r.lr, r.warmup, r.rho) for r in adamw} == {
        (lr, w, None) for lr in (5e-4, 1e-3, 2e-3) for w in (1 / 12, 1 / 4, 1 / 2)}
    assert {(r.lr, r.warmup, r.rho) for r in sophia} == {
        (lr, w, 0.05) for lr in (1.25e-4, 2.5e-4, 5e-4) for w in (1 / 12, 1 / 4, 1 / 2)}


BASE_LOSS = {"adamw": 3.0, "sophiag": 3.1, "lion": 3.2, "signmomentum": 3.15}


@dataclasses.dataclass
class Bowl:
    """A smooth loss with a known optimum per optimizer, separable and convex in log2(lr), the warmup's
    index in WARMUPS and rho's in RHOS (so the optimum on the axes' values is the only local one); longer
    runs end lower, seeds differ a little. `fails(run)` marks runs that fail (loss inf); `base` replaces
    BASE_LOSS (each optimizer's loss at its optimum at length T)."""
    optimum: dict  # optimizer -> dict(lr=..., warmup=..., rho=...) (the keys its search has)
    fails: object = None
    base: dict = None

    def __call__(self, run):
        if self.fails and self.fails(run):
            return math.inf
        opt = self.optimum[run.optimizer]
        distance = math.log2(run.lr / opt["lr"]) ** 2
        if "warmup" in opt:
            distance += 0.7 * (protocol.WARMUPS.index(run.warmup) - protocol.WARMUPS.index(opt["warmup"])) ** 2
        if "rho" in opt:
            distance += 0.4 * (protocol.RHOS.index(run.rho) - protocol.RHOS.index(opt["rho"])) ** 2
        return ((self.base or BASE_LOSS)[run.optimizer] + 0.1 * distance - 0.3 * math.log2(run.iters / T)
                + 0.001 * (run.seed % 7) + 0.01 * len(run.overrides))


def simulate(loss, one_at_a_time=False, study=TUNED, check=None, max_rounds=500):
    """Plan `study`, give the to-do runs (all, or the first) their loss, and again until nothing is left;
    `check(plan, losses)` sees every plan on the way."""
    losses = {}
    for _ in range(max_rounds):
        plan = protocol.make_plan(study, losses)
        if check:
            check(plan, losses)
        todo = [r for r in plan.runs if r.name not in losses]
        if not todo:
            return plan, losses
        for run in todo[:1] if one_at_a_time else todo:
            losses[run.name] = loss(run)
    raise AssertionError("the plan never completes")


AXES = {"adamw": ("lr", "warmup"), "sophiag": ("lr", "warmup", "rho"), "lion": ("lr",), "signmomentum": ("lr",)}


def steps_along(run, axes):
    """The runs one step from `run` along each axis that has one (written out independently)."""
    found = [dataclasses.replace(run, lr=run.lr * f) for f in (0.5, 2)
             if "lr" in axes and protocol.LR_LIMITS[0] <= run.lr * f <= protocol.LR_LIMITS[1]]
    for axis, values in (("warmup", protocol.WARMUPS), ("rho", protocol.RHOS)):
        if axis in axes:
            i = values.index(getattr(run, axis))
            found += [dataclasses.replace(run, **{axis: values[j]}) for j in (i - 1, i + 1) if 0 <= j < len(values)]
    return found


def check_tuning(study, plan, losses, expected_best, axes=AXES):
    """Each optimizer of `expected_best` ({optimizer: settings}) is tuned to those settings: its best is its
    lowest tuning run (seed tune_seed, length T), finite, with every neighbour along its axes tried and worse."""
    for optimizer, expected in expected_best.items():
        best = plan.best[optimizer]
        tune = [r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer]
        assert best in tune and math.isfinite(losses[best.name])
        assert losses[best.name] == min(losses[r.name] for r in tune)
        for axis, value in expected.items():
            assert getattr(best, axis) == pytest.approx(value, rel=1e-9), (optimizer, axis, best)
        for step in steps_along(best, axes[optimizer]):  # a local optimum: every neighbour tried and worse
            assert step in tune, f"{optimizer}: the neighbour {step.name} of the best is untried"
            assert losses[step.name] > losses[best.name]
        assert all(r.seed == study.tune_seed and r.iters == study.T for r in tune)


def check_completed_plan(plan, losses, expected_best):
    """The properties every completed plan of the tuned study has, and the tuned settings `expected_best`."""
    names = [r.name for r in plan.runs]
    assert len(set(names)) == len(names), "run names are not unique"
    assert set(plan.best) == set(AXES) == set(expected_best)
    check_tuning(TUNED, plan, losses, expected_best)

    later = [r for r in plan.runs if r.phase != "tune"]
    assert all(r.seed in TUNED.final_seeds for r in later) and TUNED.tune_seed not in TUNED.final_seeds
    lengths = {"adamw": ADAMW_LENGTHS, "sophiag": (T // 2, T), "lion": (T,), "signmomentum": (T,)}
    for optimizer, best in plan.best.items():
        finals = [r for r in later if r.phase == "final" and r.optimizer == optimizer]
        assert sorted((r.iters, r.seed) for r in finals) == sorted(
            (n, s) for n in lengths[optimizer] for s in TUNED.final_seeds)
        for r in finals:
            assert (r.lr, r.warmup, r.rho, r.overrides) == (best.lr, best.warmup, best.rho, ())
            assert r.warmup_iters == round(best.warmup * r.iters)
    official = [r for r in later if r.phase == "official"]
    assert len(official) == 6 and all(r.optimizer == "adamw" and r.iters == T for r in official)
    assert sorted((r.seed, dict(r.overrides)["grad_accumulation"]) for r in official) == sorted(
        (s, how) for s in TUNED.final_seeds for how in ("mean", "sum"))
    assert all(dict(r.overrides)["total_bs"] == 60 and dict(r.overrides)["batch_size"] == 10 for r in official)
    assert all((r.lr, r.warmup) == (plan.best["adamw"].lr, plan.best["adamw"].warmup) for r in official)
    variants = [r for r in later if r.phase == "variant"]
    assert len(variants) == 6 and all(r.optimizer == "sophiag" and r.iters == T for r in variants)
    assert sorted((r.overrides, r.seed) for r in variants) == sorted(
        (o, s) for o in ((("hessian_bias_correction", True),), (("beta2", 0.95),)) for s in TUNED.final_seeds)
    assert all((r.lr, r.warmup, r.rho) == (plan.best["sophiag"].lr, plan.best["sophiag"].warmup,
                                           plan.best["sophiag"].rho) for r in variants)
    assert len(plan.runs) == len([r for r in plan.runs if r.phase == "tune"]) + 21 + 6 + 6


SCENARIOS = {  # name: (the optimum of the loss, the tuned settings expected; None: the optimum itself)
    # every optimum inside the initial grids (Lion's at AdamW's best / 4, sign momentum's at Sophia-G's)
    "in the grid": (
        dict(adamw=dict(lr=1e-3, warmup=1 / 4), sophiag=dict(lr=2.5e-4, warmup=1 / 4, rho=0.05),
             lion=dict(lr=2.5e-4), signmomentum=dict(lr=2.5e-4)), None),
    # outside the initial grids, reached by widening: AdamW above its lr and warmup grids, Sophia-G above
    # its lr and warmup grids and below its rho grids, Lion below (its grid is 1e-3..4e-3 from AdamW's
    # 8e-3), sign momentum above (its grid is 1e-3..4e-3 from Sophia-G's 2e-3)
    "widened": (
        dict(adamw=dict(lr=8e-3, warmup=3 / 4), sophiag=dict(lr=2e-3, warmup=7 / 8, rho=0.0125),
             lion=dict(lr=2.5e-4), signmomentum=dict(lr=1.6e-2)), None),
    # beyond the axes' limits: the best stops at the limit (lr 0.064 is the last step of 2 below 0.1)
    "at the limits": (
        dict(adamw=dict(lr=1.0, warmup=1), sophiag=dict(lr=1e-6, warmup=1 / 24, rho=3.2),
             lion=dict(lr=1.0), signmomentum=dict(lr=3.125e-5)),
        dict(adamw=dict(lr=0.064, warmup=1), sophiag=dict(lr=1.25e-4 / 8, warmup=1 / 24, rho=3.2),
             lion=dict(lr=0.064), signmomentum=dict(lr=3.125e-5))),
}


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["all to-do runs at once", "one run at a time"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_simulated_tuning_finds_the_optimum_and_plans_the_later_phases(scenario, one_at_a_time):
    optimum, expected_best = SCENARIOS[scenario]
    plan, losses = simulate(Bowl(optimum), one_at_a_time)
    check_completed_plan(plan, losses, expected_best or optimum)
    assert set(losses) == {r.name for r in plan.runs}  # nothing was run that the final plan lacks


def test_widening_goes_past_the_initial_grid():
    plan, losses = simulate(Bowl(SCENARIOS["widened"][0]))
    adamw = sorted({r.lr for r in plan.runs if r.phase == "tune" and r.optimizer == "adamw"})
    assert adamw[-2:] == pytest.approx([8e-3, 1.6e-2])  # 4e-3, 8e-3 and the neighbour 1.6e-2 beyond
    sophia = [r for r in plan.runs if r.phase == "tune" and r.optimizer == "sophiag"]
    assert {r.rho for r in sophia} == {0.003125, 0.0125, 0.05, 0.2, 0.8}  # 0.0125: below the second grid
    # the second grid: every lr tried at the best warmup of the first search (7/8 at rho 0.05), x sophia_rhos
    first = {r.lr for r in sophia if r.rho == 0.05 and r.warmup == 7 / 8}
    assert len(first) >= 3
    assert {(lr, rho) for lr in first for rho in TUNED.tuning.sophia_rhos} <= {
        (r.lr, r.rho) for r in sophia if r.warmup == 7 / 8}


def test_later_phases_wait_for_the_tuning_they_start_from():
    plan = protocol.make_plan(TUNED, {})
    bowl = Bowl(SCENARIOS["in the grid"][0])
    losses = {r.name: bowl(r) for r in plan.runs if r.optimizer == "adamw"}
    while True:  # finish AdamW's tuning only
        todo = [r for r in protocol.make_plan(TUNED, losses).runs if r.optimizer == "adamw" and r.phase == "tune"
                and r.name not in losses]
        if not todo:
            break
        losses.update({r.name: bowl(r) for r in todo})
    plan = protocol.make_plan(TUNED, losses)
    assert set(plan.best) == {"adamw"}
    phases = {(r.optimizer, r.phase) for r in plan.runs}
    assert ("lion", "tune") in phases and ("adamw", "final") in phases and ("adamw", "official") in phases
    assert not {("sophiag", "final"), ("sophiag", "variant"), ("signmomentum", "tune"), ("lion", "final")} & phases
    assert [r.phase for r in plan.runs].index("final") > max(i for i, r in enumerate(plan.runs) if r.phase == "tune")


def test_a_failed_run_is_never_the_best():
    optimum = SCENARIOS["in the grid"][0]

    def fails(run):  # the true optimum of AdamW and of Sophia-G fail, as does one final run
        return (run.phase == "tune" and (run.optimizer, run.lr, run.warmup) in (("adamw", 1e-3, 1 / 4),
                                                                             ("sophiag", 2.5e-4, 1 / 4))
                or run.phase == "final" and run.optimizer == "lion")

    plan, losses = simulate(Bowl(optimum, fails))
    for optimizer in ("adamw", "sophiag"):
        best = plan.best[optimizer]
        assert math.isfinite(losses[best.name])
        assert (best.lr, best.warmup) != (optimum[optimizer]["lr"], optimum[optimizer]["warmup"])
        for step in steps_along(best, AXES[optimizer]):
            assert losses[step.name] > losses[best.name]
    assert any(math.isinf(losses[r.name]) for r in plan.runs if r.optimizer == "adamw" and r.phase == "tune")
    assert not [r for r in plan.runs if r.name not in losses]  # a failed run counts as done


def test_when_every_tuning_run_fails_there_is_no_best():
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0], lambda r: r.optimizer == "adamw"))
    assert "adamw" not in plan.best
    assert not [r for r in plan.runs if r.optimizer in ("adamw", "lion") and r.phase != "tune"]


# ----------------------------------------------------------------------------- the other studies' planners

GPT2 = protocol.GPT2_SMALL
NO_SCALING = (("scale_attn_by_inverse_layer_idx", False),)
# AdamW's warmup between its two initial ones (1/4, 3/4), Lion's at AdamW's lr / 4 (inside its grid)
GPT2_OPTIMUM = dict(adamw=dict(lr=1.5e-3, warmup=1 / 2), sophiag=dict(lr=6e-4, warmup=1 / 4, rho=0.05),
                    lion=dict(lr=1.5e-3 / 4), signmomentum=dict(lr=6e-4))


def losses_at_T(plan, losses, optimizer):
    """The final losses of an optimizer's finals at T of gpt2small."""
    return [losses[r.name] for r in plan.runs if (r.phase, r.optimizer, r.iters) == ("final", optimizer, GPT2.T)]


def check_gpt2_small_round(plan, losses):
    """What every plan of gpt2small has on the way: the sequential stage exactly when AdamW's and Sophia-G's
    six finals at T are done, and Lion's runs (tuning and final) after every other run."""
    at_T = [r for r in plan.runs if r.phase == "final" and r.optimizer in ("adamw", "sophiag") and r.iters == GPT2.T]
    six_done = len(at_T) == 6 and all(r.name in losses for r in at_T)
    assert any(r.phase == "sequential" for r in plan.runs) == six_done
    lion = [i for i, r in enumerate(plan.runs) if r.optimizer == "lion"]
    assert lion == list(range(len(plan.runs) - len(lion), len(plan.runs))), "a Lion run before another run"


def test_gpt2_small_first_plan_is_the_two_grids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/gpt2small/
    plan = protocol.make_plan(GPT2)
    assert plan.best == {} and len(plan.runs) == 12
    assert all((r.phase, r.seed, r.iters) == ("tune", 1337, 1000) for r in plan.runs)
    assert {(r.optimizer, r.lr, r.warmup, r.rho) for r in plan.runs} == {
        ("adamw", lr, w, None) for lr in (7.5e-4, 1.5e-3, 3e-3) for w in (1 / 4, 3 / 4)} | {
        ("sophiag", lr, w, 0.05) for lr in (3e-4, 6e-4, 1.2e-3) for w in (1 / 4, 3 / 4)}


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["all to-do runs at once", "one run at a time"])
@pytest.mark.parametrize("sophia_base, sequential_iters", [(3.1, GPT2.T // 2), (2.9, 2 * GPT2.T)],
                         ids=["Sophia-G above AdamW at T: AdamW at T/2", "Sophia-G below AdamW at T: AdamW at 2T"])
def test_gpt2_small_simulated_plan(sophia_base, sequential_iters, one_at_a_time, tmp_path, monkeypatch):
    """gpt2small simulated to completion (no win rates recorded: no Sophia-G run in the band): AdamW, Sophia-G
    and Lion tuned to the loss's optimum; finals at T on seeds 3001-3003 of AdamW, Sophia-G, Lion, and sign
    momentum at Sophia-G's tuned lr and warmup without tuning of its own; the sequential stage (AdamW at T/2
    when Sophia-G's mean final loss at T is above AdamW's, else at 2T), absent while any of those six finals is
    missing; the pair without the inverse-layer scaling; Lion's runs last (planned, and run one at a time)."""
    monkeypatch.chdir(tmp_path)
    plan, losses = simulate(Bowl(GPT2_OPTIMUM, base=dict(BASE_LOSS, sophiag=sophia_base)), one_at_a_time, GPT2,
                            check=check_gpt2_small_round)
    names = [r.name for r in plan.runs]
    assert len(set(names)) == len(names) and set(losses) == set(names)
    assert set(plan.best) == {"adamw", "sophiag", "lion", "signmomentum"}
    check_tuning(GPT2, plan, losses, {o: GPT2_OPTIMUM[o] for o in ("adamw", "sophiag", "lion")})
    assert {r.phase for r in plan.runs} == {"tune", "final", "sequential", "noscale"}
    assert not [r for r in plan.runs if r.optimizer == "signmomentum" and r.phase == "tune"]
    adamw, sophia, lion = plan.best["adamw"], plan.best["sophiag"], plan.best["lion"]
    T, seeds = GPT2.T, GPT2.final_seeds
    assert seeds == (3001, 3002, 3003)

    def on_seeds(best, phase, iters):
        return [dataclasses.replace(best, phase=phase, iters=iters, seed=s) for s in seeds]

    sign = protocol.Run("tune", "signmomentum", sophia.lr, sophia.warmup, T, GPT2.tune_seed)
    expected = on_seeds(adamw, "final", T) + on_seeds(sophia, "final", T) + on_seeds(sign, "final", T) \
        + on_seeds(lion, "final", T)
    assert by_name(r for r in plan.runs if r.phase == "final") == by_name(expected)
    assert [r for r in plan.runs if r.phase == "sequential"] == on_seeds(adamw, "sequential", sequential_iters)
    slower = np.mean(losses_at_T(plan, losses, "sophiag")) > np.mean(losses_at_T(plan, losses, "adamw"))
    assert slower == (sophia_base > BASE_LOSS["adamw"])  # the case this parameter sets up
    noscale = [r for r in plan.runs if r.phase == "noscale"]
    assert noscale == [dataclasses.replace(b, phase="noscale", seed=3001, overrides=NO_SCALING)
                       for b in (adamw, sophia)]
    assert all(load_config(r.train_args(GPT2, False)).scale_attn_by_inverse_layer_idx is False for r in noscale)
    check_gpt2_small_round(plan, losses)
    if one_at_a_time:  # the order the runs were given their loss: Lion's last
        order = [name.split("-")[0] for name in losses]
        assert order[order.index("lion"):] == ["lion"] * order.count("lion")

    at_T = [r for r in plan.runs if r.phase == "final" and r.optimizer in ("adamw", "sophiag")]
    assert len(at_T) == 6
    for missing in at_T:  # the stage waits on every one of the six ...
        fewer = {name: loss for name, loss in losses.items() if name != missing.name}
        assert not [r for r in protocol.make_plan(GPT2, fewer).runs if r.phase == "sequential"], missing.name
    sign_final = next(r for r in plan.runs if r.phase == "final" and r.optimizer == "signmomentum")
    fewer = {name: loss for name, loss in losses.items() if name != sign_final.name}  # ... and on no other run
    assert [r for r in protocol.make_plan(GPT2, fewer).runs if r.phase == "sequential"] == on_seeds(
        adamw, "sequential", sequential_iters)


def band_win_rates(plan, losses, best_win_rate):
    """For Sophia-G's tuning runs of a completed plan: distinct losses (small offsets to the others, the best
    kept lowest; `losses` is changed) and win rates: the best `best_win_rate`, the next lowest below the band
    (0.05), the next above it (0.55), the next at its top (0.5, inside), the rest 0.3. Returns ({run: mean
    win_rate}, the run expected as the lowest in the band)."""
    tuning = [r for r in plan.runs if r.phase == "tune" and r.optimizer == "sophiag"]
    for i, run in enumerate(r for r in tuning if r != plan.best["sophiag"]):
        losses[run.name] += 1e-4 * (i + 1)
    assert len({losses[r.name] for r in tuning}) == len(tuning) >= 5
    ranked = sorted(tuning, key=lambda r: losses[r.name])
    assert ranked[0] == plan.best["sophiag"]
    win_rates = {r: 0.3 for r in ranked}
    win_rates.update(zip(ranked[:4], (best_win_rate, 0.05, 0.55, 0.5)))
    return win_rates, ranked[3]


@pytest.mark.parametrize("best_win_rate", [0.7, 0.3], ids=["tuned rho outside the band", "tuned rho in the band"])
def test_gpt2_small_plans_sophia_in_the_band_when_the_tuned_run_is_outside(best_win_rate, tmp_path, monkeypatch):
    """The mean train/win_rate of Sophia-G's tuning runs, read from results/gpt2small/: with the tuned best's
    outside BAND, the plan adds the lowest-loss tuning run whose win_rate is in [0.1, 0.5] on the final seeds
    (phase "inband"; runs just below or above the band, though lower, are passed over); with it inside, none."""
    monkeypatch.chdir(tmp_path)
    plan, losses = simulate(Bowl(GPT2_OPTIMUM), study=GPT2)
    assert "inband" not in plan.best  # no win rates yet
    win_rates, band = band_win_rates(plan, losses, best_win_rate)
    for run, win_rate in win_rates.items():
        write_metrics(GPT2, run, losses[run.name], win_rate=win_rate)
    plan = protocol.make_plan(GPT2, losses)
    inband = [r for r in plan.runs if r.phase == "inband"]
    if best_win_rate > protocol.BAND[1]:
        assert plan.best["inband"] == band and band != plan.best["sophiag"]
        assert inband == [dataclasses.replace(band, phase="inband", seed=s) for s in GPT2.final_seeds]
    else:
        assert inband == [] and "inband" not in plan.best


def write_tuned_results():
    """The tuned study simulated to completion (Bowl, "in the grid"), every run's metrics written to
    results/tuned/ here; (plan, losses)."""
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    for run in plan.runs:
        write_metrics(TUNED, run, losses[run.name])
    return plan, losses


def by_name(runs):
    return sorted(runs, key=lambda r: r.name)


def test_inband_plan_is_sophia_in_the_band_against_the_tuned_controls(tmp_path, monkeypatch):
    """inband, from the tuned study's results: Sophia-G at the lowest-loss tuned Sophia-G tuning run whose mean
    win_rate is in the band (not a lower final run, nor another optimizer's), on seeds 2001-2003; sign momentum
    and Sophia-G at their tuned settings on those seeds; the band's run with rho one step up (x4); all scored on
    the whole val split. Empty while the tuned study has no results, and when no tuning run is in the band."""
    monkeypatch.chdir(tmp_path)
    study = protocol.INBAND
    assert protocol.make_plan(study) == protocol.Plan([], {})
    tuned, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    win_rates, band = band_win_rates(tuned, losses, 0.7)
    for run in tuned.runs:  # every other run (AdamW's, Sophia-G's finals) in the band too
        write_metrics(TUNED, run, losses[run.name], win_rate=win_rates.get(run, 0.3))
    sophia, sign = tuned.best["sophiag"], tuned.best["signmomentum"]
    assert (sophia.lr, sophia.warmup, sophia.rho, sign.lr, sign.warmup) == (2.5e-4, 1 / 4, 0.05, 2.5e-4, 1 / 4)
    seeds = study.final_seeds
    assert seeds == TUNED.final_seeds == (2001, 2002, 2003)

    plan = protocol.make_plan(study)
    expected = [dataclasses.replace(run, phase=phase, seed=s, **changes) for phase, run, changes in (
        ("inband", band, {}), ("final", sign, {}), ("final", sophia, {}), ("deeper", band, dict(rho=band.rho * 4)))
        for s in seeds]
    assert by_name(plan.runs) == by_name(expected)
    assert plan.best == {"sophiag": sophia, "signmomentum": sign, "inband": band}
    for run in plan.runs:
        cfg = load_config(run.train_args(study, False))
        assert (cfg.val_eval, cfg.max_iters, cfg.out_dir) == ("full", 600, os.path.join("out-inband", run.name))

    for run in win_rates:  # no Sophia-G tuning run in the band
        write_metrics(TUNED, run, losses[run.name], win_rate=0.05 if run.rho < 0.05 else 0.7)
    assert protocol.make_plan(study) == protocol.Plan([], {})


BRIDGE_OPTIMUM = dict(adamw=dict(lr=4e-3), sophiag=dict(lr=2.5e-4), signmomentum=dict(lr=1.25e-4))


def test_bridge_plan_tunes_lr_again_from_the_tuned_studys_best(tmp_path, monkeypatch):
    """bridge131k, from the tuned study's results: first lr x {1/2, 1, 2} around AdamW's, Sophia-G's and sign
    momentum's tuned lr (their warmup and rho kept) at T = 600, seed 1337; simulated to completion (AdamW's
    optimum two doublings above its tuned lr), each lr a local optimum along lr, and finals on 2101-2103:
    AdamW at 300, 600 and 1200, Sophia-G and sign momentum at 600. Every run at 256 sequences per iteration in
    micro-batches of 128, scored on the whole val split, the tuned study's model."""
    monkeypatch.chdir(tmp_path)
    study = protocol.BRIDGE
    assert protocol.make_plan(study) == protocol.Plan([], {})  # nothing to start from yet
    tuned, _ = write_tuned_results()
    centres = {o: tuned.best[o] for o in ("adamw", "sophiag", "signmomentum")}
    first = protocol.make_plan(study, {})
    assert first.best == {}
    assert by_name(first.runs) == by_name(protocol.Run("tune", o, c.lr * f, c.warmup, 600, 1337, c.rho)
                                          for o, c in centres.items() for f in (1 / 2, 1, 2))

    plan, losses = simulate(Bowl(BRIDGE_OPTIMUM), study=study)
    names = [r.name for r in plan.runs]
    assert len(set(names)) == len(names) and set(losses) == set(names)
    assert set(plan.best) == set(BRIDGE_OPTIMUM)
    check_tuning(study, plan, losses, BRIDGE_OPTIMUM, axes={o: ("lr",) for o in BRIDGE_OPTIMUM})
    for run in plan.runs:
        assert (run.warmup, run.rho) == (centres[run.optimizer].warmup, centres[run.optimizer].rho)
    assert sorted(r.lr for r in plan.runs if r.phase == "tune" and r.optimizer == "adamw") == pytest.approx(
        [5e-4, 1e-3, 2e-3, 4e-3, 8e-3])
    later = [r for r in plan.runs if r.phase != "tune"]
    assert {r.phase for r in later} == {"final"}
    assert sorted((r.optimizer, r.iters, r.seed) for r in later) == sorted(
        [("adamw", n, s) for n in (300, 600, 1200) for s in (2101, 2102, 2103)]
        + [(o, 600, s) for o in ("sophiag", "signmomentum") for s in (2101, 2102, 2103)])
    assert all(r.lr == plan.best[r.optimizer].lr for r in later)
    for run in plan.runs:
        cfg = load_config(run.train_args(study, False))
        assert (cfg.total_bs, cfg.batch_size, cfg.val_eval, cfg.n_layer, cfg.block_size) == (256, 128, "full", 6, 512)
        assert cfg.out_dir == os.path.join("out-bridge131k", run.name)


def test_gpt2_small_runs_get_the_124m_config():
    """gpt2small's train.py arguments: the paper's GPT-2 small (12 layers, 768 channels, no bias, the
    attention scaled by the inverse layer index) at block 1024, 128 sequences per iteration, enwiki, scored on
    the whole val split; a run that overrides the scaling turns it off."""
    for optimizer, rho in (("adamw", None), ("sophiag", 0.05), ("signmomentum", None), ("lion", None)):
        run = protocol.tuning_run(GPT2, optimizer, 6e-4, 1 / 4, rho)
        argv = run.train_args(GPT2, False)
        assert argv[1] == GPT2.scale_config
        cfg = load_config(argv)
        assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.total_bs, cfg.val_eval, cfg.dataset) == (
            12, 768, 1024, 128, "full", "enwiki")
        assert cfg.bias is False and cfg.scale_attn_by_inverse_layer_idx is True
        assert (cfg.optimizer_name, cfg.max_iters, cfg.out_dir) == (optimizer, 1000,
                                                                    os.path.join("out-gpt2small", run.name))
        noscale = dataclasses.replace(run, phase="noscale", seed=3001, overrides=NO_SCALING)
        assert load_config(noscale.train_args(GPT2, False)).scale_attn_by_inverse_layer_idx is False


# ----------------------------------------------------------------------------- end to end, tiny

TINY_SCALE = dict(dataset="tiny", device="cpu", dtype="float32", compile=False, n_layer=1, n_head=2, n_embd=32,
                  block_size=32, batch_size=2, total_bs=2, eval_interval=5, eval_iters=1, log_interval=1,
                  hess_interval=2, checkpoint_interval=100000)
TINY_T = 4
BAD_VARIANT = {"weight_decay": 1e30}  # its first step blows the weights up: that run stops on a non-finite loss


def tiny_protocol(monkeypatch, root):
    """The tuned study at T = 4 on the tiny GPT, in `root` (its results in results/tuned/ there, its
    checkpoints in out-tuned/): one value per grid, an lr axis of 1e-2 and 2e-2 (each optimizer's best gets
    one neighbour), one final seed, two variants of which one is invalid. Returns the study."""
    monkeypatch.setattr(protocol, "WARMUPS", (1 / 4,))
    monkeypatch.setattr(protocol, "RHOS", (0.05,))
    monkeypatch.setattr(protocol, "LR_LIMITS", (1e-2, 2e-2))
    monkeypatch.setattr(protocol, "OFFICIAL", dict(total_bs=2, batch_size=1))
    monkeypatch.setattr(protocol, "VARIANTS", ({"beta2": 0.95}, BAD_VARIANT))
    monkeypatch.chdir(root)
    return dataclasses.replace(TUNED, scale_config=str(root / "tiny_scale.py"), T=TINY_T, final_seeds=(2001,),
                               tuning=protocol.Tuning(adamw=dict(lr=(1e-2,), warmup=(1 / 4,)),
                                                      sophiag=dict(lr=(1e-2,), warmup=(1 / 4,), rho=(0.05,)),
                                                      sophia_rhos=(0.05,), lion_factors=(1 / 8,), sign_factors=(1,)))


def make_root(path):
    """A folder with data/tiny (as tests/test_train.py's) and the tiny scale config."""
    write_tiny_dataset(path / "data" / "tiny")
    (path / "tiny_scale.py").write_text("".join(f"{k} = {v!r}\n" for k, v in TINY_SCALE.items()))
    return path


@contextlib.contextmanager
def signal_handlers_kept():
    """train.main installs SIGTERM/SIGINT handlers; put pytest's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run_protocol(study, budget, finish_within=None):
    """protocol.run_protocol(study, budget, 1 worker, finish_within), its output (stdout and stderr) returned."""
    out = io.StringIO()
    with signal_handlers_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        protocol.run_protocol(study, budget, 1, finish_within)
    return out.getvalue()


def started(output):
    return re.findall(r"^== (\S+) \((\w+)(?:, resuming)?\)$", output, re.M)


def snapshot(folder):
    return {path: open(path, "rb").read() for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True))
            if os.path.isfile(path)}


@pytest.fixture(scope="module")
def tiny_done(tmp_path_factory):
    """The tiny protocol run to completion, then invoked again: (root, first output, second output, the
    results before and after the second invocation)."""
    root = make_root(tmp_path_factory.mktemp("protocol"))
    with pytest.MonkeyPatch.context() as mp:
        study = tiny_protocol(mp, root)
        first = run_protocol(study, math.inf)
        before = snapshot(study.results)
        second = run_protocol(study, math.inf)
        after = snapshot(study.results)
    return root, first, second, before, after


@pytest.fixture
def tiny(tiny_done, monkeypatch):
    """The tiny protocol's settings again (the module fixture undid them), in its folder: (the tiny study,
    root, first output, second output, the results before and after the second invocation)."""
    return (tiny_protocol(monkeypatch, tiny_done[0]),) + tiny_done


def test_a_budget_too_small_starts_nothing_and_says_so(tmp_path, monkeypatch):
    study = tiny_protocol(monkeypatch, make_root(tmp_path))
    output = run_protocol(study, 10)
    first = protocol.make_plan(study, {}).runs[0]
    assert re.search(rf"^== not starting {re.escape(first.name)}: needs ~\d+ s, \d+ s left$", output, re.M), output
    assert "0 of the 2 runs planned so far are done" in output
    assert not started(output)
    assert not os.path.exists(study.results) and not os.path.exists(study.out)


def test_a_run_too_long_for_the_budget_lets_a_shorter_one_after_it_start(tmp_path, monkeypatch):
    """The end of a call is not wasted: the highest-priority run that fits starts, named once as skipped."""
    study = tiny_protocol(monkeypatch, make_root(tmp_path))
    first, second = protocol.make_plan(study, {}).runs[:2]
    monkeypatch.setattr(protocol, "estimate_seconds", lambda study, run, compiled: 0 if run == second else 10**6)
    output = run_protocol(study, 600)
    assert started(output) == [(second.name, "tune")]
    assert len(re.findall(rf"^== not starting {re.escape(first.name)}: ", output, re.M)) == 1, output
    assert protocol.final_loss(study, second.name) is not None and protocol.final_loss(study, first.name) is None


def test_a_run_cut_at_the_budget_goes_on_in_the_next_invocation(tmp_path, monkeypatch):
    """finish_within beyond the budget (chained calls on one machine): a run too long for one invocation
    starts, saves and stops at the budget, and the next invocation resumes it from its checkpoint; its time
    estimate counts only the iterations it has left."""
    study = dataclasses.replace(tiny_protocol(monkeypatch, make_root(tmp_path)), T=10**6)  # never finishes here
    run = protocol.make_plan(study, {}).runs[0]
    assert "== not starting" in run_protocol(study, 3)
    done = []
    for call in range(2):
        output = run_protocol(study, 3, finish_within=math.inf)
        assert started(output) == [(run.name, "tune")]
        assert (", resuming)" in output) == (call == 1)
        done.append(protocol.iterations_done(study, run))
        assert f"== {run.name} stopped with its log at iteration {done[-1]} of {study.T}: the next invocation " \
               f"on this machine resumes it from out-tuned/" in output
        assert protocol.final_loss(study, run.name) is None
        assert protocol.known_losses(study) == {}
    log = protocol.read_metrics(os.path.join(study.out, run.name, "metrics.jsonl"))
    assert 0 <= done[0] < done[1] == log[-1]["iter"]
    resumed = [json.loads(line) for line in open(os.path.join(study.out, run.name, "metrics.jsonl"))
               if "resumed_from" in line]
    assert [r["resumed_from"] for r in resumed] == [done[0]]
    per_iter = protocol.seconds_per_iter(study, run.optimizer)
    assert per_iter != study.guess_seconds_per_iter  # measured on the cut-off run's records
    assert protocol.estimate_seconds(study, run, compiled=True) == pytest.approx(
        protocol.STARTUP_SECONDS + (study.T - done[1]) * per_iter)


def test_a_full_run_completes_the_plan(tiny):
    study, _, output, _, _, _ = tiny
    assert (study.results, study.out) == (os.path.join("results", "tuned"), "out-tuned")
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    assert set(plan.best) == {"adamw", "sophiag", "lion", "signmomentum"}
    assert sorted(name for name, _ in started(output)) == sorted(r.name for r in plan.runs)  # each once
    assert len(plan.runs) == 18  # tuning 2 + 2 + 1 + 2, finals 3 + 2 + 1 + 1, official 2, variants 2
    assert output.rstrip().endswith("== the protocol is complete")
    for run in plan.runs:
        folder = protocol.result_dir(study, run)
        if dict(run.overrides) == BAD_VARIANT:
            continue
        assert not os.path.exists(os.path.join(folder, "failed"))
        copied = os.path.join(folder, "metrics.jsonl")
        assert open(copied).read() == open(os.path.join(study.out, run.name, "metrics.jsonl")).read()
        records = [json.loads(line) for line in open(copied)]
        config = [r["config"] for r in records if "config" in r][-1]
        assert (config["max_iters"], config["learning_rate"], config["seed"]) == (run.iters, run.lr, run.seed)
        assert config["warmup_iters"] == run.warmup_iters
        final = [r["val/loss"] for r in records if r.get("iter") == run.iters and "val/loss" in r]
        assert protocol.final_loss(study, run.name) == losses[run.name] == final[-1] and math.isfinite(final[-1])
    # the tuned best of each optimizer is the lower of its two tuning runs at lr 1e-2 and 2e-2
    for optimizer in ("adamw", "sophiag", "signmomentum"):
        tune = [r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer]
        assert sorted(r.lr for r in tune) == [1e-2, 2e-2]
        assert plan.best[optimizer] == min(tune, key=lambda r: losses[r.name])
    assert plan.best["lion"].lr == plan.best["adamw"].lr / 8


def test_a_run_that_exits_with_an_error_is_failed_and_counts_as_inf(tiny):
    study, _, output, _, _, _ = tiny
    plan = protocol.make_plan(study)
    bad = [r for r in plan.runs if dict(r.overrides) == BAD_VARIANT]
    assert len(bad) == 1
    folder = protocol.result_dir(study, bad[0])
    assert open(os.path.join(folder, "failed")).read() == "train.py exited with status 1\n"
    assert os.path.exists(os.path.join(folder, "metrics.jsonl"))  # its log up to the divergence is kept
    assert protocol.final_loss(study, bad[0].name) == math.inf
    assert protocol.known_losses(study)[bad[0].name] == math.inf
    assert f"== {bad[0].name} failed: train.py exited with status 1" in output
    assert re.search(r"^error: the training loss is (nan|inf) at iteration \d", output, re.M), output


def test_a_run_train_py_would_refuse_stops_the_protocol_instead_of_failing(tmp_path, monkeypatch):
    """A config error is the protocol's bug (e.g. a grid point train.py cannot take): it must not be
    recorded as a failed run, which would count as infinitely bad and steer the tuning."""
    study = tiny_protocol(monkeypatch, make_root(tmp_path))
    run = dataclasses.replace(protocol.make_plan(study, {}).runs[0], overrides=(("no_such_key", 1),))
    with pytest.raises(ConfigError, match="unknown config key 'no_such_key'"):
        protocol.execute(study, run, math.inf)
    assert not os.path.exists(protocol.result_dir(study, run)) and not os.path.exists(study.out)


def test_a_second_invocation_runs_nothing(tiny):
    _, _, _, second, before, after = tiny
    assert not started(second)
    assert second.strip() == "== the protocol is complete"
    assert after == before and len(before) == 19  # 18 metrics.jsonl (the diverged run's too) and one `failed`


def test_finished_runs_whose_results_were_lost_are_collected_again_not_failed(tiny, tmp_path, monkeypatch):
    """A machine that kept out-<study>/ but got a results/ without the runs it finished there (as a fresh
    copy of the working tree does): each run resumes, has nothing to train, and its metrics come back."""
    study, root, _, _, before, _ = tiny
    shutil.copytree(root, tmp_path / "copy")
    monkeypatch.chdir(tmp_path / "copy")
    shutil.rmtree(study.results)
    output = run_protocol(study, math.inf)
    again = snapshot(study.results)
    diverged = [os.path.join(protocol.result_dir(study, r), "metrics.jsonl")
                for r in protocol.make_plan(study).runs if dict(r.overrides) == BAD_VARIANT]
    assert again.keys() == before.keys() and len(diverged) == 1 and diverged[0] in before

    def but_diverged(files):  # the diverged run saved no checkpoint: it ran again, with other timings
        return {path: data for path, data in files.items() if path != diverged[0]}
    assert but_diverged(again) == but_diverged(before)
    assert len(re.findall(r"^== \S+ \(\w+, resuming\)$", output, re.M)) == 17  # all but the diverged variant
    assert output.count(" failed: ") == 1


def test_the_report_over_the_tiny_results(tiny, tmp_path, monkeypatch):
    study, root = tiny[:2]
    monkeypatch.setattr(protocol_report, "OUT", str(tmp_path) + os.sep)
    out = str(tmp_path / "tuned_")
    monkeypatch.setattr(protocol, "ROOT", str(root))
    # one seed per group: every bootstrap resample is the same, so a few are enough
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=50))
    monkeypatch.setattr(compare, "difference_interval", functools.partial(compare.difference_interval, resamples=50))
    with contextlib.redirect_stdout(io.StringIO()):
        protocol_report.report(study)
    assert os.getcwd() == str(root)
    for name in ("report.md", "heatmaps.png", "win_rate.png", "diagnostics.png", "curves.md", "curves.png",
                 "official.md", "official.png", "variants.md", "variants.png"):
        assert os.path.getsize(out + name) > 0, name
    text = open(out + "report.md").read()

    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    finals = {n: [losses[r.name] for r in plan.runs if (r.phase, r.optimizer, r.iters) == ("final", "adamw", n)]
              for n in (TINY_T // 2, TINY_T, 2 * TINY_T)}
    assert np.all(np.diff([v[0] for v in finals.values()]) < 0), f"the tiny AdamW losses must fall: {finals}"
    sophia = [losses[r.name] for r in plan.runs if (r.phase, r.optimizer, r.iters) == ("final", "sophiag", TINY_T)]
    s = compare.speedup_interval(finals, sophia, TINY_T)
    limits = s["limits"]
    assert (f"**Verdict (the rule stated in advance): Sophia-G at T {compare.verdict(s['low'], s['high'])}** "
            f"(S = {compare.fmt_speedup(s['point'], limits)}, interval {compare.fmt_speedup(s['low'], limits)} – "
            f"{compare.fmt_speedup(s['high'], limits)}).") in text
    bad = [r.name for r in plan.runs if dict(r.overrides) == BAD_VARIANT][0]
    for line in ("# The tuned small-scale protocol: report", "all of the study's runs are done",
                 f"Failed runs (counted as infinitely bad): {bad}.",
                 "| lr | warmup iters (fraction) | rho | final val loss | mean win_rate |  |",
                 "| optimizer | lr | warmup | rho | val loss at T (seed 1337) |",
                 "| optimizer | iterations | final val loss (mean ± std) | ms per iteration (training only; mean, "
                 "range over runs) |",
                 "| optimizer | iterations | seeds | step speedup S | 95% interval | token speedup | wall-clock "
                 "speedup | under the rule |",
                 "## Is Sophia-G's Hessian helping? (against sign momentum at T)",
                 "| gradient | final val loss | clip rate | median gradient norm (before clipping) |",
                 "| Sophia-G | final val loss |", "| beta2=0.95 |"):
        assert line in text, line
    assert "| Sophia-G | 4 | 1 |" in text and "| AdamW | 8 | " in text


def test_the_report_gives_each_groups_time_per_iteration_with_its_range(tmp_path, monkeypatch):
    """Runs timed on different machines differ: the cell shows the mean and the range over runs, one run's time
    alone, nothing for a group without a complete run."""
    monkeypatch.chdir(tmp_path)  # results/tuned/ there
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    sophia = protocol_report.finals_of(plan, "sophiag", T)
    for run, ms in zip(sophia, (20, 22, 30)):
        write_metrics(TUNED, run, 3.3, ms_per_iter=(ms,))
    assert protocol_report.ms_per_iter_cell(TUNED, sophia) == "24.0 (20.0 – 30.0)"
    assert protocol_report.ms_per_iter_cell(TUNED, sophia[:1]) == "20.0"
    assert protocol_report.ms_per_iter_cell(TUNED, protocol_report.finals_of(plan, "lion", T)) == ""


def test_the_report_applies_the_rule_to_the_interval(tmp_path, monkeypatch):
    """Synthetic final runs (3 seeds; AdamW's without spread) where Sophia-G's S is 1.07 but its interval
    reaches past 1.1: the report's verdict is "inconclusive", from [low, high], and its numbers are compare's."""
    monkeypatch.chdir(tmp_path)  # results/tuned/ there
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=2000))
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    means = {("adamw", T // 2): 3.6, ("adamw", T): 3.3, ("adamw", 2 * T): 3.1, ("sophiag", T // 2): 3.7,
             ("sophiag", T): 3.28, ("lion", T): 3.45, ("signmomentum", T): 3.29}
    spread = dict(zip(TUNED.final_seeds, (-0.03, 0.0, 0.03)))
    for run in plan.runs:
        if run.phase == "final":
            losses[run.name] = means[run.optimizer, run.iters] + (spread[run.seed] if run.optimizer != "adamw" else 0)
            write_metrics(TUNED, run, losses[run.name])
    text, result = protocol_report.speedup_section(TUNED, plan, losses)
    text = "\n".join(text)
    adamw = {n: [means["adamw", n]] * 3 for n in ADAMW_LENGTHS}
    expected = compare.speedup_interval(adamw, [3.28 + d for d in spread.values()], T)
    assert result == expected
    assert result["point"] == pytest.approx(2 ** 0.1) and result["low"] < 1.1 <= result["high"]
    assert "**Verdict (the rule stated in advance): Sophia-G at T inconclusive** (S = 1.07x" in text
    assert re.search(r"^\| Sophia-G \| 600 \| 3 \| 1\.07x \| .* \| inconclusive \|$", text, re.M), text
    assert re.search(r"^\| Sophia-G \| 300 \| 3 \| ≤1\.00x \| ≤1\.00x – ≤1\.00x \| .* \| no gain \|$", text,
                     re.M)
    assert "AdamW's final val loss by length (mean over seeds): 300: 3.6000, 600: 3.3000, 1200: 3.1000." in text


def test_init_worker_takes_a_gpu_and_every_study_survives_pickling(monkeypatch):
    """A worker takes its GPU from the queue; the study travels to the spawned workers with each task
    (execute's first argument), pickled: every study comes back equal, with the same planner."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    gpus = queue.Queue()
    gpus.put(3)
    gpus.put(1)
    protocol.init_worker(gpus)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    protocol.init_worker(gpus)  # the next worker: the next GPU
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert set(protocol.STUDIES) == {"tuned", "inband", "bridge131k", "gpt2small"}
    for name, study in protocol.STUDIES.items():
        assert study.name == name
        copy = pickle.loads(pickle.dumps(study))
        assert copy == study and copy.planner is study.planner and copy.tuning == study.tuning
        assert (copy.results, copy.out) == (os.path.join("results", name), f"out-{name}")


def test_ctrl_c_stops_the_protocol_not_only_the_run(tmp_path, monkeypatch):
    study = dataclasses.replace(tiny_protocol(monkeypatch, make_root(tmp_path)), T=100)  # long enough to interrupt
    stop = threading.Event()

    def interrupt_each_run():  # SIGINT once a run's metrics.jsonl exists: train.py's handler is in place
        seen = set()
        while not stop.is_set():
            for path in glob.glob(os.path.join(str(tmp_path), study.out, "*", "metrics.jsonl")):
                if path not in seen:
                    seen.add(path)
                    os.kill(os.getpid(), signal.SIGINT)
            stop.wait(0.005)

    watcher = threading.Thread(target=interrupt_each_run, daemon=True)
    watcher.start()
    try:
        output = run_protocol(study, math.inf)
    finally:
        stop.set()
        watcher.join()
    assert output.count("stop requested") >= 1
    assert len(started(output)) == 1, started(output)


# ----------------------------------------------------------------------------- the 124M study end to end, tiny

def tiny_axes(monkeypatch, root):
    """One warmup and one rho, an lr axis of 1e-2 and 2e-2; in `root`."""
    monkeypatch.setattr(protocol, "WARMUPS", (1 / 4,))
    monkeypatch.setattr(protocol, "RHOS", (0.05,))
    monkeypatch.setattr(protocol, "LR_LIMITS", (1e-2, 2e-2))
    monkeypatch.setattr(protocol, "ROOT", str(root))
    monkeypatch.chdir(root)


@pytest.fixture(scope="module")
def tiny_gpt2small(tmp_path_factory):
    """The gpt2small study's planner at T = 4 on a 2-layer tiny GPT, scored on the whole val split, two final
    seeds, run to completion; then its report. Returns (the study, root)."""
    root = make_root(tmp_path_factory.mktemp("gpt2small"))
    val = root / "data" / "tiny" / "val.bin"  # 1,000 tokens (31 windows): every evaluation scores all of it
    val.write_bytes(val.read_bytes()[:2000])
    with pytest.MonkeyPatch.context() as mp:
        tiny_axes(mp, root)
        study = dataclasses.replace(
            protocol.GPT2_SMALL, scale_config=str(root / "tiny_scale.py"), T=TINY_T, final_seeds=(3001, 3002),
            settings=(("n_layer", 2), ("total_bs", 8), ("batch_size", 8), ("val_eval", "full")), tuning=protocol.Tuning(
                adamw=dict(lr=(1e-2,), warmup=(1 / 4,)), sophiag=dict(lr=(1e-2,), warmup=(1 / 4,), rho=(0.05,)),
                sophia_rhos=(0.05,), lion_factors=(1,), sign_factors=()))
        output = run_protocol(study, math.inf)
        mp.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=50))
        mp.setattr(protocol_report, "OUT", str(root) + os.sep)
        text = "\n".join(protocol_report.study_report(study, "tiny"))
        regime = protocol_report.measure("tiny", study, study)
    return study, root, output, text, regime


def test_the_tiny_124m_study_runs_every_phase(tiny_gpt2small, monkeypatch):
    study, root, output, _, _ = tiny_gpt2small
    tiny_axes(monkeypatch, root)
    losses = protocol.known_losses(study)
    plan = protocol.make_plan(study, losses)
    assert output.rstrip().endswith("== the protocol is complete")
    phases = [r.phase for r in plan.runs]
    # tuning 2 + 2 + 2 (lr 1e-2 and its neighbour 2e-2), finals 4 x 2 seeds, the sequential stage 2, the pair 2
    assert (phases.count("tune"), phases.count("final"), phases.count("sequential"), phases.count("noscale")) == (
        6, 8, 2, 2)
    lion = [i for i, r in enumerate(plan.runs) if r.optimizer == "lion"]
    assert lion == list(range(len(plan.runs) - 4, len(plan.runs)))  # its tuning and finals come last
    at_T = {o: np.mean([losses[r.name] for r in plan.runs if (r.phase, r.optimizer) == ("final", o)])
            for o in ("adamw", "sophiag")}
    sequential = {r.iters for r in plan.runs if r.phase == "sequential"}
    assert sequential == ({TINY_T // 2} if at_T["sophiag"] > at_T["adamw"] else {2 * TINY_T})
    for run in plan.runs:
        config = [r["config"] for r in protocol.records(study, run) if "config" in r][-1]
        assert config["val_eval"] == "full" and config["n_layer"] == 2
        assert config["scale_attn_by_inverse_layer_idx"] == (run.phase != "noscale")
    pairs = {r.optimizer: r for r in plan.runs if r.phase == "noscale"}
    for optimizer, run in pairs.items():  # with 2 layers the scaling changes the second layer: other losses
        twin = [r for r in plan.runs if (r.phase, r.optimizer, r.seed) == ("final", optimizer, run.seed)][0]
        assert losses[run.name] != losses[twin.name]


def test_the_tiny_124m_studys_report_and_claims(tiny_gpt2small):
    study, root, _, text, regime = tiny_gpt2small
    assert "Figures (in results/): gpt2small_heatmaps.png, gpt2small_curves.png (with its .md)." in text
    for name in ("heatmaps.png", "curves.png", "curves.md"):
        assert os.path.getsize(root / f"gpt2small_{name}") > 0, name
    for line in ("# tiny: report", "## Speedup over AdamW and the verdict",
                 "## Is Sophia-G's Hessian helping? (sign momentum minus Sophia-G at T, paired by seed)",
                 "## Clipping (fraction of steps whose gradient norm exceeded grad_clip = 1.0, final runs at T)",
                 "## Without the attention's inverse-layer scaling", "| AdamW (sequential) |"):
        assert line in text, line
    assert "**Verdict (the rule stated in advance): Sophia-G at T" in text
    assert regime.sophia is not None and regime.sophia["seeds"] == 2 and regime.sophia["iters"] == TINY_T
    assert set(regime.clip) == {"adamw", "sophiag", "signmomentum", "lion"} and regime.overhead is not None
    assert set(regime.others) == {"sign momentum", "Lion"} and regime.others["Lion"]["seeds"] == 2
    assert "| Lion | 4 |" in text  # its finals, beside the others
    # sign momentum runs at Sophia-G's tuned settings: it has no tuning run to wait for
    assert "sign momentum: no tuning runs of its own" in text and "not planned yet" not in text
    assert "| sign momentum | " in text and "| not tuned |" in text and "| to do |" not in text
    assert regime.control is not None and regime.control["seeds"] == [3001, 3002]
    assert set(regime.no_scaling) == {"adamw", "sophiag"}


# ----------------------------------------------------------------------------- the claims table

def speedup_row(point, low, high, token=0.9, wall=0.8):
    return dict(label="Sophia-G", iters=600, seeds=3, token=token, wall=wall,
                s=dict(point=point, low=low, high=high, relation="=", limits=(0.5, 2.0), dropped=0))


def control(diff, low, high, win_rate):
    return dict(diff=diff, low=low, high=high, seeds=[1, 2, 3], win_rate=win_rate,
                in_band=protocol.BAND[0] <= win_rate <= protocol.BAND[1])


def test_claims_rows_give_each_claim_its_word():
    Regime = protocol_report.Regime
    regimes = [Regime("a", sophia=speedup_row(0.66, 0.64, 0.68), overhead=0.28, clip=dict(adamw=0.08, sophiag=0.2),
                      control=control(-0.005, -0.012, 0.008, 0.11)),
               Regime("b", sophia=speedup_row(1.9, 1.6, 1.95), overhead=0.04,
                      clip=dict(adamw=0.3, sophiag=0.1, lion=0.4),
                      control=control(0.02, 0.01, 0.03, 0.02)),
               Regime("c", sophia=speedup_row(1.2, 1.12, 1.3), overhead=0.05, clip=dict(adamw=0.3, sophiag=0.1),
                      control=control(0.02, 0.01, 0.03, 0.3),
                      no_scaling=dict(adamw=(3.0, math.inf, 11.0), sophiag=(3.1, 3.12, 9.0)))]
    rows = {row[0]: row[1:] for row in protocol_report.claims_rows(regimes)}
    steps = rows["2x fewer steps to AdamW's loss (S, 95% interval)"]
    assert steps == ["0.66x (0.64x – 0.68x)", "1.90x (1.60x – 1.95x)", "1.20x (1.12x – 1.30x)", "mixed"]
    compute = rows["2x less compute (refresh batches counted as tokens)"]
    assert compute[0] == "0.59x (0.58x – 0.61x)"  # S x 0.9
    assert rows["Per-step time about 5% above AdamW's"] == ["+28.0%", "+4.0%", "+5.0%", "mixed"]
    clipping = rows["Gradient clipping triggered less often than with AdamW and Lion (clip rate)"]
    assert clipping == ["AdamW 0.080, Sophia-G 0.200", "AdamW 0.300, Sophia-G 0.100, Lion 0.400",
                        "AdamW 0.300, Sophia-G 0.100", "mixed"]
    hessian = rows["The Hessian helps: sign momentum minus Sophia-G in the win_rate band (nats, paired by seed)"]
    assert hessian[1] == "not a test: win_rate 0.020, outside the band"  # its interval is not counted
    assert hessian[3] == "mixed (not a test at b)" and hessian[2].startswith("+0.0200 (+0.0100 to +0.0300)")
    scaling = rows["Trains without the attention's layer-index scaling"]
    assert scaling[:2] == ["—", "—"] and scaling[3] == "yes" and "AdamW diverged" in scaling[2]
    size = rows["The gain grows with model size (S at 124M vs 30M, both 131k)"]
    assert size[2:] == ["S 1.20x vs 1.90x at 30M", "shrinks"]
    both = regimes[:2] + [dataclasses.replace(regimes[2], no_scaling=dict(adamw=(3.0, 2.9, 11.0),
                                                                          sophiag=(3.1, 3.12, 9.0)))]
    scaling = {row[0]: row[1:] for row in protocol_report.claims_rows(both)}[
        "Trains without the attention's layer-index scaling"]
    assert scaling[3] == "yes (so does AdamW)" and "AdamW stable (2.9000 without, 3.0000 with)" in scaling[2]

    same = [Regime("a", sophia=speedup_row(0.66, 0.64, 0.68)), Regime("b", sophia=speedup_row(0.7, 0.6, 0.75)),
            Regime("c")]
    rows = {row[0]: row[1:] for row in protocol_report.claims_rows(same)}
    assert rows["2x fewer steps to AdamW's loss (S, 95% interval)"][2:] == ["not run yet", "no (not measured at c)"]
    assert rows["The gain grows with model size (S at 124M vs 30M, both 131k)"][-1] == "not measured yet"
    partly = [Regime("a", control=control(-0.005, -0.012, 0.008, 0.11)), Regime("b", control=control(0, 0, 0, 0.02)),
              Regime("c")]
    hessian = protocol_report.claims_rows(partly)[5]
    assert hessian[-1] == "no (not a test at b; not measured at c)"
    grows = [Regime("a"), Regime("b", sophia=speedup_row(0.7, 0.6, 0.75)), Regime("c", sophia=speedup_row(1, 0.9, 1.1))]
    assert protocol_report.claims_rows(grows)[-1][-1] == "grows"


@pytest.fixture(scope="module")
def committed_claims():
    """The claims table from the committed records of every study, as the report makes it."""
    before = os.getcwd()
    try:
        regimes = [protocol_report.measure(*regime) for regime in protocol_report.REGIMES]
    finally:
        os.chdir(before)
    return protocol_report.claims_table(regimes), regimes


def test_the_committed_claims_table_is_the_reports_and_the_readmes(committed_claims):
    table, regimes = committed_claims
    assert table in open(os.path.join(REPO_ROOT, "results", "claims.md")).read()
    assert table in open(os.path.join(REPO_ROOT, "README.md")).read()
    small = regimes[0]  # the tuned protocol's S, as its report and the README state it
    assert compare.verdict(small.sophia["s"]["low"], small.sophia["s"]["high"]) == "no gain"
    assert small.control["in_band"] and small.control["seeds"] == [2001, 2002, 2003]


def test_the_committed_inband_report_is_what_the_records_give(committed_claims):
    control = committed_claims[1][0].control
    report = open(os.path.join(REPO_ROOT, "results", "inband_report.md")).read()
    assert (f"| {control['win_rate']:.3f} | " in report
            and f"{control['diff']:+.4f} ({control['low']:+.4f} to {control['high']:+.4f})" in report)


# ----------------------------------------------------------------------------- report robustness

def test_the_heatmaps_show_a_failed_sophia_tuning_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/tuned/ there
    first = protocol.make_plan(TUNED, {}).runs
    failed = [r for r in first if r.optimizer == "sophiag"][-1]  # e.g. diverged before its first log
    for i, run in enumerate(first):
        if run == failed:
            mark_failed(TUNED, run)
        else:
            write_metrics(TUNED, run, 4 + 0.01 * i)
    losses = protocol.known_losses(TUNED)
    assert losses[failed.name] == math.inf and len(losses) == 18
    protocol_report.plot_heatmaps(TUNED, protocol.make_plan(TUNED, losses), losses, str(tmp_path / "heatmaps.png"))
    assert os.path.getsize(tmp_path / "heatmaps.png") > 0


def test_the_speedup_section_survives_a_failed_final_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/tuned/ there
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=200))
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    finals = [r for r in plan.runs if r.phase == "final"]
    for run in finals:
        losses[run.name] = 3.2 - 0.3 * math.log2(run.iters / T) - 0.2 * (run.optimizer == "adamw")
        write_metrics(TUNED, run, losses[run.name])
    failed = finals[0]  # AdamW at T/2, the first seed: train.py refused to start it
    assert (failed.optimizer, failed.iters) == ("adamw", T // 2)
    os.remove(os.path.join(protocol.result_dir(TUNED, failed), "metrics.jsonl"))
    mark_failed(TUNED, failed)
    losses[failed.name] = math.inf
    text, result = protocol_report.speedup_section(TUNED, plan, losses)
    assert result is not None and "**Verdict (the rule stated in advance): Sophia-G at T" in "\n".join(text)


# ----------------------------------------------------------------------------- the committed results

VERDICTS = ("reproduces the 2x claim at this scale", "no gain", "a smaller gain", "inconclusive")


@pytest.fixture(scope="module")
def committed():
    """The plan and losses of results/tuned/ (read from the repository root), the final losses of AdamW by
    length, of Sophia-G and of sign momentum at T, and Sophia-G's speedup at T as the report computes it."""
    before = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        losses = protocol.known_losses(TUNED)
        plan = protocol.make_plan(TUNED, losses)
    finally:
        os.chdir(before)

    def finals(optimizer, n):
        return [losses[r.name] for r in plan.runs if (r.phase, r.optimizer, r.iters, r.overrides) ==
                ("final", optimizer, n, ()) and r.name in losses]

    adamw, sophia = {n: finals("adamw", n) for n in ADAMW_LENGTHS}, finals("sophiag", T)
    speedup = compare.speedup_interval(adamw, sophia, T) if all(adamw.values()) and sophia else None
    return plan, losses, adamw, sophia, finals("signmomentum", T), speedup


def test_the_committed_results_leave_nothing_to_do(committed):
    plan, losses = committed[:2]
    assert [r.name for r in plan.runs if r.name not in losses] == []
    assert all(math.isfinite(losses[r.name]) for r in plan.runs)
    assert set(plan.best) == {"adamw", "sophiag", "lion", "signmomentum"}
    phases = [r.phase for r in plan.runs]
    assert (phases.count("final"), phases.count("official"), phases.count("variant")) == (21, 6, 6)
    for optimizer, best in plan.best.items():  # each best is a local optimum, interior to its lr axis
        steps = steps_along(best, AXES[optimizer])
        assert all(losses[step.name] > losses[best.name] for step in steps)
        assert sorted(step.lr for step in steps if step.lr != best.lr) == [best.lr / 2, best.lr * 2]
    # ... and to its warmup axis (the README says so of AdamW and Sophia-G)
    for optimizer in ("adamw", "sophiag"):
        steps = steps_along(plan.best[optimizer], ("warmup",))
        assert len(steps) == 2 and all(losses[step.name] > losses[plan.best[optimizer].name] for step in steps)


def test_the_committed_results_give_the_reported_verdict(committed):
    """The verdict the code computes from results/tuned/ is "no gain", and results/tuned_report.md (the
    README's result is taken from it) states it with the same numbers."""
    _, _, adamw, sophia, sign, s = committed
    assert all(len(v) == 3 for v in adamw.values()) and len(sophia) == len(sign) == 3
    verdict = compare.verdict(s["low"], s["high"])
    assert verdict == "no gain"
    assert s["relation"] == "=" and s["high"] < 1.1
    fmt = functools.partial(compare.fmt_speedup, limits=s["limits"])
    report = open(os.path.join(REPO_ROOT, "results", "tuned_report.md")).read()
    assert (f"**Verdict (the rule stated in advance): Sophia-G at T {verdict}** (S = {fmt(s['point'])}, "
            f"interval {fmt(s['low'])} – {fmt(s['high'])}).") in report
    assert ("AdamW's final val loss by length (mean over seeds): " +
            ", ".join(f"{n}: {np.mean(v):.4f}" for n, v in adamw.items()) + ".") in report
    diff, low, high = compare.difference_interval(sign, sophia)
    assert f"Sign momentum's final val loss minus Sophia-G's: {diff:+.4f} (95% interval {low:+.4f} to {high:+.4f};" \
        in report


def test_the_studies_page_states_the_computed_verdict(committed):
    """docs/studies.md's result of the tuned protocol states the computed verdict, S and its interval, and no other
    verdict (skipped while it says that the runs are in progress)."""
    s = committed[-1]
    readme = open(os.path.join(REPO_ROOT, "docs", "studies.md")).read()
    section = readme.split("## Result: the tuned small-scale protocol")[1].split("\n## ")[0]
    measured = section.split("### What we measured")[1].split("\n### ")[0]
    if "(The runs are in progress" in measured:
        pytest.skip("docs/studies.md's result of the tuned protocol is not filled in yet")
    verdict = compare.verdict(s["low"], s["high"])
    assert f"**Verdict, under the rule above: {verdict}.**" in measured
    assert not [v for v in VERDICTS if v != verdict and v in measured]
    fmt = functools.partial(compare.fmt_speedup, limits=s["limits"])
    assert f"S = {fmt(s['point'])} (95% interval {fmt(s['low'])} – {fmt(s['high'])})" in measured
