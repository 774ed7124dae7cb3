"""Tests for the tuned protocol (scripts/protocol.py) and its report (scripts/protocol_report.py).

1. The planner, as pure functions: the runs' names and train.py arguments, the neighbour steps, the first
   plan, and whole tunings simulated by feeding back losses from a smooth function with a known optimum
   (the search must find it, widening past the initial grid where needed, and plan the later phases).
2. The protocol end to end on a tiny scale, in this process (one worker): T = 4 iterations of the tiny
   GPT of tests/test_train.py, grids of one value, an lr axis of two; a budget too small, a full run, a
   second invocation, a run that exits with an error; then the report over those results.
3. The committed results (results/tuned/): the plan is complete, and the verdict the code computes is the
   one results/tuned_report.md and the README state.
"""

import contextlib
import dataclasses
import functools
import glob
import io
import json
import math
import os
import queue
import re
import signal
import sys
import threading

import numpy as np
import pytest

from configurator import load_config, make_config
from conftest import write_tiny_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import protocol_report  # noqa: E402

protocol = protocol_report.protocol  # the same modules the report uses, so that monkeypatches reach it
compare = protocol_report.compare

T = protocol.T
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
    def config(run, resume=False):
        argv = run.train_args("out-x", resume)
        assert argv[1] == protocol.SCALE_CONFIG
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

    sophia = protocol.Run("tune", "sophiag", 2.5e-4, 1 / 12, 600, 1337, rho=0.2)
    assert config(sophia).rho == 0.2 and config(sophia).hess_interval == 10
    assert "--rho" not in " ".join(adamw.train_args("out-x", False))

    official = config(dataclasses.replace(adamw, phase="official", overrides=(
        ("total_bs", 60), ("batch_size", 10), ("grad_accumulation", "sum"))))
    assert (official.total_bs, official.batch_size, official.grad_accumulation) == (60, 10, "sum")
    variant = config(dataclasses.replace(sophia, phase="variant", overrides=(("hessian_bias_correction", True),)))
    assert variant.hessian_bias_correction is True


def test_neighbours_step_along_each_axis_within_its_limits():
    run = protocol.tuning_run("sophiag", 1e-3, 1 / 4, 0.05)
    assert {(r.lr, r.warmup, r.rho) for r in protocol.neighbours(run, ("lr", "warmup", "rho"))} == {
        (5e-4, 1 / 4, 0.05), (2e-3, 1 / 4, 0.05), (1e-3, 1 / 12, 0.05), (1e-3, 1 / 2, 0.05),
        (1e-3, 1 / 4, 0.0125), (1e-3, 1 / 4, 0.2)}
    assert {r.lr for r in protocol.neighbours(run, ("lr",))} == {5e-4, 2e-3}
    edge = protocol.tuning_run("sophiag", 0.1, 1, 3.2)  # at the top of every axis
    assert {(r.lr, r.warmup, r.rho) for r in protocol.neighbours(edge, ("lr", "warmup", "rho"))} == {
        (0.05, 1, 3.2), (0.1, 7 / 8, 3.2), (0.1, 1, 0.8)}
    bottom = protocol.tuning_run("adamw", 1e-5, 1 / 24)
    assert {(r.lr, r.warmup) for r in protocol.neighbours(bottom, ("lr", "warmup"))} == {(2e-5, 1 / 24), (1e-5, 1 / 12)}
    assert {r.lr for r in protocol.neighbours(protocol.tuning_run("lion", 0.05, 1 / 4), ("lr",))} == {0.025, 0.1}
    assert {r.lr for r in protocol.neighbours(protocol.tuning_run("lion", 2e-5, 1 / 4), ("lr",))} == {1e-5, 4e-5}


# ----------------------------------------------------------------------------- results

