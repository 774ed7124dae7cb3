"""CPU tests for issue 13, "Nothing lost, nothing cryptic": what train.py does to a run's folder and what
it tells a person.

Covered: a run from scratch refuses an out_dir that holds a run (and --overwrite=True moves that run
aside instead of deleting it); a resume only appends to metrics.jsonl (also after a torn last line) and
read_metrics sees each iteration once; one process at a time trains in an out_dir, and a SIGKILLed
process leaves no stale lock; a start that fails leaves no folder behind; a resume in the middle of a
log interval logs what the uninterrupted run logs; SIGTERM during an evaluation stops at once, alone and
under torchrun; one-line errors for values no run can use, an unwritable out_dir, token ids beyond the
vocabulary and wandb without a login; datasets found from another working directory; --help; the
progress lines; and the warning for a GPU-sized config on a CPU.

The helpers, the tiny model (TINY) and its dataset (data_root) are test_train's. Most runs are in-process
(no interpreter start-up, which costs seconds on this two-core machine); subprocesses are used where a
signal, a second process or the exit status of a real command is the point.
"""

import dataclasses
import glob
import inspect
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (GLOO, REPO_ROOT, TORCHRUN, TRAIN_PY, args, fails_cleanly, file_bytes, logged_iterations,
                      one_error_line, records, run_main, running, subprocess_env, train_command, wait_for,
                      write_tiny_dataset)

import train
import training.progress as progress
from data.tokens import write_tokens
from model import GPT, GPTConfig
from training.checkpoint import load_checkpoint
from training.config import Config
from training.metrics import read_metrics

# An evaluation of the tiny model costs ~70 ms per batch of each split here (measured): 2000 batches take
# minutes, so a run that stops within seconds of a SIGTERM did not wait for the evaluation to end.
SLOW_EVAL_ITERS = 2000


# ----------------------------------------------------------------------------- helpers


def stopped_at(stdout):
    """The iteration of the run's one 'stop requested' line."""
    stops = re.findall(r"^stop requested: saving a checkpoint at iteration (\d+)", stdout, re.M)
    assert len(stops) == 1, stdout
    return int(stops[0])


def checkpoint_iteration(out_dir):
    return load_checkpoint(os.path.join(out_dir, "ckpt.pt"))["iter_num"]


def starts(out_dir):
    """The "resumed_from" of each start's config line in out_dir/metrics.jsonl (None: from scratch)."""
    return [r.get("resumed_from") for r in read_metrics(os.path.join(out_dir, "metrics.jsonl")) if "config" in r]


# ----------------------------------------------------------------------------- 1. an earlier run is kept

@pytest.mark.parametrize("earlier", [("ckpt.pt",), ("ckpt.pt", "metrics.jsonl")],
                         ids=["ckpt", "ckpt-and-metrics"])
def test_a_run_from_scratch_refuses_an_out_dir_holding_a_run(earlier, data_root, tmp_path, capsys):
    """The earlier run's files only need to exist to be protected: their content is not read."""
    out = tmp_path / "out"
    out.mkdir()
    before = {name: f"the earlier run's {name}".encode() for name in earlier}
    for name, content in before.items():
        (out / name).write_bytes(content)
    message = fails_cleanly(args(out_dir=out, max_iters=2), data_root, capsys)
    assert "--init_from=resume (or auto)" in message and "--overwrite=True" in message
    assert {name: file_bytes(out / name) for name in earlier} == before


def test_overwrite_moves_the_earlier_run_aside(data_root, tmp_path):
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=2, eval_interval=1000), data_root)
    before = {name: file_bytes(out / name) for name in ("ckpt.pt", "metrics.jsonl")}
    run_main(args(out_dir=out, max_iters=3, eval_interval=1000, overwrite=True), data_root)
    moved = glob.glob(str(out / "overwritten-*"))
    assert len(moved) == 1
    assert {name: file_bytes(os.path.join(moved[0], name)) for name in before} == before  # nothing lost
    assert checkpoint_iteration(out) == 3  # the new run's files are in out_dir
    assert starts(out) == [None] and sorted(records(out, "train")) == [1, 2, 3]


# ----------------------------------------------------------------------------- 2. metrics.jsonl is appended to

