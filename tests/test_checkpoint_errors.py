"""load_checkpoint's one-line errors for files that are not checkpoints."""
import os
import random
import subprocess
import sys

import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_ADVICE = ("weights_only", "Re-running", "PyTorch 2.6")  # torch's hint to load unsafely, so the file can run code


def load_error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(path))
    return str(e.value)


def test_garbage_file_is_named_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    message = load_error(path)
    assert message.startswith(f"cannot read checkpoint {path}: it is damaged or not a checkpoint of this project (")
    assert "\n" not in message and not any(advice in message for advice in TORCH_ADVICE)


def test_truncated_checkpoint_keeps_the_first_sentence_of_torchs_reason(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}, "iter_num": 3}, str(good))
    path = tmp_path / "ckpt.pt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    message = load_error(path)
    assert message.startswith(f"cannot read checkpoint {path}: it is damaged or not a checkpoint of this project (")
    assert "failed reading zip archive" in message and "miniz" not in message


def test_sample_py_on_garbage_prints_one_line(tmp_path):
    # a pickle header with protocol 71, which torch warns about before it fails
    (tmp_path / "ckpt.pt").write_bytes(b"\x80\x47" + b"\xff" * 100)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "sample.py"), "--out_dir=.", "--device=cpu"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr == ("error: cannot read checkpoint ./ckpt.pt: it is damaged or not a checkpoint of this "
                             "project (UnpicklingError)\n")