def write_metrics(run, loss, win_rate=0.2, stop_at=None, ms_per_iter=(20,)):
    """A run's results/ metrics.jsonl: its config, training records every 10 iterations (ms_per_iter in
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
    folder = protocol.result_dir(run)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def mark_failed(run):
    os.makedirs(protocol.result_dir(run), exist_ok=True)
    with open(os.path.join(protocol.result_dir(run), "failed"), "w") as f:
        f.write("train.py exited with status 1\n")


def test_final_loss_and_known_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocol, "RESULTS", "results")
    assert protocol.known_losses() == {}  # no results/ yet
    done, cut, failed, resumed = (protocol.tuning_run("adamw", lr, 1 / 4) for lr in (1e-3, 2e-3, 4e-3, 8e-3))
    write_metrics(done, 4.5)
    write_metrics(cut, 4.6, stop_at=300)  # no evaluation at max_iters: not done
    write_metrics(failed, 4.7, stop_at=100)
    mark_failed(failed)
    short = dataclasses.replace(resumed, iters=300)  # its log starts as a complete 300-iteration run's ...
    write_metrics(short, 4.9)
    os.rename(protocol.result_dir(short), protocol.result_dir(resumed))
    with open(os.path.join(protocol.result_dir(resumed), "metrics.jsonl"), "a") as f:  # ... then goes on to 600
        f.write(json.dumps({"config": dataclasses.asdict(make_config(optimizer_name="adamw", max_iters=600))}) + "\n")
        f.write(json.dumps({"iter": 310, "train/loss": 5.0}) + "\n")
    (tmp_path / "results" / "notes.md").write_text("not a run\n")
    assert protocol.final_loss(done.name) == 4.5
    assert protocol.final_loss(cut.name) is None and protocol.final_loss(resumed.name) is None
    assert protocol.final_loss(failed.name) == math.inf
    assert protocol.final_loss("never-run") is None
    assert protocol.known_losses() == {done.name: 4.5, failed.name: math.inf}


def test_the_time_estimate_uses_the_slowest_measured_speed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocol, "RESULTS", "results")
    run = protocol.tuning_run("sophiag", 1e-3, 1 / 4, 0.05)
    guess = protocol.GUESS_SECONDS_PER_ITER
    assert protocol.seconds_per_iter("sophiag") == guess
    write_metrics(run, 5.0, ms_per_iter=(30, 40, 90))  # median 40 ms
    write_metrics(dataclasses.replace(run, lr=2e-3), 5.0, ms_per_iter=(50, 60, 70))  # median 60 ms
    write_metrics(protocol.tuning_run("signmomentum", 1e-3, 1 / 4), 5.0, ms_per_iter=(500, 500, 500))
    assert protocol.seconds_per_iter("sophiag") == pytest.approx(0.06)
    assert protocol.seconds_per_iter("adamw") == guess
    assert protocol.estimate_seconds(run, compiled=True) == pytest.approx(protocol.STARTUP_SECONDS + 600 * 0.06)
    assert protocol.estimate_seconds(run, compiled=False) == pytest.approx(
        protocol.STARTUP_SECONDS + protocol.COMPILE_SECONDS + 600 * 0.06)
    official = protocol.Run("official", "adamw", 1e-3, 1 / 4, 600, 2001)  # smaller micro-batches: slower
    assert protocol.estimate_seconds(official, compiled=True) > protocol.STARTUP_SECONDS + 600 * guess


# ----------------------------------------------------------------------------- the planner

def test_the_first_plan_is_the_two_grids():
    plan = protocol.make_plan({})
    assert plan.best == {}
    assert all((r.phase, r.seed, r.iters) == ("tune", protocol.TUNE_SEED, T) for r in plan.runs)
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
    runs end lower, seeds differ a little. `fails(run)` marks runs that fail (loss inf)."""
    optimum: dict  # optimizer -> dict(lr=..., warmup=..., rho=...) (the keys its search has)
    fails: object = None

    def __call__(self, run):
        if self.fails and self.fails(run):
            return math.inf
        opt = self.optimum[run.optimizer]
        distance = math.log2(run.lr / opt["lr"]) ** 2
        if "warmup" in opt:
            distance += 0.7 * (protocol.WARMUPS.index(run.warmup) - protocol.WARMUPS.index(opt["warmup"])) ** 2
        if "rho" in opt:
            distance += 0.4 * (protocol.RHOS.index(run.rho) - protocol.RHOS.index(opt["rho"])) ** 2
        return (BASE_LOSS[run.optimizer] + 0.1 * distance - 0.3 * math.log2(run.iters / T)
                + 0.001 * (run.seed % 7) + 0.01 * len(run.overrides))


def simulate(loss, one_at_a_time=False, max_rounds=500):
    """Plan, give the to-do runs (all, or the first) their loss, and again until nothing is left."""
    losses = {}
    for _ in range(max_rounds):
        plan = protocol.make_plan(losses)
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


