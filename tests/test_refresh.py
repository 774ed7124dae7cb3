"""CPU tests for sophia.py's Hessian refreshes for any training loop, called directly (train.py's use of
them is tested through whole runs in test_train.py): micro_batch_seed, seeded, gnb_refresh,
sampled_gradient with fold_in_estimate, and hutchinson_refresh.

What is covered:
- gnb_refresh against a hand computation: per-micro-batch seeds (labels and dropout), the 1/n scaling of
  each micro-batch, the global-norm clip, h = (1 - beta2) * g_hat^2; the bs it leaves the optimizer (the
  tokens behind the estimate), p.grad cleared afterwards, one refresh counted in every parameter group; a
  seeded refresh leaves the global generator as it was;
- unseeded, n micro-batches give the estimate of their concatenation (the labels drawn are the same);
- the train-batch variant (sampled_gradient summed over micro-batches, then fold_in_estimate) gives the
  fresh refresh's Hessian on the same batch, and keeps the forward pass's graph for the training loss;
- hutchinson_refresh against u * (H u) from torch.autograd.functional.hvp on the mean loss;
- two processes (torchrun, gloo) sharing the micro-batches out against one process taking them all, for
  both estimators, and the same Hessian EMA on both ranks.

The model is a 1-layer GPT with a 64-token vocabulary (about 15k parameters); every input is drawn from a
seeded generator. Results are compared by relative error of each tensor (norm of the difference over the
norm of the expected value): a Hessian estimate has entries near zero, where an elementwise relative
tolerance would only measure rounding.
"""

import os

import pytest
import torch
from conftest import GLOO, torchrun
from torch.func import functional_call

import sophia
from model import GPT, GPTConfig
from sophia import (SophiaG, SophiaH, fold_in_estimate, gnb_refresh, hutchinson_refresh, micro_batch_seed,
                    rademacher_like, sampled_cross_entropy, sampled_gradient, seeded)

B, T, V = 2, 16, 64  # sequences per micro-batch, their length, vocabulary size
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- helpers

def tiny_gpt(dropout=0.0, seed=0):
    """The same tiny GPT for the same seed, built without touching the global generator (other draws in
    a test must not depend on whether a model was built before them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=T, vocab_size=V, dropout=dropout))


def token_batches(n, seed=1):
    """n micro-batches (X, Y) of B random sequences of T tokens."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, V, (B, T), generator=gen), torch.randint(0, V, (B, T), generator=gen))
            for _ in range(n)]


def logits_of(model):
    return lambda X: model(X)[0]


def data_loss_of(model):
    return lambda batch: model(*batch)[1]


def hessians(optimizer, params):
    return [optimizer.state[p]["hessian"].clone() for p in params]


