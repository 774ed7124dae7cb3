"""Never stuck, never cryptic: a run that died early never blocks its own command; init_from='auto' lets a
scheduler requeue one command forever (SIGKILLs at random moments end bit-identical to an uninterrupted run);
wandb that cannot start costs the run nothing; a signal at any moment of the start, a full disk, the leftovers
of a kill, a resume that would mix two runs and the other inputs that were accepted silently are one line each.
"""

import glob
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch

import training.checkpoint
from conftest import (args, fails_cleanly, file_bytes, logged_iterations, records, run_main, running, subprocess_env,
                      tiny_config, train_command, wait_for)
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.metrics import read_metrics

TIMINGS = ("time", "ms_per_iter", "tokens_per_s", "mfu")


def logged(out_dir):
    """The run's records as read_metrics gives them (resumes folded in), without config lines and timings."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(out_dir / "metrics.jsonl")
            if "config" not in r]


# ----------------------------------------------------------------------------- 1. no dead ends

def test_a_run_killed_before_its_first_checkpoint_does_not_block_its_command(data_root, tmp_path, capsys):
    """Its folder holds a metrics file and no checkpoint: the same command starts afresh, keeps the earlier
    files in unfinished-<date-time>/ and says so; resume says how to start, and names 'auto'."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"config": {}}\n{"iter": 1, "train/loss": 10.8}\n')
    message = fails_cleanly(args(out_dir=out, init_from="resume", max_iters=2), data_root, capsys)
    assert "init_from='scratch'" in message and "init_from='auto'" in message
    run_main(args(out_dir=out, max_iters=2, eval_interval=1000), data_root)
    note = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"note: {re.escape(str(out))} held a run that never saved a checkpoint: moved its files to "
                        rf"{re.escape(str(out))}/unfinished-\d{{8}}-\d{{6}} and starting afresh", note), note
    (kept,) = glob.glob(str(out / "unfinished-*"))
    assert open(os.path.join(kept, "metrics.jsonl")).read().endswith('"train/loss": 10.8}\n')
    assert load_checkpoint(str(out / "ckpt.pt"))["iter_num"] == 2 and sorted(records(out, "train")) == [1, 2]


def test_auto_resumes_when_there_is_a_checkpoint_and_starts_afresh_when_not(data_root, tmp_path):
    out = tmp_path / "out"
    run_main(args(out_dir=out, init_from="auto", max_iters=2, eval_interval=1000), data_root)
    run_main(args(out_dir=out, init_from="auto", max_iters=4, eval_interval=1000), data_root)
    starts = [r for r in read_metrics(out / "metrics.jsonl") if "config" in r]
    assert [r["config"]["init_from"] for r in starts] == ["scratch", "resume"]  # what each start did
    assert starts[1]["resumed_from"] == 2 and sorted(records(out, "train")) == [1, 2, 3, 4]


