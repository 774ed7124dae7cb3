"""CPU tests for the fused output layer (kernels.py) and what it changed around it: sophia.py's
sample_from_linear and sampled_linear_cross_entropy, GPT.hidden_states and GPT.fused_loss, the resolution of
the config keys output_layer and fp8, and the Trainer's fused path.

The library kernels themselves (Liger-Kernel, torchao) need CUDA and are not exercised
here. What is covered instead:
- sample_from_linear draws exact samples of softmax(hidden @ weight.T) when it works in several blocks of
  rows (Pearson's chi-square, the same test as test_sophia's for sample_from_logits, and its power); with
  one block it is sample_from_logits itself; its labels' shape and dtype; no gradient;
- sampled_linear_cross_entropy with the plain PyTorch output layer is sampled_cross_entropy on the logits,
  in value and in its gradients;
- torch_linear_cross_entropy is the model's own loss (targets -1 ignored), and its reduction='none';
  GPT.forward with fused_loss set returns the hidden states and that loss;
- check_output_layer (a library's layer needs CUDA and the library) and check_fp8, and train.py's one-line
  errors for a library layer or fp8 on the CPU; the default 'torch' is what a run logs;
- the Trainer's fused path, run on the CPU with a stand-in for a library kernel (torch_linear_cross_entropy
  behind a counter, registered in OUTPUT_LAYERS): Sophia-G (both gnb_batch settings) and Sophia-H train
  exactly as with output_layer='torch' (the same losses and Hessian EMAs, bit for bit: one block of rows
  covers each batch, so the same random numbers are drawn in the same order), and the counters show that the
  fused path was the one taken (so the comparison cannot pass by both runs taking the reference path).

Everything is seeded; the runs are the tiny model of test_train (TINY), a few iterations each.
"""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import args, chi_square_quantile, chi_square_statistic, fails_cleanly, run_main, tiny_config

import sophia
import train
import training.distributed
import training.kernels as kernels
from model import GPT, GPTConfig
from sophia import sample_from_linear, sample_from_logits, sampled_cross_entropy, sampled_linear_cross_entropy
from training.checkpoint import load_checkpoint
from training.distributed import init_distributed
from training.kernels import OUTPUT_LAYERS, check_fp8, check_output_layer, torch_linear_cross_entropy
from training.metrics import read_metrics

F64 = torch.float64


# ----------------------------------------------------------------------------- 1. sample_from_linear

ROWS, CLASSES, HIDDEN, SAMPLES_PER_ROW = 4, 20, 8, 50_000
BLOCK_ROWS = 30_001  # 200,000 rows in 7 blocks, whose edges fall inside runs of a repeated row


def linear_sampling_problem():
    """hidden (ROWS, HIDDEN) and weight (CLASSES, HIDDEN) whose product, the logits, has a spread like
    test_sophia's sampling problem (standard deviation ~1.2); the exact softmax in float64; a generator."""
    gen = torch.Generator().manual_seed(13)  # its smallest probability is ~2e-3: >= 5 expected counts everywhere
    weight = torch.randn(CLASSES, HIDDEN, generator=gen)
    hidden = 1.2 / math.sqrt(HIDDEN) * torch.randn(ROWS, HIDDEN, generator=gen)
    probs = F.linear(hidden.to(F64), weight.to(F64)).softmax(-1)
    return hidden, weight, probs, gen


def draw_linear(hidden, weight, gen, block_rows=BLOCK_ROWS):
    """SAMPLES_PER_ROW labels for each row of hidden, drawn by sample_from_linear over the repeated rows."""
    repeated = hidden.repeat_interleave(SAMPLES_PER_ROW, dim=0)
    return sample_from_linear(repeated, weight, gen, block_rows=block_rows).view(ROWS, SAMPLES_PER_ROW)


def test_sample_from_linear_in_blocks_is_exact():
    """200k samples in 7 blocks against softmax(hidden @ weight.T): Pearson's chi-square with 4 * 19 dof
    between its p = 1e-6 critical values (below the upper, above the lower), as test_sophia's
    test_sample_from_logits_is_exact. A block whose labels land in another block's place, or a block drawn
    from the wrong rows, would fail it: each block's edge falls inside a run of one row."""
    hidden, weight, probs, gen = linear_sampling_problem()
    assert 0.5 < F.linear(hidden, weight).std() < 3  # a spread the test can see temperature errors in
    assert ROWS * SAMPLES_PER_ROW > 6 * BLOCK_ROWS  # several blocks
    dof = ROWS * (CLASSES - 1)
    stat = chi_square_statistic(draw_linear(hidden, weight, gen), probs)
    assert chi_square_quantile(dof, 1 - 1e-6) < stat < chi_square_quantile(dof, 1e-6), stat


