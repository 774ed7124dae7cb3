"""The project's structure rules, checked on the code itself: the config schema and the report tools need no
torch; the run folder's file names are spelled in one place; a run's parts hold no reference cycle (a run
is freed as soon as it is dropped, with no gc.collect()); each Sophia optimizer has one default rho; the bs of
Sophia's steps is the one its last refresh recorded, also for checkpoints written before it was recorded."""

import ast
import gc
import glob
import os
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import REPO_ROOT, tiny_config

import train
from sophia import SophiaG, SophiaH
from training.distributed import init_distributed
from training.rundir import CHECKPOINT, LOCK, METRICS
from training.state import keep_hessian_bs, load_state, state_dict


def test_the_schema_and_the_report_tools_import_without_torch():
    """With torch made unimportable, the config schema, the run folder, the metrics reader, the comparison tool
    and the studies' planner and report still import."""
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, 'scripts'); "
            "import training.config, training.rundir, training.metrics, compare, protocol, protocol_report; "
            "print('torch-free')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "torch-free", result.stderr[-2000:]


def python_files():
    for path in glob.glob(os.path.join(REPO_ROOT, "**", "*.py"), recursive=True):
        relative = os.path.relpath(path, REPO_ROOT)
        if not relative.startswith(("tests", ".venv", "build")):
            yield relative, path


def test_the_run_folder_file_names_are_spelled_once():
    """No Python file outside tests writes ckpt.pt, metrics.jsonl or train.lock as a string of its own:
    every one names them through training/rundir.py, which spells each once."""
    spelled = {}
    for relative, path in python_files():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Constant) and node.value in (CHECKPOINT, METRICS, LOCK):
                spelled.setdefault(node.value, []).append(f"{relative}:{node.lineno}")
    assert spelled == {name: [spelled[name][0]] for name in spelled}, spelled
    assert {where.split(":")[0] for places in spelled.values() for where in places} == {"training/rundir.py"}


def test_a_run_is_freed_when_it_is_dropped(data_root, tmp_path, monkeypatch):
    """The parts of a run (Sophia-G with both refresh batches, Sophia-H) reference each other one way only:
    dropping the run frees its model and optimizer at once, with the garbage collector off."""
    monkeypatch.chdir(data_root)
    for overrides in (dict(optimizer_name="sophiag"), dict(optimizer_name="sophiag", gnb_batch="train"),
                      dict(optimizer_name="sophiah")):
        run = train.build(*init_distributed(tiny_config(out_dir=str(tmp_path), hess_interval=1, **overrides)))
        for _ in range(2):
            run.iteration()
        model, optimizer = weakref.ref(run.network.model), weakref.ref(run.optimizer)
        gc.disable()
        try:
            del run
            assert model() is None and optimizer() is None, overrides
        finally:
            gc.enable()


@pytest.mark.parametrize("optimizer_name, cls, default", [("sophiag", SophiaG, 0.04), ("sophiah", SophiaH, 0.01),
                                                          ("signmomentum", SophiaG, 0.04)])
def test_each_sophia_has_one_default_rho(optimizer_name, cls, default, data_root, tmp_path, monkeypatch):
    """A run that sets no rho trains at its optimizer's own default (the official code's), the class's; one that
    sets it, at that value."""
    monkeypatch.chdir(data_root)
    assert cls(torch.nn.Linear(2, 2).parameters()).param_groups[0]["rho"] == default
    for rho, expected in ((None, default), (0.3, 0.3)):
        run = train.build(*init_distributed(tiny_config(out_dir=str(tmp_path), optimizer_name=optimizer_name,
                                                        rho=rho)))
        assert type(run.optimizer) is cls and {g["rho"] for g in run.optimizer.param_groups} == {expected}


def test_sophias_steps_take_the_bs_of_the_last_refresh(data_root, tmp_path, monkeypatch):
    """Sophia-G's refresh of hess_total_bs sequences leaves its steps bs = hess_total_bs x block_size (both
    refresh batches); a checkpoint from before the optimizer kept it gets the bs the loop used to pass."""
    monkeypatch.chdir(data_root)
    for gnb_batch in ("fresh", "train"):
        cfg, dist = init_distributed(tiny_config(out_dir=str(tmp_path), hess_interval=2, hess_total_bs=2,
                                                 gnb_batch=gnb_batch))
        run = train.build(cfg, dist)
        run.iteration()
        assert all("hessian_bs" not in g for g in run.optimizer.param_groups)  # not refreshed yet: default_bs
        run.iteration()
        assert [g["hessian_bs"] for g in run.optimizer.param_groups] == [2 * 32] * 2, gnb_batch

    state = state_dict(run)
    for group in state["optimizer"]["param_groups"]:
        del group["hessian_bs"]  # as written before issue 24
    resumed = train.build(cfg, dist)
    load_state(resumed, state)
    assert [g["hessian_bs"] for g in resumed.optimizer.param_groups] == [2 * 32] * 2
    untouched = SophiaH(torch.nn.Linear(2, 2).parameters())
    keep_hessian_bs(untouched, {"optimizer_name": "sophiah"})
    assert "hessian_bs" not in untouched.param_groups[0]
