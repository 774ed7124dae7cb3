"""The official Sophia code's formats (github.com/Liuhong99/Sophia): its config files load unchanged, the keys
that Config lacks translated or explained in one note each, and a checkpoint its train_sophiag.py saved loads into
our GPT for sampling. The official files are rebuilt here from what the official repository holds (its
config/train_gpt2_small_{sophiag,adam}.py, key by key, and its checkpoint layout); nothing is downloaded."""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import argmax_continuation, args, one_error_line, run_main, run_sample, run_train_subprocess

import train
from model import GPT, GPTConfig
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import OFFICIAL_KEYS, ConfigError, load_config, make_config
from training.distributed import init_distributed
from training.tokenizer import EOT, gpt2_encoding

# config/train_gpt2_small_sophiag.py of the official repository (comments reworded)
OFFICIAL_SMALL_SOPHIAG = """\
wandb_log = True
wandb_project = 'sophia'
wandb_run_name='gpt2-small-sophiag-100k'

# about 0.5M tokens per iteration: 8 sequences x 1024 tokens x 6 accumulation steps x 10 GPUs
batch_size = 8
block_size = 1024
gradient_accumulation_steps = 6
total_bs = 480

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0 # 0 for pre-training
bias = False

# 100k iterations
max_iters = 100000
lr_decay_iters = 100000

# evaluation
eval_interval = 1000
eval_iters = 200
log_interval = 10

# optimizer
optimizer_name = 'sophiag'
learning_rate = 7e-4 # peak
weight_decay = 2e-1
beta1 = 0.965
beta2 = 0.99
grad_clip = 1.0 # 0.0 turns clipping off
# schedule
decay_lr = True
warmup_iters = 2000
min_lr = 1.5e-5
rho = 0.05
interval = 10

compile = True

out_dir = 'out_small_sophiag_100k'
"""

# config/train_gpt2_small_adam.py of the official repository: the Sophia-G file's lines but for the run's name,
# total_bs (which it leaves out), the optimizer and the output folder
OFFICIAL_SMALL_ADAM = OFFICIAL_SMALL_SOPHIAG.split("# optimizer\n")[0].replace(
    "gpt2-small-sophiag-100k", "gpt2-small-adam-100k").replace("total_bs = 480\n", "") + """\
optimizer_name = 'adamw'
learning_rate = 6e-4 # peak
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
decay_lr = True
warmup_iters = 2000
min_lr = 3e-5

compile = True

out_dir = 'out_small_adam_100k'
"""

# what both files set alike
COMMON = dict(wandb_log=True, wandb_project="sophia", batch_size=8, block_size=1024, total_bs=480, n_layer=12,
              n_head=12, n_embd=768, dropout=0.0, bias=False, max_iters=100000, lr_decay_iters=100000,
              eval_interval=1000, eval_iters=200, log_interval=10, grad_clip=1.0, decay_lr=True, warmup_iters=2000,
              compile=True)
NOTE = {key: f"note: {note}" for key, (_, note) in OFFICIAL_KEYS.items()}


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


def notes(stderr):
    return [line for line in stderr.splitlines() if line.startswith("note: ")]


# ----------------------------------------------------------------------------- configs

def test_the_official_sophiag_config_loads_with_interval_as_hess_interval(tmp_path, capsys):
    cfg = load_config([write(tmp_path, "sophiag.py", OFFICIAL_SMALL_SOPHIAG)])
    assert {key: getattr(cfg, key) for key in COMMON} == COMMON
    assert (cfg.optimizer_name, cfg.learning_rate, cfg.min_lr, cfg.weight_decay) == ("sophiag", 7e-4, 1.5e-5, 0.2)
    assert (cfg.beta1, cfg.beta2, cfg.rho, cfg.hess_interval) == (0.965, 0.99, 0.05, 10)
    assert (cfg.out_dir, cfg.wandb_run_name) == ("out_small_sophiag_100k", "gpt2-small-sophiag-100k")
    assert notes(capsys.readouterr().err) == [NOTE["interval"]]
    assert "'interval'" in NOTE["interval"] and "Hessian refresh interval" in NOTE["interval"]