def assert_rel_close(actual, expected, rel):
    """Each tensor within `rel` of the expected one, relative to its norm (which must not be zero: a
    comparison of zeros would say nothing)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert e.norm() > 0
        assert (a - e).norm() <= rel * e.norm(), f"relative error {((a - e).norm() / e.norm()).item():.3g}"


def add_into(totals, tensors):
    for total, t in zip(totals, tensors):
        total += t


def clip_by_hand(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s rule written out: scale by max_norm / (norm + 1e-6) when that is
    below 1. Returns the clipped gradients and the norm before clipping."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g * scale for g in grads], norm


# ----------------------------------------------------------------------------- Gauss-Newton-Bartlett

@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_gnb_refresh_by_hand(max_norm):
    """Two micro-batches, seed s, dropout on: micro-batch i runs its forward pass (dropout) and draws its
    labels under micro_batch_seed(s, i); its mean loss counts 1/2; the summed gradient is clipped at
    max_norm (small enough here that it is), then squared into the EMA from zero. Unclipped too: the clip
    keeps only the direction, so a wrong scale of the gradient shows only without it."""
    model = tiny_gpt(dropout=0.1)  # train mode: the refresh's forward runs dropout, seeded too
    optimizer = SophiaG(model.optim_groups(weight_decay=0.1))  # two groups: both must count the refresh
    params = list(model.parameters())
    inputs = [X for X, _ in token_batches(2)]
    seed, beta2 = (7, 3), optimizer.param_groups[0]["betas"][1]

    expected = [torch.zeros_like(p) for p in params]
    for i, X in enumerate(inputs):
        with seeded(micro_batch_seed(seed, i), "cpu"):
            loss = sampled_cross_entropy(model(X)[0])
        add_into(expected, torch.autograd.grad(loss / len(inputs), params))
    if max_norm is not None:
        expected, norm = clip_by_hand(expected, max_norm)
        assert norm > 2 * max_norm  # the clip is exercised
    expected = [(1 - beta2) * g * g for g in expected]

    gnb_refresh(optimizer, logits_of(model), inputs, max_norm=max_norm, seed=seed)

    assert_rel_close(hessians(optimizer, params), expected, 1e-5)
    assert [g["hessian_bs"] for g in optimizer.param_groups] == [len(inputs) * B * T] * 2  # the steps' bs
    assert all(p.grad is None for p in params)  # the next training backward starts from nothing
    assert [g["hessian_updates"] for g in optimizer.param_groups] == [1, 1]


def test_a_seeded_refresh_leaves_the_global_generator_alone():
    """Training's own draws (dropout, data order) must not shift because a seeded refresh ran between
    two steps."""
    model = tiny_gpt(dropout=0.1)
    optimizer = SophiaG(model.parameters())
    inputs = [X for X, _ in token_batches(2)]
    torch.manual_seed(123)
    expected = torch.rand(8)
    torch.manual_seed(123)
    gnb_refresh(optimizer, logits_of(model), inputs, seed=5)
    assert torch.equal(torch.rand(8), expected)


def test_micro_batch_seed():
    """Deterministic, distinct per micro-batch and per refresh seed; an int seed is the 1-tuple."""
    assert micro_batch_seed((1, 2), 3) == micro_batch_seed((1, 2), 3)
    assert len({micro_batch_seed((1, it), i) for it in range(4) for i in range(4)}) == 16
    assert micro_batch_seed(5, 0) == micro_batch_seed((5,), 0)


def record_labels(monkeypatch):
    """Every label tensor that sophia's sampled_cross_entropy draws, in order (it looks
    sample_from_logits up in the module at each call)."""
    drawn, sample = [], sophia.sample_from_logits

    def recording(logits, generator=None):
        drawn.append(sample(logits, generator))
        return drawn[-1]

    monkeypatch.setattr(sophia, "sample_from_logits", recording)
    return drawn


def test_unseeded_micro_batches_equal_their_concatenation(monkeypatch):
    """Unseeded, labels come from the global generator. On CPU, consecutive torch.rand draws are the
    pieces of one big draw (checked here through the labels), so with the same global seed, 4
    micro-batches of 2 sequences sample the labels of one batch of 8: their mean-of-means (each
    micro-batch's loss scaled by 1/4) is then the big batch's mean, and the estimates agree up to
    rounding. No dropout: its draws would interleave with the labels' differently."""
    drawn = record_labels(monkeypatch)
    inputs = [X for X, _ in token_batches(4)]
    results = []
    for micro_batches in (inputs, [torch.cat(inputs)]):
        model = tiny_gpt()
        optimizer = SophiaG(model.parameters())
        drawn.clear()
        torch.manual_seed(0)
        gnb_refresh(optimizer, logits_of(model), micro_batches)
        results.append((hessians(optimizer, list(model.parameters())), torch.cat(drawn),
                        optimizer.param_groups[0]["hessian_bs"]))
    (split, split_labels, split_tokens), (whole, whole_labels, whole_tokens) = results

    assert split_labels.shape == (4 * B * T,)
    assert torch.equal(split_labels, whole_labels)
    assert split_tokens == whole_tokens == 4 * B * T
    assert_rel_close(split, whole, 1e-5)


def test_train_batch_variant_equals_the_fresh_refresh():
    """sampled_gradient on the training forward pass's logits, summed over the micro-batches (scale 1/n,
    seed micro_batch_seed(s, i)), put in p.grad and folded in, is gnb_refresh(seed=s) on the same
    batch: same labels, same scaling, same clip. No dropout, else the two forward passes would differ.
    The training loss's backward must still work after sampled_gradient (its graph is kept) and give the
    training gradient of a loop without it (sampled_gradient returns its gradient, it does not leave it
    in p.grad)."""
    batches, seed, max_norm = token_batches(3), (11, 4), 0.5

    def params_of(model):
        return list(model.parameters())

    model = tiny_gpt()
    optimizer = SophiaG(model.optim_groups(weight_decay=0.1))
    params = params_of(model)
    estimate = [torch.zeros_like(p) for p in params]
    for i, (X, Y) in enumerate(batches):
        logits, loss = model(X, Y)
        add_into(estimate, sampled_gradient(logits, params, scale=1 / len(batches),
                                            seed=micro_batch_seed(seed, i)))
        (loss / len(batches)).backward()  # the graph is still there
    training_gradient = [p.grad for p in params]

    fresh_model = tiny_gpt()
    fresh_optimizer = SophiaG(fresh_model.optim_groups(weight_decay=0.1))
    for X, Y in batches:  # the same training micro-steps without the estimate
        (fresh_model(X, Y)[1] / len(batches)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(training_gradient, params_of(fresh_model)))
    fresh_model.zero_grad(set_to_none=True)  # as the training loop's step leaves them
    gnb_refresh(fresh_optimizer, logits_of(fresh_model), [X for X, _ in batches],
                params=params_of(fresh_model), max_norm=max_norm, seed=seed)

    for p, g in zip(params, estimate):  # after the step, as a training loop would
        p.grad = g
    fold_in_estimate(optimizer, params, max_norm=max_norm)
    assert all(p.grad is None for p in params)
    assert_rel_close(hessians(optimizer, params), hessians(fresh_optimizer, params_of(fresh_model)), 1e-6)


# ----------------------------------------------------------------------------- Hutchinson

def hutchinson_by_hand(model, batches, probe):
    """u * (H u) for the Hessian of the mean data loss over `batches`, with H u from
    torch.autograd.functional.hvp on a functional copy of the model (not sophia's double backward)."""
    names = [name for name, _ in model.named_parameters()]

    def mean_loss(*values):
        weights = dict(zip(names, values))
        return sum(functional_call(model, weights, batch)[1] for batch in batches) / len(batches)

    _, hvp = torch.autograd.functional.hvp(mean_loss, tuple(p.detach() for p in model.parameters()),
                                           tuple(probe))
    return [u * hu for u, hu in zip(probe, hvp)]


def test_hutchinson_refresh_by_hand():
    """Three micro-batches; u is rademacher_like's draw from the generator over the optimizer's params
    (one group: named_parameters' order); the EMA from zero takes (1 - beta2) * u * (H u) as is, negative
    entries included (not squared, as Sophia-G's estimate is)."""
    model = tiny_gpt().eval()
    optimizer = SophiaH(model.parameters())
    params = list(model.parameters())
    batches, beta2 = token_batches(3), optimizer.param_groups[0]["betas"][1]

    with model.twice_differentiable():  # SDPA has no double backward
        probe = rademacher_like(params, torch.Generator().manual_seed(3))
        expected = [(1 - beta2) * e for e in hutchinson_by_hand(model, batches, probe)]
        hutchinson_refresh(optimizer, data_loss_of(model), batches, generator=torch.Generator().manual_seed(3))

    assert all(set(u.unique().tolist()) == {-1.0, 1.0} for u in probe if u.numel() > 1)
    h = hessians(optimizer, params)
    assert_rel_close(h, expected, 1e-5)
    assert any((t < 0).any() for t in h)
    assert optimizer.param_groups[0]["hessian_bs"] == 1
    assert all(p.grad is None for p in params)
    assert optimizer.param_groups[0]["hessian_updates"] == 1


# ----------------------------------------------------------------------------- two processes against one

N_MICRO, DDP_SEED, DDP_MAX_NORM = 4, (2, 9), 0.5


def both_refreshes(rank, world_size):
    """Sophia-G and Sophia-H refreshes over this rank's share of N_MICRO micro-batches (rank r takes a
    contiguous block: the micro-batch indices micro_batch_seed counts over all ranks), each on its own
    optimizer. Sophia-G's runs twice, unclipped and clipped (the clip keeps only the direction, which
    would hide a wrong scale), with dropout on (seeded per micro-batch like the labels); Sophia-H's in
    eval mode (its loss then draws nothing, so it is the same however the batches are shared out).
    Returns the three Hessian EMAs and Sophia-G's token count."""
    model = tiny_gpt(dropout=0.1)
    params = list(model.parameters())
    per_rank = N_MICRO // world_size
    batches = token_batches(N_MICRO)[rank * per_rank:(rank + 1) * per_rank]
    result = {}

    for key, max_norm in (("gnb", None), ("gnb_clipped", DDP_MAX_NORM)):
        optimizer = SophiaG(params)
        gnb_refresh(optimizer, logits_of(model), [X for X, _ in batches], max_norm=max_norm, seed=DDP_SEED)
        result[key] = hessians(optimizer, params)
        result["tokens"] = optimizer.param_groups[0]["hessian_bs"]

    optimizer = SophiaH(params)
    model.eval()
    with model.twice_differentiable():
        hutchinson_refresh(optimizer, data_loss_of(model), batches,
                           generator=torch.Generator().manual_seed(4))  # u alike on every rank
    result["hutchinson"] = hessians(optimizer, params)
    return result


DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist

sys.path.insert(0, {tests_dir!r})
from test_refresh import both_refreshes

dist.init_process_group("gloo")
result = both_refreshes(dist.get_rank(), dist.get_world_size())
torch.save(result, {out_dir!r} + f"/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


@pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")
def test_two_processes_match_one(tmp_path):
    """2 ranks x 2 micro-batches against 1 process x 4: the same labels and dropout (seeded by the
    global micro-batch index) and the same u, so only the order of floating-point sums differs
    (all-reduce then /2 against accumulation). Catches an estimate summed instead of averaged over
    ranks, labels and dropout seeded by the local micro-batch index, a clip before the all-reduce (per
    rank), and a token count that leaves out the other ranks. All-reduce hands every rank the same sum:
    the EMAs must be equal, bit for bit."""
    script = tmp_path / "refresh_ddp.py"
    script.write_text(DDP_SCRIPT.format(tests_dir=TESTS_DIR, out_dir=str(tmp_path)))
    files = [tmp_path / f"rank{r}.pt" for r in range(2)]
    torchrun([str(script)], cwd=tmp_path, completed=lambda result: all(f.exists() for f in files))
    ranks = [torch.load(f) for f in files]

    single = both_refreshes(0, 1)
    for key in ("gnb", "gnb_clipped", "hutchinson"):
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][key], ranks[1][key])), key
        assert_rel_close(ranks[0][key], single[key], 1e-5)
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == single["tokens"] == N_MICRO * B * T
