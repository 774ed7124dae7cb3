"""bench.py on CPU: its table for a tiny model, compiled, with a row that overrides config keys. The GPU
figures in the README come from the same code; here only that it runs and reports what it says."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench import BENCH_SETTINGS, parse_row, row_config
from data.tokens import write_tokens
from training.config import ConfigError, load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rows_parse_config_overrides():
    assert parse_row("adamw") == ("adamw", {})
    assert parse_row("sophiag:gnb_batch=train:hess_total_bs=240") == ("sophiag", {"gnb_batch": "train",
                                                                                 "hess_total_bs": 240})


def run_bench(tmp_path, *args, launcher=(sys.executable,)):
    """bench.py on a tiny model and a tiny random dataset, on the CPU; returns the process and the table's lines."""
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_tokens(str(folder / f"{split}.bin"), rng.integers(0, 512, 20_000).astype(np.uint16))
    out = tmp_path / "table.md"
    result = subprocess.run(
        [*launcher, os.path.join(REPO_ROOT, "bench.py"), "--n_layer=1", "--n_head=2", "--n_embd=32",
         "--batch_size=2", "--block_size=32", "--rounds=1", "--dataset=tiny", f"--out={out}", "--device=cpu", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out.read_text().splitlines()


def cells(line):
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_bench_prints_a_row_per_optimizer_and_the_overhead_against_adamw(tmp_path):
    """Compiled, as on a GPU: the refresh from the training batch backpropagates twice through the
    compiled graph, which only works with the compile settings train.py sets for it."""
    _, table = run_bench(tmp_path, "--total_bs=4", "--compile=True",
                         "--optimizers=adamw,sophiag:gnb_batch=train:hess_total_bs=2")
    assert table[0] == "gpt2-small (1 layers, 32 wide), 4 x 32 tokens per iteration, compile=True (default), " \
                       f"bfloat16, cpu, torch {torch.__version__}"
    assert cells(table[2]) == ["optimizer", "micro-batch", "output layer", "ms/iter", "tokens/s", "MFU", "peak GiB",
                               "refresh ms", "refresh ms/iter", "time vs adamw", "memory vs adamw"]
    rows = [cells(line) for line in table[4:6]]
    assert [row[:3] for row in rows] == [["adamw", "2", "torch"],
                                         ["sophiag gnb_batch=train hess_total_bs=2", "2", "torch"]]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4].replace(",", "")) > 0
    # AdamW has no refresh; Sophia-G's cost is a difference of timings, which a loaded CPU can make negative
    assert rows[0][7] == "" and math.isfinite(float(rows[1][7]))
    assert rows[1][9].endswith("%")


def test_a_failing_row_says_so_and_the_others_still_run(tmp_path):
    """A row that fails (here: its dataset does not exist; on a GPU: one that does not fit) is reported in the
    table, with the error's traceback on stderr, and the next row is measured."""
    result, table = run_bench(tmp_path, "--total_bs=2", "--compile=False",
                              "--optimizers=adamw:dataset=no_such_dataset,adamw")
    assert "DatasetError" in result.stderr
    rows = [cells(line) for line in table[4:6]]
    assert rows[0][0] == "adamw dataset=no_such_dataset" and rows[0][3] == "failed: DatasetError"
    assert rows[1][0] == "adamw" and float(rows[1][3]) > 0


def test_rows_take_the_paper_configs_then_the_command_line_then_their_own_settings():
    """No second copy of the paper's hyperparameters: each row starts from its optimizer's paper config."""
    sophia = row_config("small", "sophiag", {"batch_size": 4, "device": "cpu"})
    paper = load_config([os.path.join(REPO_ROOT, "config", "train_gpt2_small_sophia.py")])
    assert (sophia.learning_rate, sophia.rho, sophia.beta1, sophia.weight_decay) == \
        (paper.learning_rate, paper.rho, paper.beta1, paper.weight_decay)
    assert sophia.batch_size == 4 and sophia.device == "cpu" and sophia.log_interval == BENCH_SETTINGS["log_interval"]
    adamw = row_config("medium", "adamw", {})
    assert (adamw.optimizer_name, adamw.n_layer, adamw.beta2) == ("adamw", 24, 0.95)
    assert row_config("small", "signmomentum", {}).rho == paper.rho  # Sophia-G's paper config
    with pytest.raises(ConfigError, match="no paper config"):
        row_config("large", "lion", {})


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_bench_under_torchrun_reports_once_for_all_processes(tmp_path):
    """Two processes (DDP over gloo) measure together; rank 0 alone prints, and its header says so."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result, table = run_bench(tmp_path, "--total_bs=4", "--compile=False", "--optimizers=adamw,sophiag",
                              launcher=(torchrun, "--standalone", "--nproc_per_node=2"))
    assert table[0].endswith(f"2 processes (DDP) on cpu, torch {torch.__version__}"), table[0]
    assert result.stdout.count("processes (DDP)") == 1
    assert [cells(line)[0] for line in table[4:6]] == ["adamw", "sophiag"]