def test_the_official_adam_config_loads(tmp_path, capsys):
    cfg = load_config([write(tmp_path, "adam.py", OFFICIAL_SMALL_ADAM)])
    assert {key: getattr(cfg, key) for key in COMMON} == COMMON
    assert (cfg.optimizer_name, cfg.learning_rate, cfg.min_lr, cfg.weight_decay) == ("adamw", 6e-4, 3e-5, 0.1)
    assert (cfg.beta1, cfg.beta2) == (0.9, 0.95)
    assert notes(capsys.readouterr().err) == []


def test_each_official_key_gets_one_note_and_the_later_setting_wins(tmp_path, capsys):
    path = write(tmp_path, "official.py", "interval = 10\nvariant = 4\ngamma = 0.1\n")
    assert load_config([path, "--interval=5", "--variant=3"]).hess_interval == 5
    assert sorted(notes(capsys.readouterr().err)) == sorted(NOTE[key] for key in ("interval", "variant", "gamma"))
    assert load_config(["--interval=5", "--hess_interval=3"]).hess_interval == 3
    assert load_config(["--hess_interval=3", "--interval=5"]).hess_interval == 5
    assert load_config([path, "--hess_interval=3", path]).hess_interval == 10  # the file, read again, is last
    assert make_config(interval=7).hess_interval == 7  # make_config's callers get the translation too


def test_official_notes_come_from_one_process_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert load_config(["--interval=5"]).hess_interval == 5
    assert capsys.readouterr().err == ""


def test_official_values_we_lack_are_explained():
    with pytest.raises(ConfigError) as e:
        make_config(init_from="gpt2-medium")
    assert "'init_from'" in str(e.value) and "'gpt2-medium'" in str(e.value)
    assert "OpenAI's GPT-2 weights through Hugging Face transformers" in str(e.value)
    assert make_config(dtype="float16").dtype == "float16"  # the official default on GPUs without bf16: supported


def test_train_runs_the_official_config(data_root, tmp_path):
    """The official file as it is, with a tiny model and data on the CPU set on the command line."""
    out = tmp_path / "out"
    tiny = dict(dataset="tiny", device="cpu", dtype="float32", compile=False, n_layer=1, n_head=2, n_embd=32,
                block_size=32, batch_size=2, total_bs=4, eval_iters=2, max_iters=2, out_dir=out)
    config_file = write(tmp_path, "sophiag.py", OFFICIAL_SMALL_SOPHIAG)
    result = run_train_subprocess([config_file, *(f"--{key}={value}" for key, value in tiny.items())], cwd=data_root)
    assert result.returncode == 0, result.stderr
    assert notes(result.stderr).count(NOTE["interval"]) == 1
    config = load_checkpoint(str(out / "ckpt.pt"))["config"]
    assert (config["hess_interval"], config["learning_rate"], config["rho"]) == (10, 7e-4, 0.05)


# ----------------------------------------------------------------------------- checkpoints

class Holder(nn.Module):
    """Holds a model under `name`, as torch.compile's wrapper (_orig_mod) and DDP (module) do."""

    def __init__(self, name, model):
        super().__init__()
        self.add_module(name, model)


def tiny_model():
    torch.manual_seed(0)  # two layers, so a wrong inverse-layer scaling shows
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False,
                         scale_attn_by_inverse_layer_idx=True))