def test_a_requeued_command_survives_sigkills_at_random_moments(data_root, tmp_path):
    """One command (init_from='auto', checkpoints every 4 iterations) killed by SIGKILL at random moments, before
    the first checkpoint and after later ones, then simply run again until it finishes: its metrics are the
    uninterrupted run's, bit for bit, and so is its final checkpoint's model."""
    common = dict(init_from="auto", max_iters=12, eval_interval=4, dropout=0.1)
    straight, out = tmp_path / "straight", tmp_path / "requeued"
    run_main(args(out_dir=straight, **common), data_root)
    chooser = random.Random(25)
    kills = [chooser.randint(1, 3), chooser.randint(5, 7), chooser.randint(9, 11)]  # iterations logged before each
    command = train_command(args(out_dir=out, **common))
    for attempt, kill_after in enumerate(kills):
        logs = tmp_path / f"attempt{attempt}"
        logs.mkdir()
        with running(command, data_root, logs) as proc:
            wait_for(lambda: max(logged_iterations(out), default=0) >= kill_after, 120,
                     f"iteration {kill_after} logged", proc)
            proc.send_signal(signal.SIGKILL)
    result = subprocess.run(command, cwd=data_root, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged(out) == logged(straight)
    a, b = load_checkpoint(str(out / "ckpt.pt")), load_checkpoint(str(straight / "ckpt.pt"))
    assert a["iter_num"] == 12 and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert len(glob.glob(str(out / "unfinished-*"))) == 1  # the kill before the first checkpoint; files kept
    again = subprocess.run(command, cwd=data_root, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already at iteration 12, max_iters=12: nothing to train" in again.stdout
    assert logged(out) == logged(straight)


def test_unfinished_checkpoint_files_of_a_killed_process_are_removed(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=2, eval_interval=1000), data_root)
    (out / "ckpt.pt.tmp4242").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    run_main(args(out_dir=out, init_from="resume", max_iters=3, eval_interval=1000), data_root)
    assert (f"note: removed 1 unfinished checkpoint file(s) that a killed process left in {out} (ckpt.pt.tmp4242)"
            in capsys.readouterr().out)
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl", "train.lock"]


def test_fine_tuning_from_the_checkpoint_that_overwrite_moves_aside(data_root, tmp_path):
    """init_from=<out_dir>/ckpt.pt with --overwrite=True: the checkpoint is moved aside, then read from there."""
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=3, eval_interval=1000), data_root)
    trained = load_checkpoint(str(out / "ckpt.pt"))["model"]
    run_main(args(out_dir=out, init_from=str(out / "ckpt.pt"), overwrite=True, max_iters=1, eval_interval=1000,
                  learning_rate=1e-30, min_lr=1e-30, weight_decay=0.0), data_root)
    (moved,) = glob.glob(str(out / "overwritten-*"))
    started = read_metrics(out / "metrics.jsonl")[0]["config"]["init_from"]
    assert started == os.path.join(moved, "ckpt.pt")
    now = load_checkpoint(str(out / "ckpt.pt"))["model"]
    assert all(torch.allclose(now[k], trained[k], atol=1e-6) for k in trained)  # the same weights, trained on


# ----------------------------------------------------------------------------- 2. wandb never costs the run

@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a network that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_wandb_that_does_not_answer_costs_the_run_nothing(silent_server, data_root, tmp_path):
    """An API key and a server that never answers: after WANDB_INIT_TIMEOUT one line says so, and the run
    trains and logs to wandb offline (to sync later)."""
    pytest.importorskip("wandb")
    out, wandb_dir = tmp_path / "out", tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    env = subprocess_env(WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{silent_server}",
                         WANDB_INIT_TIMEOUT="3", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    env.pop("WANDB_MODE", None)
    result = subprocess.run(train_command(args(out_dir=out, max_iters=2, eval_interval=1000, wandb_log=True)),
                            cwd=data_root, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: wandb")]
    assert len(notes) == 1 and "did not start the run within 3 s" in notes[0] and "wandb sync" in notes[0], notes
    assert "Traceback" not in result.stderr
    assert glob.glob(str(wandb_dir / "wandb" / "offline-run-*"))
    assert sorted(records(out, "train")) == [1, 2]


# ----------------------------------------------------------------------------- 3. one line for every input error

SIGNAL_DURING_BUILD = """
import os, signal, sys
import train

build = train.build

def interrupted_build(cfg, dist):
    for signum in {signals}:
        os.kill(os.getpid(), signum)
    return build(cfg, dist)

train.build = interrupted_build
train.main(sys.argv[1:])
"""


@pytest.mark.parametrize("name, signals, code", [("SIGINT", ["SIGINT"], 0), ("SIGTERM", ["SIGTERM"], 0),
                                                 ("SIGINT twice", ["SIGINT", "SIGINT"], 128 + signal.SIGINT)])
def test_a_signal_while_the_run_is_built_stops_it_cleanly(name, signals, code, data_root, tmp_path):
    """A signal during the start (here: while the model is built) undoes the start: no traceback, no folder.
    A second one ends the process at once, with one line."""
    script = tmp_path / "script.py"
    script.write_text(SIGNAL_DURING_BUILD.format(signals="[" + ", ".join(f"signal.{s}" for s in signals) + "]"))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(script), *args(out_dir=out, max_iters=2)], cwd=data_root,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if len(signals) == 1:
        assert result.stdout.strip().endswith("stop requested before the first iteration: nothing was written")
        assert not out.exists()
    else:
        assert [line for line in result.stderr.splitlines() if line.strip()] == ["SIGINT again: exiting at once"]


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data_root, tmp_path, capsys,
                                                                                 monkeypatch):
    """torch's zip writer reports a full disk as "unexpected pos": the run stops with one line naming the folder,
    the space needed and the space free; the previous checkpoint is intact and nothing unfinished is left."""
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=2, eval_interval=2), data_root)
    before = file_bytes(out / "ckpt.pt")
    save = torch.save

    def full_disk(state, f):
        save({"a": torch.zeros(10)}, f)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(training.checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(training.checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 4096))
    message = fails_cleanly(args(out_dir=out, init_from="resume", max_iters=4, eval_interval=2), data_root, capsys)
    assert f"cannot write the checkpoint {out}/ckpt.pt: the disk is full" in message
    assert f"free in {out}" in message and "GB" in message and "--init_from=resume" in message
    assert file_bytes(out / "ckpt.pt") == before
    assert sorted(os.listdir(out)) == ["ckpt.pt", "metrics.jsonl", "train.lock"]