def test_resume_appends_and_the_reader_sees_each_iteration_once(data_root, tmp_path):
    """A process that logged iterations 4 and 5 after its checkpoint at 3 and died before its next one
    (made here by putting the checkpoint at 3 back): the resume from 3 appends to the file as it is, and
    read_metrics leaves out what the resume superseded."""
    out = tmp_path / "out"
    common = dict(out_dir=out, eval_interval=1000)
    run_main(args(max_iters=3, **common), data_root)
    at_3 = file_bytes(out / "ckpt.pt")
    run_main(args(max_iters=5, init_from="resume", **common), data_root)
    (out / "ckpt.pt").write_bytes(at_3)
    earlier, inode = file_bytes(out / "metrics.jsonl"), os.stat(out / "metrics.jsonl").st_ino

    run_main(args(max_iters=6, init_from="resume", **common), data_root)
    assert file_bytes(out / "metrics.jsonl").startswith(earlier)  # never truncated or rewritten
    assert os.stat(out / "metrics.jsonl").st_ino == inode  # the same file, not a replacement
    assert starts(out) == [None, 3, 3]
    assert sorted(records(out, "train")) == list(range(1, 7))  # records() fails on a duplicate
    assert sorted(records(out, "eval")) == [0, 3, 6]  # the first run's last evaluation, at 3, is kept


def test_resume_after_a_torn_last_line(data_root, tmp_path):
    """A kill mid-write leaves half a record without its newline. (The old code coped with that too, by
    rewriting the file: here it must stay the same file, appended to.)"""
    out = tmp_path / "out"
    run_main(args(max_iters=3, eval_interval=1000, out_dir=out), data_root)
    earlier, inode = file_bytes(out / "metrics.jsonl"), os.stat(out / "metrics.jsonl").st_ino
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 4, "tokens": 512, "train/lo')
    run_main(args(max_iters=5, eval_interval=1000, out_dir=out, init_from="resume"), data_root)
    assert file_bytes(out / "metrics.jsonl").startswith(earlier) and os.stat(out / "metrics.jsonl").st_ino == inode
    lines = read_metrics(out / "metrics.jsonl")
    assert all(set(r) >= {"iter", "train/loss"} or "val/loss" in r or "config" in r for r in lines)
    assert sorted(records(out, "train")) == list(range(1, 6)) and sorted(records(out, "eval")) == [0, 3, 5]


# ----------------------------------------------------------------------------- 3. one process per out_dir

def test_a_second_process_is_refused_while_a_run_trains(data_root, tmp_path, capsys):
    """The second start is in-process (it fails before any training), the first a real process."""
    out = tmp_path / "out"
    with running(train_command(args(out_dir=out, max_iters=100_000, eval_interval=1000)), data_root,
                 tmp_path) as first:
        wait_for(lambda: logged_iterations(out), 90, "a training record of the first run", first)
        for second in (dict(init_from="resume"), {}):
            started = time.monotonic()
            message = fails_cleanly(args(out_dir=out, max_iters=2, **second), data_root, capsys)
            assert time.monotonic() - started < 5
            assert "another process" in message and str(first.pid) in message
        logged = file_bytes(out / "metrics.jsonl")
        assert first.poll() is None  # still training
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, (tmp_path / "stderr").read_text()
    assert checkpoint_iteration(out) == stopped_at((tmp_path / "stdout").read_text()) >= 1
    assert file_bytes(out / "metrics.jsonl").startswith(logged)