def official_checkpoint(model, wrappers):
    """What the official train_sophiag.py saves for `model` (its train_adam.py saves the same keys): the state of
    the model it trains, wrapped by `wrappers` (innermost first) and with each attention's causal-mask buffer
    'bias' of shape (1, 1, T, T); model_args under the official names; the optimizer's state; and its config,
    the plain values of its settings."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: a real state, the weights unchanged
    model(*[torch.zeros(1, 8, dtype=torch.long)] * 2)[1].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    official = copy.deepcopy(model)
    T = model.config.block_size
    for block in official.transformer.h:
        block.attn.register_buffer("bias", torch.ones(T, T).tril().view(1, 1, T, T))
    for name in wrappers:
        official = Holder(name, official)
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=cfg.dropout,
                      scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx)
    config = dict(out_dir="out_small_sophiag_100k", eval_interval=1000, eval_only=False, init_from="scratch",
                  learning_rate=7e-4, rho=0.05, interval=10, hess_interval=10, variant=4, dtype="bfloat16")
    return {"model": official.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
            "iter_num": 1000, "best_val_loss": torch.tensor(3.25), "config": config}


@pytest.mark.parametrize("wrappers", [("_orig_mod",), ("_orig_mod", "module")], ids=["compiled", "compiled-ddp"])
def test_an_official_checkpoint_loads_with_the_same_logits(wrappers, tmp_path):
    model = tiny_model().eval()
    path = str(tmp_path / "ckpt.pt")
    torch.save(official_checkpoint(model, wrappers), path)  # as the official code saves it
    ckpt = load_checkpoint(path)  # weights_only=True: every entry is tensors and plain values
    assert ckpt["iter_num"] == 1000 and ckpt["config"]["interval"] == 10 and len(ckpt["optimizer"]["state"]) > 0
    assert any(key.endswith(".attn.bias") for key in ckpt["model"])
    loaded = model_from_checkpoint(ckpt).eval()
    assert loaded.config == model.config
    idx = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_sample_py_samples_from_an_official_checkpoint(tmp_path):
    model = tiny_model().eval()
    (tmp_path / "run").mkdir()
    torch.save(official_checkpoint(model, ("_orig_mod",)), tmp_path / "run" / "ckpt.pt")
    enc = gpt2_encoding()
    ids = argmax_continuation(model, enc.encode("\n"), 8)
    result = run_sample(tmp_path, "--out_dir=run", "--temperature=0", "--max_new_tokens=8", "--num_samples=1",
                        "--device=cpu")
    assert result.returncode == 0, result.stderr.decode()
    expected = f"1 sample from run (iteration 1000):\n{enc.decode([t for t in ids if t != EOT])}\n{'-' * 60}\n"
    assert result.stdout.decode() == expected


def test_a_model_setting_we_lack_is_refused_not_dropped():
    ckpt = official_checkpoint(tiny_model(), ("_orig_mod",))
    ckpt["model_args"]["rotary"] = True
    with pytest.raises(CheckpointError, match="settings that model.py does not have: rotary=True"):
        model_from_checkpoint(ckpt)


def test_train_py_fine_tunes_from_an_official_checkpoint(data_root, tmp_path, monkeypatch):
    """init_from=<path>.pt starts a new run from the checkpoint's weights (exactly), trains on from them with a
    fresh optimizer, and a config whose model differs is a one-line error."""
    model = tiny_model()
    path = tmp_path / "official.pt"
    torch.save(official_checkpoint(model, ("_orig_mod",)), path)
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, scale_attn_by_inverse_layer_idx=True)
    monkeypatch.chdir(data_root)
    cfg = load_config(args(out_dir=tmp_path / "out", init_from=str(path), max_iters=2, **shape))
    run = train.build(*init_distributed(cfg))
    assert run.progress.iter_num == 0 and not run.optimizer.state
    for name, tensor in model.state_dict().items():
        assert torch.equal(run.network.model.state_dict()[name], tensor), name

    run_main(args(out_dir=tmp_path / "out", init_from=str(path), max_iters=2, **shape), data_root)
    assert load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))["iter_num"] == 2
    result = run_train_subprocess(args(out_dir=tmp_path / "wrong", init_from=str(path), max_iters=1,
                                       **{**shape, "n_layer": 1}), cwd=data_root)
    assert result.returncode != 0 and "n_layer=2" in one_error_line(result.stderr)
    assert not (tmp_path / "wrong").exists()
