"""sample.py run as a user would: greedy decoding at temperature 0, and one-line errors for unusable settings."""
import dataclasses
import os

import pytest
import torch
from conftest import argmax_continuation, run_sample

from model import GPT, GPTConfig
from training.checkpoint import save_checkpoint
from training.tokenizer import EOT, N_VOCAB, gpt2_encoding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)).eval()


@pytest.fixture
def run_dir(tmp_path):
    """tmp_path/run/ckpt.pt with the keys sample.py reads, as train.py writes them."""
    model = tiny_model()
    (tmp_path / "run").mkdir()
    state = {"model": model.state_dict(), "model_args": dataclasses.asdict(model.config), "iter_num": 0}
    save_checkpoint(state, str(tmp_path / "run" / "ckpt.pt"))
    return tmp_path / "run"


def files(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_generate_at_temperature_zero_is_greedy_whatever_the_generator():
    model = tiny_model()
    expected = argmax_continuation(model, [198], 20)  # 198: "\n", sample.py's default prompt
    for seed in (1, 2):
        out = model.generate(torch.tensor([[198]]), 20, temperature=0, top_k=200, n_vocab=N_VOCAB,
                             generator=torch.Generator().manual_seed(seed))
        assert out[0].tolist() == expected
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        model.generate(torch.tensor([[198]]), 1, temperature=-1)


def test_sample_at_temperature_zero_prints_the_greedy_continuation(run_dir):
    enc = gpt2_encoding()
    ids = argmax_continuation(tiny_model(), enc.encode("\n"), 20)
    expected = f"1 sample from run (iteration 0):\n{enc.decode([t for t in ids if t != EOT])}\n{'-' * 60}\n"
    for seed in (1, 2):
        result = run_sample(run_dir.parent, "--out_dir=run", "--temperature=0", "--max_new_tokens=20",
                            "--num_samples=1", f"--seed={seed}", "--device=cpu")
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode() == expected


def sample_error_line(cwd, *args: str) -> str:
    """Run sample.py expecting a clean failure: non-zero exit and one stderr line, 'error: ...'."""
    result = run_sample(cwd, *args)
    lines = result.stderr.decode().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr.decode()
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--prompt="], "--prompt is empty; give some text to continue"),
    (["--temperature=-0.5"], "--temperature must be a number >= 0 (0: always the likeliest token), got -0.5"),
    (["--temperature=nan"], "--temperature must be a number >= 0 (0: always the likeliest token), got nan"),
    (["--temperature=inf"], "--temperature must be a number >= 0 (0: always the likeliest token), got inf"),
    (["--num_samples=0"], "--num_samples must be at least 1, got 0"),
    (["--max_new_tokens=-3"], "--max_new_tokens must be at least 1, got -3"),
    (["--top_k=0"], "--top_k must be at least 1, got 0"),
    pytest.param(["--device=cuda"], "--device=cuda but this machine has no CUDA GPU; use --device=cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_unusable_settings_are_one_line_errors(run_dir, args, message):
    line = sample_error_line(run_dir.parent, "--out_dir=run", "--device=cpu", *args)
    assert line.startswith(f"error: {message}")
    assert files(run_dir.parent) == ["run", "run/ckpt.pt"]


def test_missing_checkpoint_says_how_to_train_one(tmp_path):
    line = sample_error_line(tmp_path, "--out_dir=nowhere", "--device=cpu")
    assert line == ("error: no checkpoint at nowhere/ckpt.pt; train one with `python train.py <config> "
                    "--out_dir=nowhere` or point --out_dir at a run's folder")
    assert files(tmp_path) == []
