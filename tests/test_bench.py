"""bench.py on CPU: its table for a tiny model, compiled, with a row that overrides config keys. The GPU
figures in the README come from the same code; here only that it runs and reports what it says."""

import os
import subprocess
import sys

import numpy as np

from bench import parse_row
from data.tokens import write_tokens

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rows_parse_config_overrides():
    assert parse_row("adamw") == ("adamw", {})
    assert parse_row("sophiag:gnb_batch=train:hess_total_bs=240") == ("sophiag", {"gnb_batch": "train",
                                                                                 "hess_total_bs": 240})


def test_bench_prints_a_row_per_optimizer_and_the_overhead_against_adamw(tmp_path):
    """Compiled, as on a GPU: the refresh from the training batch backpropagates twice through the
    compiled graph, which only works with the compile settings train.py sets for it."""
    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_tokens(str(folder / f"{split}.bin"), rng.integers(0, 512, 20_000).astype(np.uint16))
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench.py"), "--size=gpt2-tiny", "--batch_size=2",
         "--total_bs=4", "--block_size=32", "--rounds=1", "--dataset=tiny", f"--out={out}",
         "--optimizers=adamw,sophiag:gnb_batch=train:hess_total_bs=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text().splitlines()
    assert table[0].startswith("gpt2-tiny, micro-batch 2, 4 x 32 tokens per iteration, compile=True")
    header = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert header == ["optimizer", "ms/iter", "tokens/s", "MFU", "peak GiB", "refresh ms", "refresh ms/iter",
                      "time vs adamw", "memory vs adamw"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[4:6]]
    assert [row[0] for row in rows] == ["adamw", "sophiag gnb_batch=train hess_total_bs=2"]
    for row in rows:
        assert float(row[1]) > 0 and float(row[2].replace(",", "")) > 0
    assert rows[0][5] == "" and float(rows[1][5]) > 0  # AdamW has no refresh
    assert rows[1][7].endswith("%")
