"""CPU tests for the training loop and its parts: train.py and training/ (config, distributed, batches, step,
refresh, evaluation, log_window, state, checkpoint, metrics).

Every run trains a tiny GPT (1 layer, 2 heads, 32 channels, 32-token context; most of its 1.6M parameters
are the 50304 x 32 embedding) on a synthetic token file written into a temporary `data/tiny/` folder, for
a handful of iterations. train.py reads `data/<dataset>` relative to the working directory, so in-process
runs change into that folder's parent and subprocesses start there (with PYTHONPATH set to the repo).

What is covered: configuration parsing and its one-line errors; the accumulation derived from total_bs,
and grad_accumulation='sum'; bit-exact resume (AdamW and Sophia-G, with dropout on, so the saved random
state matters); checkpoints that survive a SIGKILL mid-write and one-line errors for damaged, missing or
mismatched checkpoints; a clean stop on SIGTERM; DDP over gloo against a single process (losses,
rank-0-only logging, identical Hessian EMAs on every rank); metrics.jsonl's records and their
diagnostics (grad_norm before clipping, param_norm, update_rms, Sophia's per-set win rates, a logged
time that leaves out torch.compile's compilation); the sign-momentum control's update; the
non-finite-loss stop; whole-split evaluation; wandb in offline mode; and the learning-rate schedule. The
helpers the test modules share (TINY, args, run_main, records, torchrun, ...) are in conftest.py.

The machine these run on has two shared cores: each run is a few iterations of the tiny model with one
intra-op thread, and the expensive runs (a straight 10-iteration run per optimizer) are made once per
module and shared by the tests that only read them.
"""

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed
from conftest import (GLOO, REPO_ROOT, TINY, TORCHRUN, TRAIN_PY, args, file_bytes, kind, one_error_line, records,
                      run_main, run_train_subprocess, subprocess_env, tiny_config, torchrun, wait_for,
                      working_directory)

import train
from model import GPT, GPTConfig
from sophia import sampled_cross_entropy
from training.batches import Batches
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import OPTIMIZER_NAMES, Config, ConfigError, load_config, make_config
from training.distributed import accumulation_steps, init_distributed
from training.log_window import Stopwatch
from training.metrics import MetricsError, machine, read_metrics
from training.refresh import Refresh
from training.step import get_lr

# ----------------------------------------------------------------------------- helpers


def assert_no_duplicates(out_dir):
    seen = set()
    for r in read_metrics(os.path.join(out_dir, "metrics.jsonl")):
        if kind(r) != "config":
            key = (r["iter"], kind(r))
            assert key not in seen, f"{key} logged twice in {out_dir}/metrics.jsonl"
            seen.add(key)
    return seen


# ----------------------------------------------------------------------------- fixtures

STRAIGHT_ITERS = 10


@pytest.fixture(scope="module")
def straight_run(data_root, tmp_path_factory):
    """straight_run(optimizer) -> out_dir of an uninterrupted 10-iteration run (made once per module).
    Dropout is on so that the resumed run can only match if the random state is restored."""
    made = {}

    def get(optimizer):
        if optimizer not in made:
            out = tmp_path_factory.mktemp(f"straight-{optimizer}")
            run_main(args(optimizer_name=optimizer, dropout=0.1, max_iters=STRAIGHT_ITERS, out_dir=out), data_root)
            made[optimizer] = str(out)
        return made[optimizer]

    return get


# ----------------------------------------------------------------------------- 1. configuration

def test_unknown_key_names_it_and_suggests_the_close_match():
    with pytest.raises(ConfigError) as e:
        make_config(learnig_rate=1e-3)
    assert "'learnig_rate'" in str(e.value) and "did you mean 'learning_rate'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown config key 'hess_intreval'.*'hess_interval'"):
        load_config(["--hess_intreval=5"])


@pytest.mark.parametrize("key, value, expected", [
    ("eval_only", 1, "True or False"),  # int for bool
    ("always_save_checkpoint", "yes", "True or False"),
    ("max_iters", 1.5, "an int"),  # float for int
    ("batch_size", True, "an int"),  # bool is an int subclass, and still refused
    ("learning_rate", "fast", "a number"),  # str for float
    ("dataset", 3, "a string"),
    ("compile", "no", "True, False or None"),
])
def test_wrong_types_are_refused(key, value, expected):
    with pytest.raises(ConfigError) as e:
        make_config(**{key: value})
    message = str(e.value)
    assert f"'{key}'" in message and expected in message and repr(value) in message
    assert "\n" not in message


def test_numbers_are_accepted_for_floats_and_stored_as_floats():
    cfg = make_config(learning_rate=1, rho=0)
    assert cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float and type(cfg.rho) is float
    assert make_config(compile=None).compile is None


def test_bad_choices_and_non_positive_sizes():
    with pytest.raises(ConfigError) as e:
        make_config(optimizer_name="sgd")
    assert "optimizer_name" in str(e.value) and "'sgd'" in str(e.value)
    assert all(name in str(e.value) for name in OPTIMIZER_NAMES)
    with pytest.raises(ConfigError, match="init_from"):
        make_config(init_from="gpt2")
    with pytest.raises(ConfigError, match="'batch_size' must be positive"):
        make_config(batch_size=0)
    with pytest.raises(ConfigError, match="expected --key=value"):
        load_config(["--max_iters"])


@pytest.mark.parametrize("values, message", [
    (dict(learning_rate=0.0), "'learning_rate' must be positive, got 0.0"),
    (dict(max_iters=-3), "'max_iters' must be positive, got -3"),
    (dict(warmup_iters=-1), "'warmup_iters' must be >= 0, got -1"),
    (dict(grad_clip=-1.0), "'grad_clip' must be >= 0"),
    (dict(beta2=1.0), "'beta2' must be in \\[0, 1\\), got 1.0"),
    (dict(dropout=-0.1), "'dropout' must be in"),
    (dict(n_embd=30, n_head=4), "n_embd=30 is not divisible by n_head=4"),
    (dict(warmup_iters=101, lr_decay_iters=100), "lr_decay_iters=100 must be at least warmup_iters=101"),
])
def test_values_no_run_can_use_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(**values)


def test_config_files_are_found_in_the_repository_from_another_directory(tmp_path):
    with working_directory(tmp_path):  # no config/ here
        assert load_config(["config/train_cpu_demo.py"]).dataset == "enwiki_sample"


def test_config_file_and_overrides_apply_in_command_line_order(tmp_path):
    config_file = tmp_path / "run.py"
    config_file.write_text(
        "import math\n"  # modules and _private names are not keys
        "_base = 3e-4\n"
        "learning_rate = _base * 2\n"
        "max_iters = 100\n"
        "dataset = 'enwiki'\n"
        "optimizer_name = 'adamw'\n"
    )
    cfg = load_config(["--max_iters=7", str(config_file), "--batch_size=3", "--optimizer_name=lion"])
    assert cfg.max_iters == 100  # the file came after the override
    assert cfg.batch_size == 3 and cfg.optimizer_name == "lion"  # overrides after the file win
    assert cfg.learning_rate == pytest.approx(6e-4) and cfg.dataset == "enwiki"
    assert load_config([str(config_file), "--max_iters=7"]).max_iters == 7
    # the other fields keep their defaults
    assert cfg.n_layer == Config.n_layer and cfg.hess_interval == Config.hess_interval