def test_a_sigkilled_run_leaves_no_stale_lock(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    with running(train_command(args(out_dir=out, max_iters=100_000, eval_interval=2)), data_root, tmp_path) as first:
        wait_for(lambda: max(logged_iterations(out), default=0) >= 3, 90, "iteration 3 logged", first)
        assert "another process" in fails_cleanly(args(out_dir=out, init_from="resume", max_iters=2), data_root,
                                                  capsys)  # the lock was held
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    saved = checkpoint_iteration(out)
    run_main(args(out_dir=out, init_from="resume", max_iters=saved + 2, eval_interval=2), data_root)
    assert checkpoint_iteration(out) == saved + 2
    assert max(records(out, "train")) == saved + 2


# ----------------------------------------------------------------------------- 4. a failed start leaves nothing

@pytest.mark.parametrize("failure", [dict(dataset="nonexistent"), dict(init_from="resume")],
                         ids=["missing-dataset", "resume-without-checkpoint"])
@pytest.mark.parametrize("where", ["out", "a/b/c"])
def test_a_failed_start_leaves_no_out_dir(failure, where, data_root, tmp_path, capsys):
    fails_cleanly(args(out_dir=tmp_path / where, max_iters=2, **failure), data_root, capsys)
    assert os.listdir(tmp_path) == []  # neither out_dir nor a folder above it that the run made


# ----------------------------------------------------------------------------- 5. resume mid log interval

@pytest.mark.parametrize("optimizer", ["sophiag", "adamw"])
def test_a_resume_mid_log_interval_logs_what_the_straight_run_logs(optimizer, data_root, tmp_path):
    """log_interval=4, stopped at 6 and resumed to 10: the record at 8 spans the stop. Its mean loss and
    gradient norm are over iterations 5-8 (two of them before the stop), exactly as in a straight run,
    and its time per iteration is over the same four iterations (the training time from the record at 4)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = dict(optimizer_name=optimizer, log_interval=4, eval_interval=1000)
    run_main(args(out_dir=straight, max_iters=10, **common), data_root)
    run_main(args(out_dir=resumed, max_iters=6, **common), data_root)
    run_main(args(out_dir=resumed, max_iters=10, init_from="resume", **common), data_root)
    assert sorted(records(straight, "train")) == sorted(records(resumed, "train")) == [4, 8]
    a, b = records(straight, "train")[8], records(resumed, "train")[8]
    assert a["train/loss"] == b["train/loss"] and a["grad_norm"] == b["grad_norm"]
    for out in (straight, resumed):
        logged = records(out, "train")
        seconds = logged[8]["time"] - logged[4]["time"]  # training seconds of iterations 5-8
        assert logged[8]["ms_per_iter"] == pytest.approx(1000 * seconds / 4, rel=1e-9)
        assert logged[8]["tokens_per_s"] == pytest.approx(4 * 4 * 32 / seconds, rel=1e-9)  # total_bs x block


# ----------------------------------------------------------------------------- 6-7. SIGTERM during an evaluation

def stop_during_an_evaluation(command, data_root, tmp_path, out, limit):
    """Runs `command` (a resume from iteration 3 with an evaluation due at 5 that would take minutes),
    sends SIGTERM to it once it has announced that evaluation, and returns (exit status, seconds to exit,
    stdout)."""
    run_main(args(out_dir=out, max_iters=3, eval_interval=1000), data_root)
    with running(command, data_root, tmp_path) as proc:
        wait_for(lambda: 5 in logged_iterations(out), 120, "iteration 5 logged", proc)
        stdout = tmp_path / "stdout"
        wait_for(lambda: re.search(r"^iter 5: evaluating", stdout.read_text(), re.M), 10, "'iter 5: evaluating'",
                 proc)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=limit + 15)
        return rc, time.monotonic() - signalled, stdout.read_text()


def resumes_after_the_stop(out, data_root):
    """A resume from the stop at 5 evaluates at 5 (that evaluation was abandoned) and goes on to 7."""
    assert checkpoint_iteration(out) == 5
    run_main(args(out_dir=out, init_from="resume", max_iters=7, eval_interval=5), data_root)
    assert sorted(records(out, "train")) == list(range(1, 8)) and sorted(records(out, "eval")) == [0, 3, 5, 7]


def slow_evaluation_at_5(out):
    return args(out_dir=out, init_from="resume", max_iters=100_000, eval_interval=5, eval_iters=SLOW_EVAL_ITERS)


def test_sigterm_during_an_evaluation_stops_at_once(data_root, tmp_path):
    out = tmp_path / "out"
    rc, seconds, stdout = stop_during_an_evaluation(train_command(slow_evaluation_at_5(out)), data_root, tmp_path,
                                                    out, limit=10)
    assert rc == 0, (tmp_path / "stderr").read_text()
    assert seconds < 10, f"{seconds:.1f} s"
    assert stopped_at(stdout) == 5
    resumes_after_the_stop(out, data_root)


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_sigterm_to_torchrun_during_an_evaluation(data_root, tmp_path):
    """The launcher forwards SIGTERM to both workers, which abandon the evaluation together: one stop line
    (rank 0's), one checkpoint at that iteration, all before the launcher's SIGKILL 30 s after the signal.
    torchrun itself exits 1 here (torch 2.13, signalled during an evaluation); it has also been seen to exit
    0 after a stop (StopRequest's docstring), so only the checkpoint tells."""
    out = tmp_path / "out"
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", TRAIN_PY, *slow_evaluation_at_5(out)]
    rc, seconds, stdout = stop_during_an_evaluation(command, data_root, tmp_path, out, limit=30)
    assert rc == 1, (tmp_path / "stderr").read_text()[-3000:]
    assert seconds < 30, f"{seconds:.1f} s"
    assert stopped_at(stdout) == 5
    resumes_after_the_stop(out, data_root)


# ----------------------------------------------------------------------------- 8. one-line errors

@pytest.mark.parametrize("overrides, named", [
    pytest.param(dict(n_embd=30, n_head=4), "n_head=4", id="n_embd-30-n_head-4"),
    pytest.param(dict(learning_rate=0), "'learning_rate'", id="learning_rate-0"),
    pytest.param(dict(learning_rate=-1), "'learning_rate'", id="learning_rate-negative"),
    pytest.param(dict(max_iters=0), "'max_iters'", id="max_iters-0"),
    pytest.param(dict(warmup_iters=-5), "'warmup_iters'", id="warmup_iters-negative"),
    pytest.param(dict(device="cuda"), "CUDA", id="cuda-without-a-gpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_unusable_values_are_one_line_errors_and_write_nothing(overrides, named, data_root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = args(out_dir=out, **{"max_iters": 2, **overrides})  # 2 iterations: the old code ran them
    assert named in fails_cleanly(argv, data_root, capsys)
    assert not out.exists()


def test_an_out_dir_that_cannot_be_written_is_one_line(data_root, tmp_path, capsys):
    """A path under a regular file (root ignores permissions, so this is the case that fails for anyone);
    a read-only folder as well when not running as root."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    unwritable = [afile / "out"]
    if os.geteuid() != 0:
        (tmp_path / "readonly").mkdir(mode=0o500)
        unwritable.append(tmp_path / "readonly" / "out")
    for out in unwritable:
        message = fails_cleanly(args(out_dir=out, max_iters=2), data_root, capsys)
        assert str(out) in message and "--out_dir" in message
        assert not out.exists()
    assert afile.read_text() == "not a folder"


def test_a_token_id_beyond_the_vocabulary_is_one_line(tmp_path, capsys):
    """Token files made elsewhere, with no meta.json to vouch for their ids: train.py must look at them."""
    folder = tmp_path / "root" / "data" / "badtok"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        write_tokens(str(folder / f"{split}.bin"), np.full(5_000, 60_000, dtype=np.uint16))
    out = tmp_path / "out"
    message = fails_cleanly(args(dataset="badtok", out_dir=out, max_iters=2), tmp_path / "root", capsys)
    assert "60000 at position 0" in message and "below 50257" in message
    assert not out.exists()


def test_wandb_without_a_login_is_one_line(data_root, tmp_path):
    pytest.importorskip("wandb")
    home = tmp_path / "home"  # no ~/.netrc, no wandb settings
    home.mkdir()
    env = subprocess_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_CONFIG_DIR", "NETRC"):
        env.pop(name, None)
    out = tmp_path / "out"
    result = subprocess.run(train_command(args(out_dir=out, max_iters=2, wandb_log=True)), cwd=data_root, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    message = one_error_line(result.stderr)
    assert "wandb login" in message and "WANDB_MODE=offline" in message
    assert not out.exists()


# ----------------------------------------------------------------------------- 9. another working directory

def test_a_dataset_in_the_repository_is_found_from_another_directory(tmp_path):
    """A tiny dataset made in the repository's data/ for this test (and removed after it), trained on from a
    folder that has no data/."""
    name = f"test-elsewhere-{os.getpid()}"
    in_repo = Path(REPO_ROOT) / "data" / name
    write_tiny_dataset(in_repo)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        run_main(args(dataset=name, out_dir=tmp_path / "out", max_iters=2, eval_interval=1000), elsewhere)
    finally:
        shutil.rmtree(in_repo)
    assert checkpoint_iteration(tmp_path / "out") == 2


def test_a_missing_dataset_names_where_it_looked_in_the_repository(tmp_path, capsys):
    message = fails_cleanly(args(dataset="nonexistent", out_dir=tmp_path / "out", max_iters=2), tmp_path, capsys)
    looked_in = message.removeprefix("error: ").split(" ")[0]  # as written, relative to the working directory
    expected = os.path.join(REPO_ROOT, "data", "nonexistent", "train.bin")
    assert os.path.normpath(os.path.join(tmp_path, looked_in)) == expected, message
    assert "prepare.py" in message
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 10. --help

def documented_keys():
    """{key: meaning} from Config's source: the comment lines just above each field and the one on its line
    ('# ---' lines head sections: not a meaning)."""
    meanings, above = {}, []
    for line in inspect.getsource(Config).splitlines():
        text = line.strip()
        field = re.match(r"(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", text)
        if text.startswith("#") and not text.startswith("# ---"):
            above.append(text.lstrip("#").strip())
        elif field:
            meanings[field.group(1)] = " ".join(above + [field.group(2)] if field.group(2) else above)
            above = []
    assert set(meanings) == {f.name for f in dataclasses.fields(Config)}  # every field was read
    return meanings


def flattened(text):
    """text on one line: the help wraps meanings over lines, at spaces and after hyphens."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def check_usage(stdout):
    assert "usage" in stdout.lower() or "python train.py" in stdout
    for key in dataclasses.fields(Config):
        assert f"--{key.name}={key.default!r}" in stdout, key.name
    for key, meaning in documented_keys().items():
        assert flattened(meaning) in flattened(stdout), key


def test_help(tmp_path, capsys):
    result = subprocess.run(train_command(["-h"]), cwd=tmp_path, env=subprocess_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    check_usage(result.stdout)
    assert "--learning_rate=0.0006" in result.stdout
    capsys.readouterr()
    run_main(["--help"], tmp_path)  # returns: exit status 0
    assert capsys.readouterr().out == result.stdout
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 11. progress lines

def test_progress_lines(data_root, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    run_main(args(out_dir=out, log_interval=2, max_iters=4, eval_interval=2), data_root)
    stdout = capsys.readouterr().out
    for it in (2, 4):
        assert re.search(rf"^iter {it}/4: loss [\d.]+, .*mfu n/a, eta \w+$", stdout, re.M), stdout
        assert re.search(rf"^iter {it}: evaluating", stdout, re.M)
        assert re.search(rf"^iter {it}: train loss [\d.]+, val loss [\d.]+", stdout, re.M)
        assert f"saved {out}/ckpt.pt at iteration {it}" in stdout
    final = records(out, "eval")[4]["val/loss"]
    assert re.search(rf"^finished 4 iterations: val loss {final:.4f}", stdout, re.M), stdout
    assert not any("mfu" in r for r in records(out, "train").values())  # no GPU peak to compare a CPU with

    run_main(args(out_dir=out, log_interval=2, max_iters=6, eval_interval=2, init_from="resume"), data_root)
    assert re.search(r"^resuming .*ckpt\.pt at iteration 4\b", capsys.readouterr().out, re.M)


# ----------------------------------------------------------------------------- 12. a GPU-sized run on a CPU

def test_a_gpu_sized_config_on_the_cpu_warns(capsys):
    """GPT-2 small (built, never trained: a second and 0.5 GB) at the paper's 480 x 1024 tokens per iteration
    warns; the tiny model does not."""
    progress.warn_if_too_big_for_the_cpu(GPT(GPTConfig()), 480 * 1024, batch_size=12)
    warning = capsys.readouterr().err
    assert warning.startswith("warning:"), warning
    assert "124M parameters" in warning and "491,520 tokens per iteration" in warning
    assert re.search(r"~\d+[smhd]\w* per iteration", warning), warning

    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32))
    progress.warn_if_too_big_for_the_cpu(tiny, 4 * 32, batch_size=2)
    assert capsys.readouterr().err == ""


def test_durations_read_as_a_person_writes_them():
    assert [progress.duration(s) for s in (0.4, 45, 192, 7500, 3 * 86400 + 4 * 3600 + 59)] == \
        ["0s", "45s", "3m12s", "2h05m", "3d04h"]

def test_a_second_signal_ends_the_process_at_once():
    """The first SIGTERM or SIGINT only asks for a stop; a second one of the same ends the process without
    waiting (Ctrl-C twice), with one line (tests/test_recovery.py sends both to a real run)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = train.StopRequest()
        assert not stop.requested
        stop._handle(signal.SIGINT, None)
        assert stop.requested
        assert signal.getsignal(signal.SIGINT) == stop._exit_now
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # the other signal still asks politely
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