def check_completed_plan(plan, losses, expected_best):
    """The properties every completed plan has, and the tuned settings `expected_best`."""
    names = [r.name for r in plan.runs]
    assert len(set(names)) == len(names), "run names are not unique"
    assert set(plan.best) == set(AXES)
    for optimizer, best in plan.best.items():
        tune = [r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer]
        assert best in tune and math.isfinite(losses[best.name])
        assert losses[best.name] == min(losses[r.name] for r in tune)
        for axis, value in expected_best[optimizer].items():
            assert getattr(best, axis) == pytest.approx(value, rel=1e-9), (optimizer, axis, best)
        for step in steps_along(best, AXES[optimizer]):  # a local optimum: every neighbour tried and worse
            assert step in tune, f"{optimizer}: the neighbour {step.name} of the best is untried"
            assert losses[step.name] > losses[best.name]
        assert all(r.seed == protocol.TUNE_SEED and r.iters == T for r in tune)

    later = [r for r in plan.runs if r.phase != "tune"]
    assert all(r.seed in protocol.FINAL_SEEDS for r in later) and protocol.TUNE_SEED not in protocol.FINAL_SEEDS
    lengths = {"adamw": ADAMW_LENGTHS, "sophiag": (T // 2, T), "lion": (T,), "signmomentum": (T,)}
    for optimizer, best in plan.best.items():
        finals = [r for r in later if r.phase == "final" and r.optimizer == optimizer]
        assert sorted((r.iters, r.seed) for r in finals) == sorted(
            (n, s) for n in lengths[optimizer] for s in protocol.FINAL_SEEDS)
        for r in finals:
            assert (r.lr, r.warmup, r.rho, r.overrides) == (best.lr, best.warmup, best.rho, ())
            assert r.warmup_iters == round(best.warmup * r.iters)
    official = [r for r in later if r.phase == "official"]
    assert len(official) == 6 and all(r.optimizer == "adamw" and r.iters == T for r in official)
    assert sorted((r.seed, dict(r.overrides)["grad_accumulation"]) for r in official) == sorted(
        (s, how) for s in protocol.FINAL_SEEDS for how in ("mean", "sum"))
    assert all(dict(r.overrides)["total_bs"] == 60 and dict(r.overrides)["batch_size"] == 10 for r in official)
    assert all((r.lr, r.warmup) == (plan.best["adamw"].lr, plan.best["adamw"].warmup) for r in official)
    variants = [r for r in later if r.phase == "variant"]
    assert len(variants) == 6 and all(r.optimizer == "sophiag" and r.iters == T for r in variants)
    assert sorted((r.overrides, r.seed) for r in variants) == sorted(
        (o, s) for o in ((("hessian_bias_correction", True),), (("beta2", 0.95),)) for s in protocol.FINAL_SEEDS)
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
    # the second grid: every lr tried at the best warmup of the first search (7/8 at rho 0.05), x SOPHIA_RHOS
    first = {r.lr for r in sophia if r.rho == 0.05 and r.warmup == 7 / 8}
    assert len(first) >= 3
    assert {(lr, rho) for lr in first for rho in protocol.SOPHIA_RHOS} <= {
        (r.lr, r.rho) for r in sophia if r.warmup == 7 / 8}


def test_later_phases_wait_for_the_tuning_they_start_from():
    plan = protocol.make_plan({})
    bowl = Bowl(SCENARIOS["in the grid"][0])
    losses = {r.name: bowl(r) for r in plan.runs if r.optimizer == "adamw"}
    while True:  # finish AdamW's tuning only
        todo = [r for r in protocol.make_plan(losses).runs if r.optimizer == "adamw" and r.phase == "tune"
                and r.name not in losses]
        if not todo:
            break
        losses.update({r.name: bowl(r) for r in todo})
    plan = protocol.make_plan(losses)
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


# ----------------------------------------------------------------------------- end to end, tiny

TINY_SCALE = dict(dataset="tiny", device="cpu", dtype="float32", compile=False, n_layer=1, n_head=2, n_embd=32,
                  block_size=32, batch_size=2, total_bs=2, eval_interval=5, eval_iters=1, log_interval=1,
                  hess_interval=2, checkpoint_interval=100000)
TINY_T = 4
BAD_VARIANT = {"no_such_key": 1}  # train.py refuses it: that run exits with an error


def tiny_protocol(monkeypatch, root):
    """The protocol at T = 4 on the tiny GPT, in `root`: one value per grid, an lr axis of 1e-2 and 2e-2
    (each optimizer's best gets one neighbour), one final seed, two variants of which one is invalid."""
    monkeypatch.setattr(protocol, "SCALE_CONFIG", str(root / "tiny_scale.py"))
    monkeypatch.setattr(protocol, "T", TINY_T)
    monkeypatch.setattr(protocol, "RESULTS", os.path.join("results", "tuned"))
    monkeypatch.setattr(protocol, "OUT", "out-tuned")
    monkeypatch.setattr(protocol, "ADAMW_GRID", dict(lr=(1e-2,), warmup=(1 / 4,)))
    monkeypatch.setattr(protocol, "SOPHIA_GRID", dict(lr=(1e-2,), warmup=(1 / 4,), rho=(0.05,)))
    monkeypatch.setattr(protocol, "SOPHIA_RHOS", (0.05,))
    monkeypatch.setattr(protocol, "WARMUPS", (1 / 4,))
    monkeypatch.setattr(protocol, "RHOS", (0.05,))
    monkeypatch.setattr(protocol, "LR_LIMITS", (1e-2, 2e-2))
    monkeypatch.setattr(protocol, "LION_LR_FACTORS", (1 / 8,))
    monkeypatch.setattr(protocol, "SIGN_LR_FACTORS", (1,))
    monkeypatch.setattr(protocol, "FINAL_SEEDS", (2001,))
    monkeypatch.setattr(protocol, "OFFICIAL", dict(total_bs=2, batch_size=1))
    monkeypatch.setattr(protocol, "VARIANTS", ({"beta2": 0.95}, BAD_VARIANT))
    monkeypatch.chdir(root)


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


def run_protocol(budget):
    """protocol.run_protocol(budget, 1 worker), its output (stdout and stderr) returned."""
    out = io.StringIO()
    with signal_handlers_kept(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        protocol.run_protocol(budget, 1)
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
        tiny_protocol(mp, root)
        first = run_protocol(math.inf)
        before = snapshot(protocol.RESULTS)
        second = run_protocol(math.inf)
        after = snapshot(protocol.RESULTS)
    return root, first, second, before, after


@pytest.fixture
def tiny(tiny_done, monkeypatch):
    """The tiny protocol's settings again (the module fixture undid them), in its folder."""
    tiny_protocol(monkeypatch, tiny_done[0])
    return tiny_done


def test_a_budget_too_small_starts_nothing_and_says_so(tmp_path, monkeypatch):
    tiny_protocol(monkeypatch, make_root(tmp_path))
    output = run_protocol(10)
    first = protocol.make_plan({}).runs[0]
    assert re.search(rf"^== not starting {re.escape(first.name)}: needs ~\d+ s, \d+ s left$", output, re.M), output
    assert "0 of the 2 runs planned so far are done" in output
    assert not started(output)
    assert not os.path.exists(protocol.RESULTS) and not os.path.exists(protocol.OUT)


def test_a_full_run_completes_the_plan(tiny):
    _, output, _, _, _ = tiny
    losses = protocol.known_losses()
    plan = protocol.make_plan(losses)
    assert set(plan.best) == {"adamw", "sophiag", "lion", "signmomentum"}
    assert sorted(name for name, _ in started(output)) == sorted(r.name for r in plan.runs)  # each once
    assert len(plan.runs) == 18  # tuning 2 + 2 + 1 + 2, finals 3 + 2 + 1 + 1, official 2, variants 2
    assert output.rstrip().endswith("== the protocol is complete")
    for run in plan.runs:
        folder = protocol.result_dir(run)
        if dict(run.overrides) == BAD_VARIANT:
            continue
        assert not os.path.exists(os.path.join(folder, "failed"))
        copied = os.path.join(folder, "metrics.jsonl")
        assert open(copied).read() == open(os.path.join(protocol.OUT, run.name, "metrics.jsonl")).read()
        records = [json.loads(line) for line in open(copied)]
        config = [r["config"] for r in records if "config" in r][-1]
        assert (config["max_iters"], config["learning_rate"], config["seed"]) == (run.iters, run.lr, run.seed)
        assert config["warmup_iters"] == run.warmup_iters
        final = [r["val/loss"] for r in records if r.get("iter") == run.iters and "val/loss" in r]
        assert protocol.final_loss(run.name) == losses[run.name] == final[-1] and math.isfinite(final[-1])
    # the tuned best of each optimizer is the lower of its two tuning runs at lr 1e-2 and 2e-2
    for optimizer in ("adamw", "sophiag", "signmomentum"):
        tune = [r for r in plan.runs if r.phase == "tune" and r.optimizer == optimizer]
        assert sorted(r.lr for r in tune) == [1e-2, 2e-2]
        assert plan.best[optimizer] == min(tune, key=lambda r: losses[r.name])
    assert plan.best["lion"].lr == plan.best["adamw"].lr / 8


def test_a_run_that_exits_with_an_error_is_failed_and_counts_as_inf(tiny):
    _, output, _, _, _ = tiny
    plan = protocol.make_plan(protocol.known_losses())
    bad = [r for r in plan.runs if dict(r.overrides) == BAD_VARIANT]
    assert len(bad) == 1
    folder = protocol.result_dir(bad[0])
    assert open(os.path.join(folder, "failed")).read() == "train.py exited with status 1\n"
    assert not os.path.exists(os.path.join(folder, "metrics.jsonl"))
    assert protocol.final_loss(bad[0].name) == math.inf and protocol.known_losses()[bad[0].name] == math.inf
    assert f"== {bad[0].name} failed: train.py exited with status 1" in output
    assert "error: unknown config key 'no_such_key'" in output


def test_a_second_invocation_runs_nothing(tiny):
    _, _, second, before, after = tiny
    assert not started(second)
    assert second.strip() == "== the protocol is complete"
    assert after == before and len(before) == 18  # 17 metrics.jsonl and one `failed`


def test_the_report_over_the_tiny_results(tiny, tmp_path, monkeypatch):
    root = tiny[0]
    out = str(tmp_path / "tuned_")
    monkeypatch.setattr(protocol_report, "OUT", out)
    monkeypatch.setattr(protocol, "ROOT", str(root))
    # one seed per group: every bootstrap resample is the same, so a few are enough
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=50))
    monkeypatch.setattr(compare, "difference_interval", functools.partial(compare.difference_interval, resamples=50))
    with contextlib.redirect_stdout(io.StringIO()):
        protocol_report.report()
    assert os.getcwd() == str(root)
    for name in ("report.md", "heatmaps.png", "win_rate.png", "diagnostics.png", "curves.md", "curves.png",
                 "official.md", "official.png", "variants.md", "variants.png"):
        assert os.path.getsize(out + name) > 0, name
    text = open(out + "report.md").read()

    losses = protocol.known_losses()
    plan = protocol.make_plan(losses)
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
    for line in ("# The tuned small-scale protocol: report", "all of the protocol's runs are done",
                 f"Failed runs (counted as infinitely bad): {bad}.",
                 "| lr | warmup iters (fraction) | rho | final val loss | mean win_rate |  |",
                 "| optimizer | lr | warmup | rho | val loss at T (seed 1337) |",
                 "| optimizer | iterations | final val loss (mean ± std) | ms per iteration (training only) |",
                 "| optimizer | iterations | seeds | step speedup S | 95% interval | token speedup | wall-clock "
                 "speedup | under the rule |",
                 "## Is Sophia-G's Hessian helping? (against sign momentum at T)",
                 "| gradient | final val loss | clip rate | median gradient norm (before clipping) |",
                 "| Sophia-G | final val loss |", "| beta2=0.95 |"):
        assert line in text, line
    assert "| Sophia-G | 4 | 1 |" in text and "| AdamW | 8 | " in text


def test_the_report_applies_the_rule_to_the_interval(tmp_path, monkeypatch):
    """Synthetic final runs (3 seeds; AdamW's without spread) where Sophia-G's S is 1.07 but its interval
    reaches past 1.1: the report's verdict is "inconclusive", from [low, high], and its numbers are compare's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocol, "RESULTS", "results")
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=2000))
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    means = {("adamw", T // 2): 3.6, ("adamw", T): 3.3, ("adamw", 2 * T): 3.1, ("sophiag", T // 2): 3.7,
             ("sophiag", T): 3.28, ("lion", T): 3.45, ("signmomentum", T): 3.29}
    spread = dict(zip(protocol.FINAL_SEEDS, (-0.03, 0.0, 0.03)))
    for run in plan.runs:
        if run.phase == "final":
            losses[run.name] = means[run.optimizer, run.iters] + (spread[run.seed] if run.optimizer != "adamw" else 0)
            write_metrics(run, losses[run.name])
    text, result = protocol_report.speedup_section(plan, losses)
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


def test_init_worker_takes_a_gpu_and_the_planner_settings(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for name in protocol.SETTINGS:
        monkeypatch.setattr(protocol, name, getattr(protocol, name))  # put back afterwards
    gpus = queue.Queue()
    gpus.put(3)
    settings = dict(RESULTS="r", OUT="o", SCALE_CONFIG="s.py", T=8)
    assert set(settings) == set(protocol.SETTINGS)
    protocol.init_worker(gpus, settings)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert (protocol.RESULTS, protocol.OUT, protocol.SCALE_CONFIG, protocol.T) == ("r", "o", "s.py", 8)
    run = protocol.tuning_run("adamw", 1e-3, 1 / 4)
    assert run.iters == 8 and protocol.result_dir(run) == os.path.join("r", run.name)
    assert run.train_args("o", False)[1] == "s.py"


def test_ctrl_c_stops_the_protocol_not_only_the_run(tmp_path, monkeypatch):
    tiny_protocol(monkeypatch, make_root(tmp_path))
    monkeypatch.setattr(protocol, "T", 100)  # long enough to be interrupted at its start
    stop = threading.Event()

    def interrupt_each_run():  # SIGINT once a run's metrics.jsonl exists: train.py's handler is in place
        seen = set()
        while not stop.is_set():
            for path in glob.glob(os.path.join(str(tmp_path), protocol.OUT, "*", "metrics.jsonl")):
                if path not in seen:
                    seen.add(path)
                    os.kill(os.getpid(), signal.SIGINT)
            stop.wait(0.005)

    watcher = threading.Thread(target=interrupt_each_run, daemon=True)
    watcher.start()
    try:
        output = run_protocol(math.inf)
    finally:
        stop.set()
        watcher.join()
    assert output.count("stop requested") >= 1
    assert len(started(output)) == 1, started(output)


# ----------------------------------------------------------------------------- report robustness

def test_the_heatmaps_show_a_failed_sophia_tuning_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocol, "RESULTS", "results")
    first = protocol.make_plan({}).runs
    failed = [r for r in first if r.optimizer == "sophiag"][-1]  # e.g. diverged before its first log
    for i, run in enumerate(first):
        if run == failed:
            mark_failed(run)
        else:
            write_metrics(run, 4 + 0.01 * i)
    losses = protocol.known_losses()
    assert losses[failed.name] == math.inf and len(losses) == 18
    protocol_report.plot_heatmaps(protocol.make_plan(losses), losses, str(tmp_path / "heatmaps.png"))
    assert os.path.getsize(tmp_path / "heatmaps.png") > 0


def test_the_speedup_section_survives_a_failed_final_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(protocol, "RESULTS", "results")
    monkeypatch.setattr(compare, "speedup_interval", functools.partial(compare.speedup_interval, resamples=200))
    plan, losses = simulate(Bowl(SCENARIOS["in the grid"][0]))
    finals = [r for r in plan.runs if r.phase == "final"]
    for run in finals:
        losses[run.name] = 3.2 - 0.3 * math.log2(run.iters / T) - 0.2 * (run.optimizer == "adamw")
        write_metrics(run, losses[run.name])
    failed = finals[0]  # AdamW at T/2, the first seed: train.py refused to start it
    assert (failed.optimizer, failed.iters) == ("adamw", T // 2)
    os.remove(os.path.join(protocol.result_dir(failed), "metrics.jsonl"))
    mark_failed(failed)
    losses[failed.name] = math.inf
    text, result = protocol_report.speedup_section(plan, losses)
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
        losses = protocol.known_losses()
        plan = protocol.make_plan(losses)
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


def test_the_readme_states_the_computed_verdict(committed):
    """The README's result of the tuned protocol states the computed verdict, S and its interval, and no other
    verdict (skipped while it says that the runs are in progress)."""
    s = committed[-1]
    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    section = readme.split("## Result: the tuned small-scale protocol")[1].split("\n## ")[0]
    measured = section.split("### What we measured")[1].split("\n### ")[0]
    if "(The runs are in progress" in measured:
        pytest.skip("the README's result of the tuned protocol is not filled in yet")
    verdict = compare.verdict(s["low"], s["high"])
    assert f"**Verdict, under the rule above: {verdict}.**" in measured
    assert not [v for v in VERDICTS if v != verdict and v in measured]
    fmt = functools.partial(compare.fmt_speedup, limits=s["limits"])
    assert f"S = {fmt(s['point'])} (95% interval {fmt(s['low'])} – {fmt(s['high'])})" in measured