@pytest.mark.parametrize("change", [dict(dataset="other"), dict(total_bs=8), dict(seed=7)], ids=lambda c: next(iter(c)))
def test_a_resume_that_would_mix_two_runs_is_refused(change, data_root, tmp_path, capsys):
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=2, eval_interval=1000), data_root)
    shutil.copytree(data_root / "data" / "tiny", data_root / "data" / "other", dirs_exist_ok=True)
    before = file_bytes(out / "metrics.jsonl")
    key, value = next(iter(change.items()))
    message = fails_cleanly(args(out_dir=out, init_from="resume", max_iters=4, **change), data_root, capsys)
    assert f"trained with {key}=" in message and repr(value) in message and "another out_dir" in message
    assert file_bytes(out / "metrics.jsonl") == before


@pytest.mark.parametrize("overrides, named", [
    pytest.param(dict(out_dir=""), "'out_dir' is empty", id="empty-out_dir"),
    pytest.param(dict(min_lr=1e-2), "min_lr=0.01 is above learning_rate=0.001", id="min_lr-above-learning_rate"),
    pytest.param(dict(device="mps"), "no Apple GPU", id="mps-where-there-is-none",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    pytest.param(dict(device="meta"), "'cpu', 'cuda' or 'mps'", id="another-device-type"),
])
def test_values_that_were_accepted_silently_are_refused(overrides, named, data_root, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(data_root, work)
    before = sorted(os.listdir(work))
    message = fails_cleanly(args(**{"out_dir": tmp_path / "out", "max_iters": 2, **overrides}), work, capsys)
    assert named in message
    assert sorted(os.listdir(work)) == before and not (tmp_path / "out").exists()


def test_config_files_that_are_not_python_assignments_are_refused(tmp_path):
    """A YAML file was read as Python, where `key: value` is an annotation that sets nothing."""
    yaml = tmp_path / "run.yaml"
    yaml.write_text("learning_rate: 0.001\n")
    with pytest.raises(ConfigError, match=r"run.yaml: config files are Python .* not \.yaml"):
        load_config([str(yaml)])
    annotated = tmp_path / "run.py"
    annotated.write_text("max_iters = 10\nlearning_rate: 0.001\n")
    with pytest.raises(ConfigError, match=r"run.py line 2: `learning_rate: 0.001` sets nothing; write `key = value`"):
        load_config([str(annotated)])
    annotated.write_text("learning_rate: float = 0.001\n")  # an annotated assignment does set the value
    assert load_config([str(annotated)]).learning_rate == 0.001


def test_the_paper_configs_pass_the_new_checks():
    """The new checks refuse nothing that a config file of the project or the tests' tiny run sets."""
    for path in glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "*.py")):
        load_config([path])
    tiny_config()


def test_resuming_a_run_past_max_iters_says_there_is_nothing_to_train(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=3, eval_interval=1000), data_root)
    before = file_bytes(out / "metrics.jsonl")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(args(out_dir=out, init_from="resume", max_iters=2), data_root)
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().endswith("is already at iteration 3, max_iters=2: nothing to train "
                                                     "(raise max_iters to train on)")
    assert file_bytes(out / "metrics.jsonl") == before