def test_unquoted_strings_and_literals():
    cfg = load_config(["--dataset=enwiki_sample", "--out_dir=out/run-1", "--wandb_run_name='quoted'",
                       "--compile=None", "--bias=True", "--learning_rate=3e-4", "--decay_lr=False"])
    assert cfg.dataset == "enwiki_sample" and cfg.out_dir == "out/run-1" and cfg.wandb_run_name == "quoted"
    assert cfg.compile is None and cfg.bias is True and cfg.learning_rate == 3e-4 and cfg.decay_lr is False
    # an unquoted word for a number stays a string, and is refused as one
    with pytest.raises(ConfigError, match="'learning_rate' must be a number, got str 'abc'"):
        load_config(["--learning_rate=abc"])


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "no_such_config.py")
    with pytest.raises(ConfigError) as e:
        load_config([missing])
    assert missing in str(e.value) and "cannot read config file" in str(e.value)


def test_errors_inside_a_config_file_are_one_line(tmp_path):
    for body, error in (("max_iters = 10 +\n", "SyntaxError"), ("learning_rate = undefined_name\n", "NameError")):
        path = tmp_path / "bad.py"
        path.write_text(body)
        with pytest.raises(ConfigError, match=f"config file .*bad.py.*{error}"):
            load_config([str(path)])
    # names bound in the file are visible inside its comprehensions (one namespace, as a module)
    path = tmp_path / "nested.py"
    path.write_text("_n = 2\nmax_iters = sum(_n for _ in range(3))\n")
    assert load_config([str(path)]).max_iters == 6


def test_string_keys_keep_the_text_as_written():
    assert load_config(["--wandb_run_name=2024"]).wandb_run_name == "2024"
    assert load_config(["--dataset=None"]).dataset == "None"