def test_chi_square_test_of_sample_from_linear_has_power():
    """The same test rejects the samples of softmax(2 * logits) by orders of magnitude, and those of
    softmax(1.05 * logits) (a 5% temperature error) too."""
    hidden, weight, probs, gen = linear_sampling_problem()
    critical = chi_square_quantile(ROWS * (CLASSES - 1), 1e-6)
    assert chi_square_statistic(draw_linear(2 * hidden, weight, gen), probs) > 100 * critical
    assert chi_square_statistic(draw_linear(1.05 * hidden, weight, gen), probs) > critical


def test_sample_from_linear_in_one_block_is_sample_from_logits():
    """block_rows >= rows: the same labels as sample_from_logits on the logits from the same seeded generator,
    shaped like hidden without its last dimension, long, without a gradient (hidden and weight require one).
    The default block_rows (8192) is one block here too."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 7, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    expected = sample_from_logits(F.linear(hidden, weight), torch.Generator().manual_seed(9))
    for block_rows in (21, 1000, None):
        kwargs = {} if block_rows is None else dict(block_rows=block_rows)
        labels = sample_from_linear(hidden, weight, torch.Generator().manual_seed(9), **kwargs)
        assert labels.shape == (3, 7) and labels.dtype == torch.long
        assert not labels.requires_grad and labels.grad_fn is None
        assert torch.equal(labels, expected), block_rows
    assert len(expected.unique()) > 5  # the labels are not all alike: the comparison says something


def test_sample_from_linear_in_small_blocks_draws_what_one_block_draws():
    """On the CPU, consecutive torch.rand draws from a generator are the pieces of one big draw (test_refresh
    relies on this too), so blocks of 4 rows take, in order, the same noise as one block of all 21 rows: the
    labels must be the same, which checks that the blocks' labels are put back in their rows' order."""
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 7, 16, generator=gen)
    weight = torch.randn(50, 16, generator=gen)
    one_block = sample_from_linear(hidden, weight, torch.Generator().manual_seed(2))
    blocks = sample_from_linear(hidden, weight, torch.Generator().manual_seed(2), block_rows=4)
    assert blocks.shape == (3, 7) and torch.equal(blocks, one_block)
    other_seed = sample_from_linear(hidden, weight, torch.Generator().manual_seed(3), block_rows=4)
    assert not torch.equal(other_seed, one_block)  # the generator is used


# ----------------------------------------------------------------------------- 2. sampled_linear_cross_entropy

def test_sampled_linear_cross_entropy_is_sampled_cross_entropy_on_the_logits():
    """With torch_linear_cross_entropy as the output layer and the same seed: the same labels, so the same
    loss and the same gradients with respect to hidden (B, T, n_embd) and weight."""
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    weight = (0.5 * torch.randn(40, 16, generator=gen)).requires_grad_()

    fused = sampled_linear_cross_entropy(hidden, weight, torch_linear_cross_entropy, torch.Generator().manual_seed(1))
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    reference = sampled_cross_entropy(F.linear(hidden, weight), torch.Generator().manual_seed(1))
    reference_grads = torch.autograd.grad(reference, (hidden, weight))

    assert fused.shape == () and torch.isfinite(fused)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=0)
    for a, b in zip(fused_grads, reference_grads):
        assert b.norm() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    # another seed samples other labels, hence another loss: the seed is what made the two agree
    other = sampled_linear_cross_entropy(hidden, weight, torch_linear_cross_entropy, torch.Generator().manual_seed(2))
    assert other.item() != fused.item()


# ----------------------------------------------------------------------------- 3. torch_linear_cross_entropy

def tiny_gpt(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))


def tokens(seed=1, shape=(2, 16), vocab=64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=gen), torch.randint(0, vocab, shape, generator=gen)


def test_torch_linear_cross_entropy_is_the_models_loss():
    """On the hidden states and the output weight, torch_linear_cross_entropy is GPT's reference loss, also
    with some targets -1 (ignored: the mean is over the others, which changes the loss here)."""
    model = tiny_gpt()
    X, Y = tokens()
    ignored = Y.clone()
    ignored[0, :5] = -1
    ignored[1, -3:] = -1
    hidden = model.hidden_states(X)
    assert hidden.shape == (2, 16, 32)
    results = []
    for targets in (Y, ignored):
        expected = model(X, targets)[1]
        got = torch_linear_cross_entropy(hidden, model.lm_head.weight, targets)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
        results.append(got.item())
    assert results[0] != results[1]  # the ignored positions were left out, not counted as class -1 or 0


def test_torch_linear_cross_entropy_without_reduction():
    """reduction='none': one loss per token (B * T of them), 0 where the target is -1, each the token's
    -log softmax at its target; their mean over the counted tokens is the mean loss."""
    model = tiny_gpt()
    X, Y = tokens()
    Y[0, :5] = -1
    hidden = model.hidden_states(X)
    per_token = torch_linear_cross_entropy(hidden, model.lm_head.weight, Y, reduction="none")
    assert per_token.shape == (2 * 16,)
    counted = Y.reshape(-1) != -1
    assert torch.all(per_token[~counted] == 0) and torch.all(per_token[counted] > 0)
    log_probs = F.linear(hidden, model.lm_head.weight).log_softmax(-1).reshape(-1, 64)
    by_hand = -log_probs[counted].gather(1, Y.reshape(-1)[counted, None]).squeeze(1)
    torch.testing.assert_close(per_token[counted], by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_token[counted].mean(), model(X, Y)[1], rtol=1e-6, atol=0)


def test_gpt_forward_with_a_fused_loss():
    """With fused_loss set and targets given, forward returns the hidden states (not the logits) and
    fused_loss(hidden, lm_head.weight, targets); without targets it still returns the logits."""
    model = tiny_gpt()
    X, Y = tokens()
    logits, expected = model(X, Y)
    calls = []

    def fused_loss(hidden, weight, targets):
        calls.append((hidden.shape, weight is model.lm_head.weight, torch.equal(targets, Y)))
        return torch_linear_cross_entropy(hidden, weight, targets)

    model.fused_loss = fused_loss
    outputs, loss = model(X, Y)
    assert calls == [((2, 16, 32), True, True)]
    assert torch.equal(outputs, model.hidden_states(X))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert torch.equal(model(X)[0], logits) and model(X)[1] is None and len(calls) == 1


# ----------------------------------------------------------------------------- 4. resolution and errors

def test_installed():
    assert kernels.installed("torch") and not kernels.installed("no_such_module_for_sophia_tests")


def test_a_library_output_layer_needs_cuda_and_the_library(monkeypatch):
    check_output_layer("torch", cuda=False)
    check_output_layer("torch", cuda=True)
    for have in (False, True):  # on the CPU it is refused whether installed or not
        monkeypatch.setattr(kernels, "installed", lambda module: have)
        with pytest.raises(ValueError, match="'torch'") as e:
            check_output_layer("liger", cuda=False)
        assert "CUDA" in str(e.value)
    monkeypatch.setattr(kernels, "installed", lambda module: False)
    with pytest.raises(ValueError, match="pip install") as e:
        check_output_layer("liger", cuda=True)
    assert "liger-kernel" in str(e.value) and "'torch'" in str(e.value)
    monkeypatch.setattr(kernels, "installed", lambda module: module == "liger_kernel")
    check_output_layer("liger", cuda=True)  # no error


def test_check_fp8(monkeypatch):
    """fp8 needs CUDA, compute capability >= 8.9 and torchao; the GPU's answers are stand-ins here."""
    for device in ("cpu", torch.device("cpu")):
        with pytest.raises(ValueError, match="fp8=False"):
            check_fp8(device)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="compute capability >= 8.9.*Old GPU"):
        check_fp8("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(kernels, "installed", lambda module: False)
    with pytest.raises(ValueError, match="pip install"):
        check_fp8("cuda")
    monkeypatch.setattr(kernels, "installed", lambda module: module == "torchao")
    check_fp8("cuda")  # no error


@pytest.mark.parametrize("overrides, named", [
    pytest.param(dict(output_layer="liger"), "output_layer='torch'", id="liger-on-cpu"),
    pytest.param(dict(fp8=True), "fp8=False", id="fp8-on-cpu"),
])
def test_kernels_on_the_cpu_are_one_line_errors_and_write_nothing(overrides, named, data_root, tmp_path, capsys):
    out = tmp_path / "out"
    message = fails_cleanly(args(out_dir=out, max_iters=2, **overrides), data_root, capsys)
    assert named in message
    assert not out.exists() and os.listdir(tmp_path) == []


def test_fp8_with_sophia_h_is_one_line(data_root, tmp_path, capsys, monkeypatch):
    """Where fp8 could run (the check passes: a stand-in here), Sophia-H's double backward still cannot."""
    monkeypatch.setattr(training.distributed, "check_fp8", lambda device: None)
    out = tmp_path / "out"
    message = fails_cleanly(args(out_dir=out, max_iters=2, fp8=True, optimizer_name="sophiah"), data_root, capsys)
    assert "Sophia-H" in message and not out.exists()


def test_a_run_logs_its_output_layer(data_root, tmp_path):
    """The default, 'torch', is what a run logs and checkpoints."""
    out = tmp_path / "out"
    run_main(args(out_dir=out, max_iters=1, eval_interval=1), data_root)
    config = read_metrics(os.path.join(out, "metrics.jsonl"))[0]["config"]
    assert config["output_layer"] == "torch" and config["fp8"] is False
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["config"]["output_layer"] == "torch"


# ----------------------------------------------------------------------------- 5. the Trainer's fused path

class StandIn:
    """A library kernel's stand-in: torch_linear_cross_entropy, counting its calls."""

    def __init__(self):
        self.calls, self.autocast = 0, []  # calls, and whether each ran under CPU autocast

    def __call__(self, hidden, weight, targets, reduction="mean"):
        self.calls += 1
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return torch_linear_cross_entropy(hidden, weight, targets, reduction)


@pytest.fixture
def cpu_fused(monkeypatch):
    """Registers output_layer='cpu_fused' (no module needed, as 'torch'), a StandIn; returns the StandIn."""
    stand_in = StandIn()
    monkeypatch.setitem(kernels.OUTPUT_LAYERS, "cpu_fused", (stand_in, None, None))  # train's is this dict
    return stand_in


@pytest.fixture
def count_sample_from_linear(monkeypatch):
    """The number of calls of sophia.sample_from_linear (sampled_linear_cross_entropy looks it up at each call)."""
    calls, sample = [], sophia.sample_from_linear

    def counting(*a, **kw):
        calls.append(1)
        return sample(*a, **kw)

    monkeypatch.setattr(sophia, "sample_from_linear", counting)
    return calls


ITERS, HESS_INTERVAL = 4, 2  # refreshes after iterations 2 and 4


def train_tiny(data_root, tmp_path, monkeypatch, output_layer, **overrides):
    """ITERS iterations of TINY (2 micro-batches of 2 sequences per iteration and per refresh), with dropout
    on, with `output_layer` written into the resolved config (as init_distributed would, had it been a choice).
    Returns the losses, the Hessian EMAs, the final parameters, the run, how often lm_head (the reference
    path's output layer module) ran, and the StandIn calls made inside the refreshes."""
    monkeypatch.chdir(data_root)
    cfg, dist = init_distributed(tiny_config(out_dir=str(tmp_path / output_layer), hess_interval=HESS_INTERVAL,
                                             dropout=0.1, output_layer="torch", **overrides))
    assert (cfg.gradient_accumulation_steps, cfg.hess_accumulation_steps) == (2, 2)
    run = train.build(dataclasses.replace(cfg, output_layer=output_layer), dist)
    lm_head_calls = []
    run.network.model.lm_head.register_forward_hook(lambda *a: lm_head_calls.append(1))
    stand_in = OUTPUT_LAYERS[output_layer][0]
    in_refresh, refresh = [], run.step.refresh

    class CountingRefresh:
        def __getattr__(self, name):
            return getattr(refresh, name)

        def __call__(self, steps):
            before = getattr(stand_in, "calls", 0)
            refresh(steps)
            in_refresh.append(getattr(stand_in, "calls", 0) - before)

    run.step.refresh = CountingRefresh()
    losses = [run.iteration().item() for _ in range(ITERS)]
    params = list(run.network.model.parameters())
    hessians = [run.optimizer.state[p]["hessian"].clone() for p in params]
    return dict(losses=losses, hessians=hessians, params=[p.detach().clone() for p in params], run=run,
                lm_head_calls=len(lm_head_calls), in_refresh=in_refresh)


def assert_same_training(fused, reference):
    """The same losses, Hessian EMAs and parameters, bit for bit; and the EMAs were refreshed twice and are
    not zero (two empty EMAs would be equal too)."""
    assert fused["losses"] == reference["losses"] and all(math.isfinite(x) for x in fused["losses"])
    assert len(set(fused["losses"])) == ITERS
    for run in (fused, reference):
        assert all(g["hessian_updates"] == ITERS // HESS_INTERVAL for g in run["run"].optimizer.param_groups)
    assert sum(h.abs().sum() for h in reference["hessians"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(fused["hessians"], reference["hessians"]))
    assert all(torch.equal(a, b) for a, b in zip(fused["params"], reference["params"]))


@pytest.mark.parametrize("gnb_batch", ["fresh", "train"])
def test_sophia_g_with_a_fused_output_layer_trains_as_with_torch(gnb_batch, cpu_fused, count_sample_from_linear,
                                                                 data_root, tmp_path, monkeypatch):
    """Sophia-G, the stand-in against output_layer='torch': the same training, and the stand-in did all of
    the fused run's output layers: 2 training micro-batches per iteration, plus 2 sampled micro-batches
    (labels from sample_from_linear) per refresh, inside the refresh (fresh batch) or inside the iteration's
    forward passes (gnb_batch='train'); lm_head never ran as a module, and the reference run never sampled
    from hidden states."""
    reference = train_tiny(data_root, tmp_path, monkeypatch, "torch", gnb_batch=gnb_batch)
    assert reference["run"].network.model.fused_loss is None and reference["lm_head_calls"] > 0
    assert cpu_fused.calls == 0 and count_sample_from_linear == []

    fused = train_tiny(data_root, tmp_path, monkeypatch, "cpu_fused", gnb_batch=gnb_batch)
    assert fused["run"].network.model.fused_loss is cpu_fused
    refreshes = ITERS // HESS_INTERVAL
    assert cpu_fused.calls == 2 * ITERS + 2 * refreshes
    assert len(count_sample_from_linear) == 2 * refreshes
    assert fused["in_refresh"] == ([2] * refreshes if gnb_batch == "fresh" else [0] * refreshes)
    assert fused["lm_head_calls"] == 0
    assert_same_training(fused, reference)


def test_sophia_h_with_a_fused_output_layer_refreshes_through_the_logits(cpu_fused, count_sample_from_linear,
                                                                         data_root, tmp_path, monkeypatch):
    """Sophia-H: the training steps take the fused path, its refresh (a double backward, which fused kernels
    lack) never calls the fused function; the training is the same as with output_layer='torch'."""
    reference = train_tiny(data_root, tmp_path, monkeypatch, "torch", optimizer_name="sophiah")
    fused = train_tiny(data_root, tmp_path, monkeypatch, "cpu_fused", optimizer_name="sophiah")
    assert fused["run"].network.model.fused_loss is cpu_fused
    assert cpu_fused.calls == 2 * ITERS  # the training micro-batches only
    assert fused["in_refresh"] == [0] * (ITERS // HESS_INTERVAL)
    assert count_sample_from_linear == []
    assert any((h < 0).any() for h in fused["hessians"])  # Hutchinson's estimate, not a square
    assert_same_training(fused, reference)


def test_the_fused_refresh_runs_its_output_layer_under_autocast(cpu_fused, data_root, tmp_path, monkeypatch):
    """Under bf16 autocast every call of the fused output layer, the fresh refresh's included (its loss is
    computed outside the refresh's forward), runs under autocast, as the reference path's logits do."""
    train_tiny(data_root, tmp_path, monkeypatch, "cpu_fused", dtype="bfloat16")
    assert cpu_fused.calls == 2 * ITERS + 2 * (ITERS // HESS_INTERVAL)
    assert all(cpu_fused.autocast)
