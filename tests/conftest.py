"""Fixtures and helpers that several test modules share: the tiny run (TINY and its command-line form), running
train.py in this process or as a subprocess or under torchrun, reading a run's records, one-line errors, and
the statistics of the samplers' tests."""

import contextlib
import glob
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed

import train
from data.tokens import write_tokens
from training.config import make_config
from training.metrics import read_metrics
from training.tokenizer import N_VOCAB


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors on a shared 2-core machine: more intra-op threads only add contention (10-50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny_dataset(folder):
    """data/<name>/{train,val}.bin in `folder` (a pathlib.Path): token ids with some structure (each token
    is likely the previous one + 1), so the loss falls, and ids far below the vocabulary size."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40_000), ("val", 8_000)):
        steps = np.where(rng.random(n) < 0.7, 1, rng.integers(0, 512, n))
        write_tokens(str(folder / f"{split}.bin"), (np.cumsum(steps) % 512).astype(np.uint16))


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """In-process training runs are single-process runs, even under a launcher that set these."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A folder holding data/tiny/{train,val}.bin (write_tiny_dataset), for runs started from it."""
    root = tmp_path_factory.mktemp("root")
    write_tiny_dataset(root / "data" / "tiny")
    return root


# ----------------------------------------------------------------------------- helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TRAIN_PY = os.path.join(REPO_ROOT, "train.py")


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


# The tiny run every test starts from; tests override single keys.
TINY = dict(
    dataset="tiny", device="cpu", dtype="float32", compile=False,
    n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=2, total_bs=4,
    eval_iters=2, eval_interval=5, log_interval=1,
    learning_rate=1e-3, min_lr=1e-4, warmup_iters=2, lr_decay_iters=20,  # fixed: independent of max_iters
    hess_interval=3, optimizer_name="sophiag",
)


GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()


def args(**overrides):
    """--key=value arguments for TINY with `overrides` (strings unquoted, as on a command line)."""
    return [f"--{key}={value}" for key, value in {**TINY, **overrides}.items()]


def tiny_config(**overrides):
    return make_config(**{**TINY, **overrides})


def subprocess_env(**extra):
    """The environment for a child process: the repo importable, one thread, no inherited DDP variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.update(extra)
    return env


@contextlib.contextmanager
def working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_main(argv, cwd):
    """train.main(argv) in this process, from `cwd`. main() installs SIGTERM/SIGINT handlers (StopRequest);
    pytest's own are put back afterwards. Raises SystemExit where main() exits."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with working_directory(cwd):
            train.main(argv)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run_train_subprocess(argv, cwd, timeout=120, **env):
    return subprocess.run([sys.executable, TRAIN_PY, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(**env))


def kind(record):
    if "config" in record:
        return "config"
    if "val/loss" in record:
        return "eval"
    if "train/loss" in record:
        return "train"
    raise AssertionError(f"unexpected metrics record {record}")


def records(out_dir, which):
    """The `which` ('train' or 'eval') records of out_dir/metrics.jsonl, by iteration; fails on duplicates."""
    found = {}
    for r in read_metrics(os.path.join(out_dir, "metrics.jsonl")):
        if kind(r) == which:
            assert r["iter"] not in found, f"iteration {r['iter']} has two {which} records in {out_dir}"
            found[r["iter"]] = r
    return found


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def one_error_line(stderr):
    """The single line of a clean failure: exactly one non-empty stderr line, starting 'error:'."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def wait_for(condition, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(argv, cwd, completed, timeout=180, env=None):
    """torchrun --standalone --nproc_per_node=2 argv, retried (at most twice) only for one known,
    intermittent failure that comes after the work is done: a rank aborting at interpreter exit with
    "terminate called without an active exception". Its backtrace (torch 2.13, CPU, gloo): a gloo worker
    thread (ProcessGroupGloo::runLoop) destroys the last barrier's AsyncWork, whose ThreadLocalState holds
    a Python object, and takes the GIL from a finalizing interpreter; pthread_exit unwinds through a
    noexcept destructor -> std::terminate. `completed()` must confirm the run's results were all written
    before a retry is allowed; any other failure fails at once."""
    for attempt in range(3):
        result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", *argv], cwd=cwd,
                                capture_output=True, text=True, timeout=timeout, env=subprocess_env(**(env or {})))
        if result.returncode == 0 or TEARDOWN_ABORT not in result.stderr or not completed(result):
            break
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fails_cleanly(argv, cwd, capsys):
    """Runs train.main(argv) in this process, expecting a non-zero exit with one 'error:' line: returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(argv, cwd)
    assert e.value.code not in (0, None)
    return one_error_line(capsys.readouterr().err)


def normal_upper_quantile(p):
    """z with P(Z > z) = p for a standard normal Z, by bisection on erfc."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def chi_square_quantile(dof, upper_p):
    """x with P(chi2_dof > x) = upper_p, by the Wilson-Hilferty approximation."""
    a = 2 / (9 * dof)
    return dof * (1 - a + normal_upper_quantile(upper_p) * math.sqrt(a)) ** 3


def chi_square_statistic(samples, probs):
    """Pearson's statistic summed over rows: samples (R, n) class indices, probs (R, V)."""
    counts = torch.stack([torch.bincount(s, minlength=probs.size(1)) for s in samples]).to(torch.float64)
    expected = samples.size(1) * probs
    assert expected.min() >= 5  # the chi-square approximation needs enough expected counts
    return float(((counts - expected) ** 2 / expected).sum())


def run_sample(cwd, *args: str) -> subprocess.CompletedProcess:
    """`python sample.py ARGS` in cwd; output kept as bytes, as text mode would turn a sampled \\r into \\n.
    One thread, as the in-process tests (conftest.py): the same float sums, less contention."""
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "sample.py"), *args], cwd=cwd,
                          capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def argmax_continuation(model, ids: list[int], n: int) -> list[int]:
    """ids and n more tokens, each the likeliest after those before it: greedy decoding written out."""
    for _ in range(n):
        logits, _ = model(torch.tensor([ids]))
        ids = ids + [int(logits[0, -1, :N_VOCAB].argmax())]
    return ids


def logged_iterations(out_dir, which="train/loss"):
    """Iterations of the complete lines of out_dir/metrics.jsonl that carry `which`, read while a run may be
    writing (a last line without its newline is not counted)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        complete = f.read().split("\n")[:-1]
    return [int(re.search(r'"iter": (\d+)', line).group(1)) for line in complete if f'"{which}"' in line]


def descendants(pid):
    """Process ids below pid (torchrun's workers), from /proc."""
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                children = [int(c) for c in f.read().split()]
        except OSError:  # the process ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


@contextlib.contextmanager
def running(command, cwd, logs):
    """A subprocess with unbuffered output into logs/stdout and logs/stderr; it and its children are
    SIGKILLed on the way out if still running (so a failed test leaves no orphaned torchrun worker)."""
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=subprocess_env(PYTHONUNBUFFERED="1"), start_new_session=False)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for child in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
        proc.wait()


def train_command(argv):
    return [sys.executable, TRAIN_PY, *argv]