def test_a_metrics_line_cut_short_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1, "train/loss": 2.0}\n{"iter": 2, "tok')
    assert read_metrics(str(path)) == [{"iter": 1, "train/loss": 2.0}]
    path.write_text('{"iter": 1, "train/loss": 2.0}\n{"iter": 2, "tok\n{"iter": 3}\n')
    with pytest.raises(MetricsError, match="metrics.jsonl: line 2 is not JSON"):
        read_metrics(str(path))


def test_metrics_reader_leaves_out_what_a_resumed_run_superseded(tmp_path):
    """A process that stopped after logging iterations 5-6 past its checkpoint at 4: the resumed run logs
    from 5 again (and evaluates at 4 again); the reader keeps the resumed run's records only."""
    lines = [{"config": {}}, {"iter": 4, "train/loss": 4.0}, {"iter": 4, "val/loss": 4.5},
             {"iter": 5, "train/loss": 5.0}, {"iter": 6, "train/loss": 6.0},
             {"config": {}, "resumed_from": 4}, {"iter": 4, "val/loss": 4.4}, {"iter": 5, "train/loss": 5.1}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_metrics(str(path)) == lines[:2] + lines[5:]


def test_bogus_key_on_the_command_line_is_one_error_line(tmp_path):
    result = run_train_subprocess(["--bogus=1"], cwd=tmp_path, timeout=60)
    assert result.returncode != 0
    assert "'bogus'" in one_error_line(result.stderr)
    assert not (tmp_path / "out").exists()  # nothing was made


# ----------------------------------------------------------------------------- 2. accumulation

def test_accumulation_steps():
    assert accumulation_steps(480, 12, 1) == 40
    assert accumulation_steps(480, 12, 8) == 5
    with pytest.raises(ConfigError, match="batch_size"):
        accumulation_steps(480, 12, 7)
    with pytest.raises(ConfigError, match="hess_total_bs"):
        accumulation_steps(10, 4, 1, key="hess_total_bs")


def test_trainer_accumulates_micro_batches_from_total_bs(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(data_root)
    cfg, dist = init_distributed(tiny_config(total_bs=8, batch_size=2, out_dir=str(tmp_path)))
    # the derived settings are written into the config that is logged and checkpointed
    assert (cfg.gradient_accumulation_steps, cfg.hess_total_bs, cfg.hess_accumulation_steps) == (4, 8, 4)
    run = train.build(cfg, dist)
    assert run.window.tokens_per_iter == 8 * 32
    micro_batches = run.train_data.next_batch(cfg.total_bs, cfg.gradient_accumulation_steps)
    assert len(micro_batches) == 4
    for X, Y in micro_batches:
        assert X.shape == Y.shape == (2, 32) and X.dtype == torch.int64
        assert torch.equal(X[:, 1:], Y[:, :-1])  # targets are the inputs shifted by one
    windows = torch.cat([X for X, _ in micro_batches])
    assert len({tuple(w.tolist()) for w in windows}) == 8  # 8 different windows
    assert run.train_data.position == 8
    # a total_bs that batch_size does not divide is refused when the settings are resolved
    with pytest.raises(ConfigError, match="batch_size"):
        init_distributed(tiny_config(total_bs=7, batch_size=2, out_dir=str(tmp_path)))
    half = init_distributed(tiny_config(total_bs=8, batch_size=2, hess_total_bs=4))[0]
    assert (half.hess_total_bs, half.hess_accumulation_steps) == (4, 2)


def make_run(data_root, tmp_path, monkeypatch, **overrides):
    """The parts of a run (train.build) of TINY with `overrides`, reading data_root/data/tiny."""
    monkeypatch.chdir(data_root)
    return train.build(*init_distributed(tiny_config(out_dir=str(tmp_path), **overrides)))


def log_record(run, train_time):
    """The record train.py's loop logs at this point, `train_time` seconds into training."""
    return run.window.record(run.progress.iter_num, train_time, run.network.model, run.optimizer, run.diagnostics)


def record_steps(run, monkeypatch):
    """Wraps run.optimizer.step to record, at each call, the parameters before and after it and the
    gradients it was given (after accumulation and clipping). Returns (the parameters, the records)."""
    params, steps, step = list(run.network.model.parameters()), [], run.optimizer.step

    def recording_step(*a, **kw):
        before = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]
        loss = step(*a, **kw)
        steps.append(dict(before=before, grads=grads, after=[p.detach().clone() for p in params]))
        return loss

    monkeypatch.setattr(run.optimizer, "step", recording_step)
    return params, steps


def test_grad_accumulation_sum_gives_accumulation_times_the_mean_gradient(data_root, tmp_path, monkeypatch):
    """4 micro-steps, no clipping: with grad_accumulation='sum' the gradient the optimizer gets (and the
    grad_norm summed for the log) is 4 times that of 'mean' on the same batch from the same weights,
    while the returned loss is the batch's mean loss in both."""
    got = {}
    for mode in ("mean", "sum"):
        run = make_run(data_root, tmp_path / mode, monkeypatch, total_bs=8, batch_size=2, grad_clip=0.0,
                       grad_accumulation=mode, optimizer_name="adamw")
        assert run.cfg.gradient_accumulation_steps == 4
        _, steps = record_steps(run, monkeypatch)
        loss = run.iteration()
        got[mode] = dict(loss=loss.item(), grads=steps[0]["grads"], before=steps[0]["before"],
                         grad_norm=run.window.grad_norm_sum.item())
    mean, summed = got["mean"], got["sum"]
    assert all(torch.equal(a, b) for a, b in zip(mean["before"], summed["before"]))  # the same starting weights
    assert summed["loss"] == pytest.approx(mean["loss"], rel=1e-6)
    for g_mean, g_sum in zip(mean["grads"], summed["grads"]):
        torch.testing.assert_close(g_sum, 4 * g_mean, rtol=1e-5, atol=1e-10)
    assert mean["grad_norm"] > 0 and summed["grad_norm"] == pytest.approx(4 * mean["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])  # off, and on (this g_hat's norm is ~1e-2)
def test_gnb_refresh_from_the_training_batch_matches_a_direct_computation(grad_clip, data_root, tmp_path,
                                                                            monkeypatch):
    """gnb_batch='train': the refresh's g_hat comes from the iteration's own forward pass on its first
    hess_total_bs sequences (here 2 of 4, one micro-batch), with labels seeded by (seed, iteration, 0).
    Recomputed here by hand at the pre-step weights: h = (1 - beta2) * clip(g_hat)^2 after one refresh."""
    monkeypatch.chdir(data_root)
    cfg, dist = init_distributed(tiny_config(gnb_batch="train", hess_interval=1, hess_total_bs=2,
                                                   grad_clip=grad_clip, out_dir=str(tmp_path)))
    run = train.build(cfg, dist)
    before = {k: v.clone() for k, v in run.network.model.state_dict().items()}
    train_batches = Batches(os.path.join("data", cfg.dataset), "train", cfg, dist, 50304)
    X, _ = train_batches.next_batch(cfg.total_bs, cfg.gradient_accumulation_steps)[0]
    run.iteration()
    assert run.step.refresh.gradient is None and run.train_data.position == cfg.total_bs  # no extra batch read

    reference = GPT(run.network.model.config)
    reference.load_state_dict(before)
    params = list(reference.parameters())
    with torch.random.fork_rng():
        torch.manual_seed(hash((cfg.seed, 1, 0)))
        g_hat = torch.autograd.grad(sampled_cross_entropy(reference(X)[0]), params)
    norm = torch.cat([g.flatten() for g in g_hat]).norm()
    scale = min(1.0, grad_clip / norm.item()) if grad_clip else 1.0
    assert scale < 0.5 or not grad_clip  # the clipping is part of what is checked
    for g, q in zip(g_hat, run.network.model.parameters()):
        expected = (1 - cfg.beta2) * (g * scale) ** 2
        torch.testing.assert_close(run.optimizer.state[q]["hessian"], expected, rtol=1e-4, atol=1e-12)


def test_gnb_refresh_from_the_training_batch_needs_hess_total_bs_within_it(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(data_root)
    with pytest.raises(ConfigError, match="hess_total_bs=8 must be <= total_bs=4"):
        init_distributed(tiny_config(gnb_batch="train", hess_total_bs=8, out_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- 3. bit-exact resume

@pytest.mark.parametrize("optimizer", ["adamw", "sophiag"])
def test_resume_is_bit_exact(optimizer, straight_run, data_root, tmp_path):
    """10 iterations straight == 5, stop, resume to 10: every logged loss is identical and so are the
    final weights and optimizer state. hess_interval=3 puts Hessian refreshes at iterations 3 (before the
    stop), 6 and 9 (after); dropout=0.1 makes the restored random state matter."""
    straight = straight_run(optimizer)
    out = str(tmp_path / "out")
    common = dict(optimizer_name=optimizer, dropout=0.1, out_dir=out)
    run_main(args(max_iters=STRAIGHT_ITERS // 2, **common), data_root)
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iter_num"] == 5
    run_main(args(max_iters=STRAIGHT_ITERS, init_from="resume", **common), data_root)

    for which, keys in (("train", ["train/loss", "lr", "tokens", "train/clip_rate"]),
                        ("eval", ["val/loss", "eval/train_loss"])):
        expected, got = records(straight, which), records(out, which)
        assert sorted(got) == sorted(expected)
        for it in expected:
            for key in keys:
                assert got[it][key] == expected[it][key], f"{which} {key} at iteration {it}"
    assert sorted(records(out, "train")) == list(range(1, 11))
    assert sorted(records(out, "eval")) == [0, 5, 10]
    assert_no_duplicates(out)

    a, b = load_checkpoint(os.path.join(straight, "ckpt.pt")), load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 10 and a["data_position"] == b["data_position"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)
    if optimizer == "sophiag":
        assert any(s["hessian"].abs().sum() > 0 for s in state_a.values())  # the refreshes did happen


# ----------------------------------------------------------------------------- 4. checkpoints

WRITER = """
import sys
import torch
from training.checkpoint import save_checkpoint

path, i = sys.argv[1], 0
while True:
    i += 1
    save_checkpoint({"i": i, "x": torch.full((5_000_000,), float(i))}, path)  # 20 MB
    print(i, flush=True)
"""


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    """Kill a process that keeps rewriting one checkpoint while its temporary file exists (a write in
    progress): the checkpoint under the real name is a complete earlier one."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = str(tmp_path / "ckpt.pt")
    for attempt in range(5):  # the write may finish between our look and the kill: try again then
        with open(tmp_path / "writer.out", "w") as out:
            proc = subprocess.Popen([sys.executable, str(script), path], stdout=out, env=subprocess_env())
        try:
            wait_for(lambda: os.path.exists(path) and glob.glob(path + ".tmp*"), 60,
                     "a checkpoint write in progress", proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        if glob.glob(path + ".tmp*"):
            break
        os.remove(path)
    else:
        pytest.fail("never managed to kill the writer mid-write")
    assert proc.returncode == -signal.SIGKILL
    completed = [int(line) for line in (tmp_path / "writer.out").read_text().split()]
    ckpt = load_checkpoint(path)
    assert ckpt["i"] >= max(completed, default=1)  # the latest complete one (printed after its save)
    assert torch.equal(ckpt["x"], torch.full((5_000_000,), float(ckpt["i"])))  # and whole


def test_damaged_checkpoints_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02 not a checkpoint \x00\xff" * 50)
    good = str(tmp_path / "good.pt")
    save_checkpoint({"model": {"w": torch.randn(1000)}, "iter_num": 3}, good)
    assert load_checkpoint(good)["iter_num"] == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(file_bytes(good)[: os.path.getsize(good) // 2])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(str(path))
        message = str(e.value)
        assert "\n" not in message and str(path) in message and "damaged" in message


def test_missing_checkpoint_says_how_to_start(tmp_path, data_root):
    with pytest.raises(CheckpointError, match="init_from"):
        load_checkpoint(str(tmp_path / "ckpt.pt"))
    result = run_train_subprocess(args(init_from="resume", out_dir=tmp_path / "out", max_iters=2), cwd=data_root)
    assert result.returncode != 0 and "init_from" in one_error_line(result.stderr)


@pytest.mark.parametrize("change, named", [({"n_embd": 64}, "n_embd"), ({"optimizer_name": "adamw"}, "optimizer_name")])
def test_resuming_a_different_model_or_optimizer_is_a_clean_error(change, named, straight_run, data_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(straight_run("sophiag"), out)
    before = {name: file_bytes(out / name) for name in ("ckpt.pt", "metrics.jsonl")}
    result = run_train_subprocess(args(init_from="resume", out_dir=out, max_iters=12, dropout=0.1, **change),
                                  cwd=data_root)
    assert result.returncode != 0
    assert named in one_error_line(result.stderr)
    assert {name: file_bytes(out / name) for name in before} == before  # nothing was touched


# ----------------------------------------------------------------------------- 5. SIGTERM

def test_sigterm_saves_a_checkpoint_and_exits_0(data_root, tmp_path):
    out = tmp_path / "out"
    metrics = out / "metrics.jsonl"

    def progress():  # counts complete lines only: the run may be writing one right now
        complete = metrics.read_text().split("\n")[:-1] if metrics.exists() else []
        return sum('"train/loss"' in line for line in complete) >= 3

    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, TRAIN_PY, *args(max_iters=100_000, eval_interval=1000,
                                                                 out_dir=out)],
                                cwd=data_root, stdout=stdout, stderr=stderr, env=subprocess_env())
    try:
        wait_for(progress, 90, "3 logged iterations", proc)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    output = (tmp_path / "stdout").read_text()
    assert rc == 0, (tmp_path / "stderr").read_text()
    stops = re.findall(r"stop requested: saving a checkpoint at iteration (\d+)", output)
    assert len(stops) == 1
    stopped_at = int(stops[0])
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == stopped_at >= 3
    assert max(records(out, "train")) == stopped_at  # log_interval=1: the last logged iteration

    run_main(args(max_iters=stopped_at + 2, eval_interval=1000, out_dir=out, init_from="resume"), data_root)
    assert load_checkpoint(str(out / "ckpt.pt"))["iter_num"] == stopped_at + 2
    assert sorted(records(out, "train")) == list(range(1, stopped_at + 3))
    assert sorted(records(out, "eval")) == [0, stopped_at + 2]
    assert_no_duplicates(out)


# ----------------------------------------------------------------------------- 6. DDP (gloo)

DDP_RUN = dict(optimizer_name="sophiag", hess_interval=3, max_iters=8, eval_interval=4, total_bs=8, batch_size=2)

RANK_AGREEMENT_PY = os.path.join(REPO_ROOT, "scripts", "rank_agreement.py")
# scripts/rank_agreement.py's check after rank 1's Hessian EMA was nudged in one coordinate: it must tell
DRIFTED_RANK = """
import sys
import train
from rank_agreement import compare_ranks

def nudge_then_compare(run):
    if run.dist.rank == 1:
        next(iter(run.optimizer.state.values()))["hessian"].view(-1)[0] += 1e-6
    verdict = "AGREE" if compare_ranks(run) else "DISAGREE"
    with open(f"{run.cfg.out_dir}/verdict-{run.dist.rank}", "w") as f:  # not stdout: ranks' lines interleave
        f.write(verdict)

train.main(sys.argv[1:], then=nudge_then_compare)
"""


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("gnb_batch", ["fresh", "train"])
def test_ddp_matches_a_single_process(gnb_batch, data_root, tmp_path):
    """2 processes x 2 micro-steps of 2 sequences against 1 process x 4 micro-steps: the same global
    batches (Batches slices each global batch by rank) and the same refresh labels (seeded per micro-batch
    index), so the runs differ only in the order of floating-point sums (all-reduce vs accumulation).
    With gnb_batch='train' the refresh's gradient comes from DDP's own forward passes (an extra backward
    outside DDP's gradient hooks, averaged over ranks by hand).

    The logged losses and Hessian norms agree to ~1e-7 relative (measured); we allow 1e-4 relative. The
    losses alone say little about the Hessian on this tiny model (almost every coordinate is clipped, so
    steps are nearly sign(m)): the Hessian norms and the final Hessian EMAs are compared too, which is what
    catches a refresh that is summed instead of averaged over ranks, or that samples labels per rank.
    The parameters can differ more than the losses: Sophia's clipped, sign-like step turns a rounding-size
    difference in a coordinate whose momentum is near zero (or near the clipping threshold) into a
    difference of up to 2 * lr. Measured: 4e-6; checked against 2 * lr (one flipped step). The other
    diagnostics (grad_norm, param_norm, update_rms) agree like the losses; the win rates per set of
    parameters within one coordinate of the smallest set (its rate can flip one coordinate at the threshold).
    """
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"

    def completed(result):  # the final checkpoint and evaluation were written
        return (ddp_out / "ckpt.pt").exists() and 8 in records(ddp_out, "eval")

    run = {**DDP_RUN, "gnb_batch": gnb_batch}
    result = torchrun([TRAIN_PY, *args(out_dir=ddp_out, **run)], cwd=data_root, completed=completed)
    run_main(args(out_dir=single_out, **run), data_root)

    assert sorted(os.listdir(ddp_out)) == ["ckpt.pt", "metrics.jsonl", "train.lock"]  # rank 1 wrote nothing of its own
    assert result.stdout.count("config: {") == 1  # and printed nothing
    assert_no_duplicates(ddp_out)
    config = read_metrics(ddp_out / "metrics.jsonl")[0]["config"]
    assert config["backend"] == "gloo" and config["total_bs"] == 8

    train_keys = ["train/loss", "hessian_norm", "momentum_norm", "param_norm", "grad_norm", "update_rms"]
    set_sizes = {name: sum(p.numel() for p in params)
                 for name, params in checkpoint_model(single_out).param_sets().items()}
    for which, keys in (("train", train_keys), ("eval", ["val/loss", "eval/train_loss"])):
        ddp, single = records(ddp_out, which), records(single_out, which)
        assert sorted(ddp) == sorted(single) == (list(range(1, 9)) if which == "train" else [0, 4, 8])
        for it in single:
            for key in keys:
                assert ddp[it][key] == pytest.approx(single[it][key], rel=1e-4), f"{which} {key} at {it}"
            if which == "train":
                assert set(ddp[it]) == set(single[it]) == TRAIN_KEYS | SOPHIA_KEYS
                assert ddp[it]["tokens"] == single[it]["tokens"] == it * 8 * 32
                assert ddp[it]["lr"] == single[it]["lr"]
                assert ddp[it]["hessian_ema_weight"] == single[it]["hessian_ema_weight"]  # refreshes: 3, 6
                assert ddp[it]["train/win_rate"] == pytest.approx(single[it]["train/win_rate"], abs=1e-3)
                for name, size in set_sizes.items():  # a coordinate at the threshold may flip (other: 96)
                    key = f"train/win_rate/{name}"
                    assert ddp[it][key] == pytest.approx(single[it][key], abs=max(1e-3, 1.01 / size)), f"{key} at {it}"

    a, b = load_checkpoint(str(ddp_out / "ckpt.pt")), load_checkpoint(str(single_out / "ckpt.pt"))
    assert a["iter_num"] == b["iter_num"] == 8 and a["data_position"] == b["data_position"]
    for name in a["model"]:
        assert (a["model"][name] - b["model"][name]).abs().max() <= 2 * TINY["learning_rate"], name
    for index, state in b["optimizer"]["state"].items():
        expected, got = state["hessian"], a["optimizer"]["state"][index]["hessian"]
        assert expected.abs().max() > 0  # refreshed (after iterations 3 and 6)
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max(), f"Hessian EMA of parameter {index}"


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_ddp_hessian_ema_is_identical_on_every_rank(data_root, tmp_path):
    """scripts/rank_agreement.py (the GPU check of multi-GPU runs) finds every rank's parameters, momentum
    and Hessian EMA identical after refreshes, and does tell when one rank's Hessian EMA differs."""
    run = args(**{**DDP_RUN, "hess_interval": 2, "max_iters": 4})
    out = tmp_path / "out"
    result = torchrun([RANK_AGREEMENT_PY, *run, f"--out_dir={out}"], cwd=data_root,
                      completed=lambda result: "hessian: " in result.stdout)
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if " ranks (" in line}
    assert sorted(lines) == ["exp_avg", "hessian", "parameters"], result.stdout
    assert all("identical on 2 ranks" in line for line in lines.values()), lines
    assert float(re.search(r"abs sum (\S+)\)", lines["hessian"]).group(1)) > 0  # the refreshes happened

    script = tmp_path / "drifted_rank.py"
    script.write_text(DRIFTED_RANK)
    drifted = tmp_path / "drifted"

    def verdicts():
        return sorted(path.read_text() for path in drifted.glob("verdict-*"))

    result = torchrun([str(script), *run, f"--out_dir={drifted}"], cwd=data_root,
                      completed=lambda result: len(verdicts()) == 2,
                      env={"PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT}/scripts"})
    assert re.search(r"^hessian: DIFFERENT \(largest difference 1e-06\)", result.stdout, re.M), result.stdout
    assert re.search(r"^exp_avg: identical", result.stdout, re.M)
    assert verdicts() == ["DISAGREE", "DISAGREE"]


# a worker that dies (SIGKILL, as by the OOM killer) once it has finished iteration 6, on rank 1
DYING_RANK = """
import os
import signal
import sys
import train
from training.state import Run

iteration = Run.iteration

def dying_iteration(self):
    loss = iteration(self)
    if self.dist.rank == 1 and self.progress.iter_num == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss

Run.iteration = dying_iteration
train.main(sys.argv[1:])
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_two_nodes_a_killed_rank_stops_the_other_with_a_clear_error(data_root, tmp_path):
    """The README's multi-node command (no --node_rank: the c10d rendezvous numbers the nodes), as two
    torchrun launchers on one host (one process each), with rank 1 SIGKILLed after iteration 6: the other
    node's launcher cannot know, so its worker must find out
    at a collective and exit with a one-line summary within dist_timeout, leaving the checkpoint of
    iteration 4 whole."""
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    out = tmp_path / "out"
    run = args(**{**DDP_RUN, "max_iters": 20, "eval_interval": 4, "checkpoint_interval": 4, "dist_timeout": 30,
                  "out_dir": out})
    port = free_port()
    launchers = [subprocess.Popen([TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                                   f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=killed",
                                   str(script), *run], cwd=data_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=subprocess_env()) for _ in range(2)]
    started = time.monotonic()
    try:
        outputs = [launcher.communicate(timeout=120) for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()
    assert time.monotonic() - started < 90  # nobody waited out a default timeout
    assert all(launcher.returncode != 0 for launcher in launchers)
    # the rendezvous decides which launcher's process is rank 1 (the one that dies)
    killed, survivor = sorted((stderr for _, stderr in outputs), key=lambda stderr: "SIGKILL" not in stderr)
    assert "SIGKILL" in killed and "SIGKILL" not in survivor
    summary = [line for line in survivor.splitlines() if line.startswith("error: rank 0 of 2 stopped")]
    assert summary and "iteration 7" in summary[0] and "--init_from=resume" in summary[0], survivor[-3000:]
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["iter_num"] == 4


# ----------------------------------------------------------------------------- 7. metrics

TRAIN_KEYS = {"iter", "tokens", "time", "train/loss", "lr", "ms_per_iter", "tokens_per_s", "train/clip_rate",
              "grad_norm", "param_norm", "update_rms"}
SOPHIA_KEYS = {"train/win_rate", "train/win_rate/embedding", "train/win_rate/matrices", "train/win_rate/other",
               "hessian_norm", "momentum_norm", "hessian_ema_weight"}


def checkpoint_model(out_dir):
    """The GPT saved in out_dir/ckpt.pt."""
    ckpt = load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model


def norm_of(tensors):
    """L2 norm of tensors taken as one vector, summed in float64."""
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in tensors))


def check_common_train_records(train_records, resolved, model):
    """What every optimizer's records hold (log_interval=1, warmup from lr 0): grad_norm is positive, and
    exceeds grad_clip exactly at the iterations counted as clipped; update_rms is 0 for the first step
    (its lr is 0) and positive after; the last record's param_norm is the norm of the weights saved with it
    (`model`, the tied embedding counted once)."""
    assert resolved.log_interval == 1 and get_lr(0, resolved) == 0
    clipped = 0
    for it in sorted(train_records):
        r = train_records[it]
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        clipped += r["grad_norm"] > resolved.grad_clip
        assert r["train/clip_rate"] * it == pytest.approx(clipped)
        assert math.isfinite(r["update_rms"]) and (r["update_rms"] == 0) == (it == 1)
        assert r["param_norm"] > 0
    last = train_records[max(train_records)]
    assert last["param_norm"] == pytest.approx(norm_of(model.parameters()), rel=1e-4)  # float32 sums: 2e-5


def test_a_gpu_runs_first_record_names_its_gpu_by_uuid(monkeypatch):
    """Host names alike on every machine ("vm" on the study's) tell machines apart only by the GPU's UUID."""
    props = type("Properties", (), {"uuid": "GPU-1234"})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert machine("cuda") == {"host": socket.gethostname(), "accelerator": "NVIDIA H200",
                               "accelerator_id": "GPU-1234"}
    assert machine("cpu") == {"host": socket.gethostname(), "accelerator": "cpu"}


@pytest.mark.parametrize("optimizer", ["adamw", "sophiag"])
def test_metrics_records(optimizer, straight_run):
    out = straight_run(optimizer)
    argv = args(optimizer_name=optimizer, dropout=0.1, max_iters=STRAIGHT_ITERS, out_dir=out)
    resolved, _ = init_distributed(load_config(argv))
    lines = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert lines[0] == {"config": dataclasses.asdict(resolved),
                        "machine": {"host": socket.gethostname(), "accelerator": "cpu"}}  # times compare within one
    assert lines[0]["config"]["device"] == "cpu" and lines[0]["config"]["compile"] is False
    assert sum(kind(r) == "config" for r in lines) == 1

    train_records, eval_records = records(out, "train"), records(out, "eval")
    assert sorted(train_records) == list(range(1, STRAIGHT_ITERS + 1))
    model = checkpoint_model(out)  # saved at iteration 10
    sizes = {name: sum(p.numel() for p in params) for name, params in model.param_sets().items()}
    named = dict(model.named_parameters())  # the tied embedding once, as transformer.wte.weight
    assert sizes == {  # the win rates' sets: embeddings, the Linear layers' matrices, the rest (LayerNorm weights)
        "embedding": named["transformer.wte.weight"].numel() + named["transformer.wpe.weight"].numel(),
        "matrices": sum(p.numel() for name, p in named.items() if p.dim() == 2 and ".h." in name),
        "other": sum(p.numel() for p in named.values() if p.dim() == 1),
    }
    for it, r in train_records.items():
        assert set(r) == TRAIN_KEYS | (SOPHIA_KEYS if optimizer == "sophiag" else set())
        assert r["tokens"] == it * resolved.total_bs * resolved.block_size
        assert r["lr"] == pytest.approx(get_lr(it - 1, resolved))  # the lr of the step that made it
        assert math.isfinite(r["train/loss"]) and 0 <= r["train/clip_rate"] <= 1  # no mfu: a CPU run
        if optimizer == "sophiag":
            assert 0 <= r["train/win_rate"] <= 1 and r["hessian_norm"] >= 0
            # refreshes after iterations 3, 6 and 9
            assert r["hessian_ema_weight"] == pytest.approx(1 - resolved.beta2 ** (it // 3), rel=1e-6)
            # the overall win rate is the per-set ones weighted by their sizes (every parameter in one set)
            by_set = sum(r[f"train/win_rate/{name}"] * n for name, n in sizes.items()) / sum(sizes.values())
            assert r["train/win_rate"] == pytest.approx(by_set, rel=1e-5, abs=1e-7)
    check_common_train_records(train_records, resolved, model)
    if optimizer == "sophiag":  # zero until the first refresh (after iteration 3), positive after
        assert train_records[2]["hessian_norm"] == 0 and train_records[3]["hessian_norm"] > 0
        assert sum(sizes.values()) == model.num_params(non_embedding=False)
        assert any(train_records[STRAIGHT_ITERS][f"train/win_rate/{name}"] > 0 for name in sizes)
    times = [r["time"] for r in lines[1:]]
    assert times == sorted(times)  # training time never goes backwards

    assert sorted(eval_records) == [0, 5, 10]
    for it, r in eval_records.items():
        assert set(r) == {"iter", "tokens", "time", "val/loss", "eval/train_loss"}
        assert r["tokens"] == it * resolved.total_bs * resolved.block_size
    # the run learned something on the structured tokens
    assert eval_records[10]["val/loss"] < eval_records[0]["val/loss"]


def test_hessian_bias_correction_reaches_sophia(data_root, tmp_path, monkeypatch):
    """hessian_bias_correction is passed to Sophia-G and Sophia-H (every group); off by default."""
    for optimizer in ("sophiag", "sophiah"):
        for value in (False, True):
            overrides = dict(hessian_bias_correction=True) if value else {}
            run = make_run(data_root, tmp_path, monkeypatch, optimizer_name=optimizer, **overrides)
            assert [g["bias_correction"] for g in run.optimizer.param_groups] == [value, value], optimizer


@pytest.mark.parametrize("optimizer", ["adamw", "sophiag"])
def test_update_rms_is_the_rms_change_of_the_parameters_in_the_logged_iteration(optimizer, data_root, tmp_path,
                                                                               monkeypatch):
    """log_interval=2: after the second iteration (the one before the log line) update_rms is the RMS,
    over all parameter elements (the tied embedding once), of the change that iteration made to the
    weights, computed here in float64 from the weights before and after it. The weight decay (huge here,
    lr * wd = 0.2, so that it is a visible part of the change) is included; the change over both
    iterations is not what is reported. For Sophia-G a refresh follows each step (hess_interval=1), so the
    second step is clipped by a Hessian. Tolerance: torch's float32 norm of the 1.6M-element embedding
    change is 7e-4 low here (accumulation error; measured), well below the differences checked."""
    run = make_run(data_root, tmp_path, monkeypatch, optimizer_name=optimizer, log_interval=2,
                           warmup_iters=0, hess_interval=1, weight_decay=200.0)
    params = list(run.network.model.parameters())
    weights = [[p.detach().clone() for p in params]]
    for _ in range(2):
        run.iteration()
        weights.append([p.detach().clone() for p in params])
    if optimizer == "sophiag":
        assert run.optimizer.param_groups[0]["hessian_updates"] == 2

    def rms_change(a, b):
        n = sum(p.numel() for p in params)
        assert n == run.network.model.num_params(non_embedding=False)
        return math.sqrt(sum(float((y.double() - x.double()).square().sum()) for x, y in zip(a, b)) / n)

    expected = rms_change(weights[1], weights[2])
    assert run.window.update_rms.item() == pytest.approx(expected, rel=2e-3)
    first = rms_change(weights[0], weights[1])
    assert abs(first / expected - 1) > 5e-3, (first, expected)  # the first iteration's is another number
    assert rms_change(weights[0], weights[2]) > 1.3 * expected  # and so is the two iterations' change
    decayed = {id(p) for p in run.network.model.param_sets()["matrices"]}
    lr_wd = get_lr(1, run.cfg) * run.cfg.weight_decay
    without_decay = [y + (x * lr_wd if id(p) in decayed else 0) for p, x, y in zip(params, weights[1], weights[2])]
    assert abs(rms_change(weights[1], without_decay) / expected - 1) > 2e-2  # the decay is a visible part
    # a record's speed needs some training time: 1 s
    assert log_record(run, 1.0)["update_rms"] == run.window.update_rms.item()


def test_grad_norm_is_the_mean_norm_before_clipping(data_root, tmp_path, monkeypatch):
    """grad_clip=1e-6 clips every iteration (clip_rate 1); the logged grad_norm is the mean, over the
    iterations since the last log line (two), of the global norm of the gradient before clipping: computed
    here by hand from the same batches (a second reader of the training data) at each iteration's weights.
    Two log lines: the second does not carry the first one's iterations."""
    run = make_run(data_root, tmp_path, monkeypatch, optimizer_name="adamw", log_interval=2,
                   warmup_iters=0, grad_clip=1e-6)
    cfg = run.cfg
    reader = Batches(os.path.join("data", cfg.dataset), "train", cfg, run.dist, run.network.model.config.vocab_size)
    norms, logged = [], []
    for it in range(4):
        reference = GPT(run.network.model.config)
        reference.load_state_dict(run.network.model.state_dict())
        micro_batches = reader.next_batch(cfg.total_bs, cfg.gradient_accumulation_steps)
        loss = sum(reference(X, Y)[1] for X, Y in micro_batches) / len(micro_batches)
        norms.append(norm_of(torch.autograd.grad(loss, list(reference.parameters()))))
        run.iteration()
        if it % 2 == 1:
            logged.append(log_record(run, it + 1.0))
    assert run.train_data.position == reader.position  # the same batches
    assert min(norms) > 1e4 * cfg.grad_clip and logged[-1]["train/clip_rate"] == 1
    assert abs(norms[3] - norms[2]) > 1e-3 * norms[3]  # the mean is not the last one
    assert logged[0]["grad_norm"] == pytest.approx((norms[0] + norms[1]) / 2, rel=1e-4)
    assert logged[1]["grad_norm"] == pytest.approx((norms[2] + norms[3]) / 2, rel=1e-4)


def test_signmomentum_is_sign_descent_with_momentum_and_decoupled_weight_decay(data_root, tmp_path, monkeypatch):
    """optimizer_name='signmomentum': never a Hessian refresh (with hess_interval=1 Sophia-G would refresh
    after every iteration: h stays 0), and each step, from the gradient g the optimizer is given, is
    m <- beta1 m + (1 - beta1) g (computed here independently), p <- p (1 - lr wd) - lr sign(m), with wd on
    the weight matrices only and lr from the schedule: checked over 3 iterations."""
    run = make_run(data_root, tmp_path, monkeypatch, optimizer_name="signmomentum", warmup_iters=0,
                           hess_interval=1, grad_clip=0.0, weight_decay=2.0)
    cfg = run.cfg
    assert type(run.step.refresh) is Refresh  # never due
    params, steps = record_steps(run, monkeypatch)
    decayed = {id(p) for p in run.network.model.param_sets()["matrices"]}
    assert decayed and len(decayed) < len(params)
    momentum = [torch.zeros_like(p) for p in params]
    for it in range(3):
        run.iteration()
        step, lr = steps[it], get_lr(it, cfg)
        assert lr > 0
        for i, p in enumerate(params):
            state = run.optimizer.state[p]
            assert torch.all(state["hessian"] == 0)
            momentum[i] = cfg.beta1 * momentum[i] + (1 - cfg.beta1) * step["grads"][i]
            torch.testing.assert_close(state["exp_avg"], momentum[i], rtol=1e-5, atol=1e-10)
            wd = cfg.weight_decay if id(p) in decayed else 0.0
            expected = step["before"][i] * (1 - lr * wd) - lr * state["exp_avg"].sign()
            torch.testing.assert_close(step["after"][i], expected, rtol=1e-6, atol=1e-9)
    assert sum(int((m != 0).sum()) for m in momentum) > 10_000  # sign steps were taken


@pytest.mark.parametrize("optimizer", ["lion", "signmomentum"])
def test_metrics_records_of_lion_and_signmomentum(optimizer, data_root, tmp_path):
    """3-iteration runs: the records of Lion and sign momentum carry what every optimizer logs (grad_norm,
    param_norm, update_rms: see check_common_train_records). Their steps move a coordinate by at most
    lr (1 + wd |p|), so update_rms is at most that for the largest |p|. Sign momentum's records also carry
    Sophia's diagnostics, for a Hessian that is never refreshed: zero, and every coordinate clipped."""
    out = tmp_path / "out"
    run_main(args(optimizer_name=optimizer, max_iters=3, eval_interval=1000, out_dir=out), data_root)
    resolved = tiny_config(optimizer_name=optimizer, max_iters=3, eval_interval=1000, out_dir=str(out))
    train_records = records(out, "train")
    assert sorted(train_records) == [1, 2, 3]
    model = checkpoint_model(out)
    check_common_train_records(train_records, resolved, model)
    largest = max(float(p.detach().abs().max()) for p in model.parameters()) + 3 * resolved.learning_rate  # in the run
    for it, r in train_records.items():
        assert set(r) == TRAIN_KEYS | (SOPHIA_KEYS if optimizer == "signmomentum" else set())
        assert r["update_rms"] <= r["lr"] * (1 + resolved.weight_decay * largest)
        if optimizer == "signmomentum":
            assert r["hessian_norm"] == r["hessian_ema_weight"] == 0 and r["momentum_norm"] > 0
            assert {r[key] for key in SOPHIA_KEYS if key.startswith("train/win_rate")} == {0}


def test_logged_time_excludes_compilation(data_root, tmp_path, monkeypatch):
    """compile=True on CPU. The first training iteration compiles the training graphs (forward and
    backward; the evaluation at iteration 0 compiles its own, outside the training time), which takes
    seconds. Its logged ms_per_iter is within 5x of the later iterations' median all the same, while the
    wall-clock of that first log interval (measured here around its Stopwatch) is many times longer:
    the compilation it leaves out. A model shape no other test uses and a reset of torch.compile's caches
    make sure the compilation happens in this run."""
    laps = []

    class RecordingStopwatch(Stopwatch):
        def restart(self):
            self.wall_start = time.perf_counter()
            super().restart()

        def lap(self):
            wall = time.perf_counter() - self.wall_start
            seconds = super().lap()
            laps.append((wall, seconds))
            return seconds

    monkeypatch.setattr(train, "Stopwatch", RecordingStopwatch)  # the one train.py's loop makes
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)  # no compiled graphs from disk
    torch._dynamo.reset()
    out = tmp_path / "out"
    run_main(args(compile=True, optimizer_name="adamw", n_embd=48, max_iters=6, eval_interval=1000, out_dir=out),
             data_root)
    train_records = records(out, "train")
    assert sorted(train_records) == list(range(1, 7))
    later = sorted(r["ms_per_iter"] for it, r in train_records.items() if it > 1)
    median = later[len(later) // 2]
    first = train_records[1]["ms_per_iter"]
    # laps: up to the evaluation at 0, then one per log line (iterations 1 to 6), then up to the last
    # evaluation; the first record's interval is the first two (the first is the loop's start: ~0 s)
    assert len(laps) == 8
    wall, logged = laps[0][0] + laps[1][0], laps[0][1] + laps[1][1]
    assert logged * 1000 == pytest.approx(first)
    measured = f"first interval: {1000 * wall:.0f} ms wall-clock, {first:.1f} ms logged; later median {median:.1f} ms"
    assert first < 5 * median, measured
    assert wall > 20 * median / 1000 and wall - logged > 1.0, measured  # seconds of compilation left out


# rank 1 "compiles" for a second (log_window.compile_seconds faked) before a lap; then a collective, where a quicker
# rank would wait for it, and a second lap. Each rank writes its two laps to laps<rank>.txt.
SLOW_COMPILING_RANK = """
import time
import torch.distributed as dist
from training import log_window

dist.init_process_group("gloo")
rank = dist.get_rank()
compiled = 0.0
log_window.compile_seconds = lambda: compiled
clock = log_window.Stopwatch(dist.get_world_size())
if rank == 1:
    time.sleep(1.0)
    compiled += 1.0
first = clock.lap()
dist.barrier()
second = clock.lap()
with open(f"laps{rank}.txt", "w") as f:
    f.write(f"{first} {second}")
dist.destroy_process_group()
"""


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_logged_time_excludes_another_ranks_compilation(tmp_path):
    """With several processes, a rank that compiled for less time than another waits for it at the next
    collective: the logged time leaves out that wait too (the longest compilation of any rank), whichever
    side of a log line the wait would fall on. Without it, rank 0's second lap would hold rank 1's second
    of compilation (seen on 2 GPUs in the iteration after the first refresh)."""
    script = tmp_path / "slow_compiling_rank.py"
    script.write_text(SLOW_COMPILING_RANK)
    files = [tmp_path / f"laps{rank}.txt" for rank in range(2)]
    torchrun([str(script)], cwd=tmp_path, completed=lambda result: all(f.exists() for f in files),
             env={"PYTHONPATH": REPO_ROOT})
    laps = [float(lap) for f in files for lap in f.read_text().split()]
    assert len(laps) == 4 and all(abs(lap) < 0.5 for lap in laps), laps


def test_non_finite_loss_stops_without_saving(straight_run, data_root, tmp_path, capsys):
    """Resume a good checkpoint with a learning rate of 1e30: the first step's loss is still finite (it is
    computed before the update), the next one is not, and the run stops with one error line, leaving the
    checkpoint as it was."""
    out = tmp_path / "out"
    shutil.copytree(straight_run("sophiag"), out)
    before = file_bytes(out / "ckpt.pt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(args(out_dir=out, init_from="resume", dropout=0.1, learning_rate=1e30, min_lr=1e30, max_iters=20),
                 data_root)
    assert e.value.code == 1
    message = one_error_line(capsys.readouterr().err)
    assert "the training loss is" in message and "ckpt.pt" in message
    assert file_bytes(out / "ckpt.pt") == before
    logged = records(out, "train")
    assert max(logged) == STRAIGHT_ITERS + 1 and all(math.isfinite(r["train/loss"]) for r in logged.values())


def test_non_finite_validation_loss_stops_before_the_checkpoint(data_root, tmp_path, capsys):
    """From scratch with no warmup and a learning rate of 1e30, evaluating every iteration: the first
    step's training loss is finite, the evaluation after it is not, and the run stops before the
    checkpoint that evaluation would have saved."""
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(args(out_dir=out, learning_rate=1e30, min_lr=1e30, warmup_iters=0, eval_interval=1, max_iters=20),
                 data_root)
    assert e.value.code == 1
    assert "the validation loss is" in one_error_line(capsys.readouterr().err)
    assert not (out / "ckpt.pt").exists()
    assert sorted(records(out, "eval")) == [0] and sorted(records(out, "train")) == [1]


# ----------------------------------------------------------------------------- 8. evaluation

def direct_full_val_loss(run):
    """The mean cross-entropy over every token of every complete window of the val split, one window at a time,
    summed in float64: what val_eval='full' must give."""
    data, block = run.val_data, run.cfg.block_size
    tokens = torch.from_numpy(np.memmap(data.path, dtype=np.uint16, mode="r").astype(np.int64))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, (len(tokens) - 1) // block * block, block):
            window = tokens[start:start + block + 1]
            logits, _ = run.network.model(window[None, :-1])
            total += torch.nn.functional.cross_entropy(logits[0].double(), window[1:], reduction="sum").item()
            count += block
    return total / count, count


def test_full_val_scores_every_window_once(data_root, tmp_path, monkeypatch):
    """val_eval='full': the mean over all 249 complete windows of the tiny val split (7,968 of its 8,000
    tokens), in batches of 4 with the last one (1 window) padded, equals a window-by-window computation; the
    sampled evaluation of the same weights differs from it, and from one seed to another."""
    run = make_run(data_root, tmp_path, monkeypatch, val_eval="full", batch_size=4, total_bs=4)
    for _ in range(3):
        run.iteration()
    expected, count = direct_full_val_loss(run)
    assert count == 249 * 32 and len(run.val_data.all_window_starts()) == 249
    full = run.evaluate()
    assert full["val"] == pytest.approx(expected, rel=1e-6)
    sampled = make_run(data_root, tmp_path, monkeypatch, batch_size=4, total_bs=4)
    other_seed = make_run(data_root, tmp_path, monkeypatch, batch_size=4, total_bs=4, seed=7)
    for t in (sampled, other_seed):
        t.network.model.load_state_dict(run.network.model.state_dict())
    by_seed = other_seed.evaluate()
    assert abs(sampled.evaluate()["val"] - expected) > 1e-4 and abs(by_seed["val"] - sampled.evaluate()["val"]) > 1e-4
    other_seed.evaluate.cfg = dataclasses.replace(other_seed.cfg, val_eval="full")
    assert other_seed.evaluate() == {"train": by_seed["train"], "val": full["val"]}  # the seed does not enter val's


def test_full_val_abandons_on_a_stop(data_root, tmp_path, monkeypatch):
    run = make_run(data_root, tmp_path, monkeypatch, val_eval="full")
    asked = []
    assert run.evaluate.full_split_loss(run.val_data, lambda: asked.append(1) or len(asked) > 3) is None
    assert len(asked) == 4


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_full_val_is_the_same_number_for_any_number_of_processes(data_root, tmp_path):
    """eval_only from one checkpoint, by 1 process and by 2 (each batch of the val split is one rank's, the
    sums are added on the host in batch order): the logged val loss is bit-identical."""
    trained = tmp_path / "trained"
    run_main(args(out_dir=trained, max_iters=3, val_eval="full"), data_root)
    evaluated = {}
    for processes in (1, 2):
        out = tmp_path / f"eval-{processes}"
        shutil.copytree(trained, out)
        argv = args(out_dir=out, init_from="resume", eval_only=True, val_eval="full", max_iters=3)
        if processes == 1:
            result = run_train_subprocess(argv, data_root)
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            torchrun([TRAIN_PY, *argv], cwd=data_root, completed=lambda result: True)
        evaluated[processes] = [r["val/loss"] for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r][-1]
    assert evaluated[1] == evaluated[2]
    assert evaluated[1] == records(trained, "eval")[3]["val/loss"]


# ----------------------------------------------------------------------------- 9. wandb

def test_wandb_offline_run(data_root, tmp_path):
    pytest.importorskip("wandb")
    out, wandb_dir = tmp_path / "out", tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    result = run_train_subprocess(args(out_dir=out, max_iters=2, wandb_log=True, wandb_run_name="tiny-test"),
                                  cwd=data_root, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, os.listdir(wandb_dir)
    run_id = load_checkpoint(str(out / "ckpt.pt"))["wandb_run_id"]
    assert run_id and runs[0].name.endswith(f"-{run_id}")  # the id a resume would continue
    assert list(runs[0].glob("*.wandb"))  # the offline log that `wandb sync` uploads


# ----------------------------------------------------------------------------- 10. learning rate

def test_get_lr_schedule():
    cfg = make_config(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    lr = lambda it: get_lr(it, cfg)  # noqa: E731
    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)  # linear warmup from 0
    assert lr(60) == pytest.approx(0.1 + 0.5 * 0.9)  # half way through the cosine
    assert lr(35) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)
    assert lr(110) == pytest.approx(0.1) and lr(111) == lr(10_000) == 0.1  # min_lr from lr_decay_iters on
    decay = [lr(it) for it in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing
    ramp = make_config(learning_rate=1.0, min_lr=0.1, warmup_iters=110, lr_decay_iters=110)  # no cosine phase
    assert get_lr(109, ramp) == pytest.approx(109 / 110) and get_lr(110, ramp) == 0.1
    constant = dataclasses.replace(cfg, decay_lr=False)
    assert {get_lr(it, constant) for it in (0, 5, 10, 60, 110, 10_000)} == {1.0}
