"""CPU tests for sophia.py: SophiaG, SophiaH and Lion against hand-computed values and an independent
transcription of the official update rule, agreement of the single-tensor / foreach / fused bodies,
compatibility with the official SophiaG API and state_dict, and the statistics of the two diagonal
Hessian estimators (Gauss-Newton-Bartlett, Hutchinson) on models small enough to compute exact values.

All randomness is seeded, so every test is deterministic; the statistical tolerances below are chosen
so that a correct implementation passes with a wide margin (see each test's docstring) while a wrong
scaling, sign or distribution fails by a large factor.
"""

import inspect
import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import chi_square_quantile, chi_square_statistic
from torch.func import functional_call, grad, jacrev, vmap

from model import GPT, GPTConfig
from sophia import (Lion, SophiaG, SophiaH, hessian_vector_product, rademacher_like, sample_from_logits,
                    sampled_cross_entropy)

IMPLS = ["single", "foreach"]  # the fused (torch.compile) body has its own test: compiling is slow on CPU
F64 = torch.float64


# ----------------------------------------------------------------------------- helpers

def flags(impl):
    return dict(foreach=impl == "foreach", fused=impl == "fused")


def param(values, dtype=F64):
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else torch.as_tensor(g, dtype=p.dtype).clone()


def hessian_refresh(opt, params, estimates):
    """Put `estimates` in p.grad and call update_hessian (the training loop's protocol)."""
    set_grads(params, estimates)
    opt.update_hessian()


def state_snapshot(opt, p):
    return {k: v.clone() for k, v in opt.state.get(p, {}).items()}  # .get: opt.state is a defaultdict


def assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def random_grads(params, gen, scale_range=(-4, 2)):
    """Gaussian gradients whose per-coordinate scale spans several decades (so some coordinates are
    clipped and some are not)."""
    lo, hi = scale_range
    out = []
    for p in params:
        scale = 10.0 ** (lo + (hi - lo) * torch.rand(p.shape, generator=gen, dtype=F64))
        out.append((torch.randn(p.shape, generator=gen, dtype=F64) * scale).to(p.dtype))
    return out


# Independent float64 transcription of the official SophiaG (github.com/Liuhong99/Sophia, sophia.py).
def official_update_hessian(h, grad, beta2):
    return beta2 * h + (1 - beta2) * grad * grad


def official_step(p, m, h, grad, *, lr, beta1, rho, weight_decay, bs, maximize=False):
    """Returns (new p, new m, ratio) for one SophiaG step of the official code."""
    if maximize:
        grad = -grad
    p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * grad
    ratio = (m.abs() / (rho * bs * h + 1e-15)).clamp(max=1)
    p = p + (-lr) * m.sign() * ratio
    return p, m, ratio


def hyper_of(groups, p):
    """The param group (dict) holding p."""
    return next(g for g in groups if any(q is p for q in g["params"]))


# ----------------------------------------------------------------------------- 1. SophiaG closed form

@pytest.mark.parametrize("impl", IMPLS)
def test_sophiag_two_steps_by_hand(impl):
    """Hand-computed values; coordinates: 0 unclipped, 1 clipped then unclipped, 2 m = 0 and h = 0
    (decay only), 3 m = 0 with h > 0 (decay only) then unclipped, 4 h = 0 (full sign step)."""
    p = param([1.0, -2.0, 0.5, 3.0, 0.0])
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.75), rho=0.5, weight_decay=0.1, **flags(impl))
    bs = 2  # rho * bs = 1, decay factor 1 - lr * wd = 0.99

    hessian_refresh(opt, [p], [[2.0, 1.0, 0.0, 4.0, 0.0]])  # h = 0.25 * g^2
    assert torch.equal(opt.state[p]["hessian"], torch.tensor([1.0, 0.25, 0.0, 4.0, 0.0], dtype=F64))
    assert opt.state[p]["step"].item() == 0  # update_hessian does not count as a step

    set_grads([p], [[0.4, -4.0, 0.0, 0.0, 1e-3]])  # m = 0.5 * g = [0.2, -2, 0, 0, 5e-4]
    opt.step(bs=bs)
    expected1 = [
        1.0 * 0.99 - 0.1 * 0.2 / 1.0,  # ratio 0.2 (unclipped)
        -2.0 * 0.99 + 0.1,  # |m| / (rho bs h) = 2 / 0.25 = 8 -> clipped to 1
        0.5 * 0.99,  # m = 0: no move except decay
        3.0 * 0.99,  # m = 0 with h > 0: no move except decay
        0.0 - 0.1,  # h = 0: 5e-4 / 1e-15 -> clipped, full sign step
    ]
    torch.testing.assert_close(p.detach(), torch.tensor(expected1, dtype=F64), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.2, -2.0, 0.0, 0.0, 5e-4], dtype=F64))

    hessian_refresh(opt, [p], [[2.0, 2.0, 0.0, 0.0, 0.0]])  # h = 0.75 h + 0.25 g^2
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([1.75, 1.1875, 0.0, 3.0, 0.0], dtype=F64))

    set_grads([p], [[0.4, 4.0, 0.0, 1.0, -1e-3]])  # m = [0.3, 1, 0, 0.5, -2.5e-4]
    opt.step(bs=bs)
    expected2 = [
        expected1[0] * 0.99 - 0.1 * 0.3 / 1.75,
        expected1[1] * 0.99 - 0.1 * 1.0 / 1.1875,  # no longer clipped: 1 / 1.1875 < 1
        expected1[2] * 0.99,
        expected1[3] * 0.99 - 0.1 * 0.5 / 3.0,
        expected1[4] * 0.99 + 0.1,  # m changed sign: full step the other way
    ]
    torch.testing.assert_close(p.detach(), torch.tensor(expected2, dtype=F64), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.3, 1.0, 0.0, 0.5, -2.5e-4], dtype=F64))
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_sophiag_matches_official_formula_over_random_steps(impl):
    """50 random steps, Hessian refresh every 4, three groups with different lr / wd / rho / betas,
    one of them maximize=True, against the float64 transcription of the official update."""
    gen = torch.Generator().manual_seed(0)
    shapes = [[(3, 4), (5,)], [(2, 3)], [(7,), (1,)]]
    hyper = [
        dict(lr=0.01, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1),
        dict(lr=0.1, betas=(0.9, 0.95), rho=1.0, weight_decay=0.0, maximize=True),
        dict(lr=0.003, betas=(0.5, 0.5), rho=0.01, weight_decay=0.5),
    ]
    groups = [dict(params=[torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64)) for s in ss], **h)
              for ss, h in zip(shapes, hyper)]
    opt = SophiaG(groups, **flags(impl))
    bs = 64
    params = [p for g in groups for p in g["params"]]
    ref = {id(p): dict(p=p.detach().clone(), m=torch.zeros_like(p), h=torch.zeros_like(p)) for p in params}
    clipped = unclipped = 0
    for t in range(50):
        if t % 4 == 0:
            estimates = random_grads(params, gen, (-1, 1))
            hessian_refresh(opt, params, estimates)
            for p, e in zip(params, estimates):
                ref[id(p)]["h"] = official_update_hessian(ref[id(p)]["h"], e, hyper_of(groups, p)["betas"][1])
        grads = random_grads(params, gen, (-4, 1))
        set_grads(params, grads)
        opt.step(bs=bs)
        for p, g in zip(params, grads):
            hp = hyper_of(groups, p)
            r = ref[id(p)]
            r["p"], r["m"], ratio = official_step(r["p"], r["m"], r["h"], g, lr=hp["lr"], beta1=hp["betas"][0],
                                                 rho=hp["rho"], weight_decay=hp["weight_decay"], bs=bs,
                                                 maximize=hp["maximize"])
            clipped += int((ratio == 1).sum())
            unclipped += int((ratio < 1).sum())
            torch.testing.assert_close(p.detach(), r["p"], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["exp_avg"], r["m"], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["hessian"], r["h"], rtol=1e-12, atol=1e-15)
    total = clipped + unclipped
    assert clipped > 0.1 * total and unclipped > 0.1 * total, (clipped, unclipped)  # both regimes exercised


@pytest.mark.parametrize("impl", IMPLS)
def test_sophiag_bias_correction_is_the_official_step_with_rho_over_the_ema_weight(impl):
    """bias_correction=True: exactly the official update (float64 transcription) with rho replaced by
    rho / (1 - beta2^k), k = the number of update_hessian() calls in which the group had estimates
    (k = 0: rho as is). 30 random steps, refresh every 3; the second group has no estimates at the
    refresh before step 6, so its k lags the others'; the third group sets bias_correction=False and
    takes the official step. Each group's `hessian_updates` and hessian_ema_weight follow k, and the
    diagnostics' win rate uses the corrected threshold. The correction matters: it changes the ratio of
    a large share of coordinates (by up to 1 / (1 - 0.99) = 100x)."""
    gen = torch.Generator().manual_seed(20)
    shapes = [[(3, 4), (5,)], [(2, 3)], [(7,), (1,)]]
    hyper = [
        dict(lr=0.01, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1),
        dict(lr=0.1, betas=(0.9, 0.95), rho=1.0, weight_decay=0.0, maximize=True),
        dict(lr=0.003, betas=(0.5, 0.9), rho=0.01, weight_decay=0.5, bias_correction=False),
    ]
    groups = [dict(params=[torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64)) for s in ss], **h)
              for ss, h in zip(shapes, hyper)]
    opt = SophiaG(groups, bias_correction=True, **flags(impl))
    assert [g["bias_correction"] for g in opt.param_groups] == [True, True, False]
    bs = 64
    params = [p for g in groups for p in g["params"]]
    group_of = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
    ref = {id(p): dict(p=p.detach().clone(), m=torch.zeros_like(p), h=torch.zeros_like(p)) for p in params}
    refreshes = [0, 0, 0]

    def corrected_rho(group, k):
        return group["rho"] / (1 - group["betas"][1] ** k) if group["bias_correction"] and k > 0 else group["rho"]

    clipped = unclipped = changed = corrected = 0
    for t in range(30):
        if t % 3 == 0:
            estimates = random_grads(params, gen, (-2, 0))
            if t == 6:  # the second group sits this refresh out
                estimates = [None if group_of[id(p)] == 1 else e for p, e in zip(params, estimates)]
            hessian_refresh(opt, params, estimates)
            for i in range(3):
                refreshes[i] += any(e is not None for p, e in zip(params, estimates) if group_of[id(p)] == i)
            for p, e in zip(params, estimates):
                if e is not None:
                    ref[id(p)]["h"] = official_update_hessian(ref[id(p)]["h"], e, hyper_of(groups, p)["betas"][1])
            assert [g["hessian_updates"] for g in opt.param_groups] == refreshes
            for g, k in zip(opt.param_groups, refreshes):
                assert SophiaG.hessian_ema_weight(g) == pytest.approx(1 - g["betas"][1] ** k, rel=1e-15)
        grads = random_grads(params, gen, (-4, 0))
        set_grads(params, grads)
        opt.step(bs=bs)
        for p, g in zip(params, grads):
            i = group_of[id(p)]
            hp, r = groups[i], ref[id(p)]
            rho = corrected_rho(hp, refreshes[i])
            _, _, official_ratio = official_step(r["p"], r["m"], r["h"], g, lr=hp["lr"], beta1=hp["betas"][0],
                                                 rho=hp["rho"], weight_decay=hp["weight_decay"], bs=bs,
                                                 maximize=hp["maximize"])
            r["p"], r["m"], ratio = official_step(r["p"], r["m"], r["h"], g, lr=hp["lr"], beta1=hp["betas"][0],
                                                 rho=rho, weight_decay=hp["weight_decay"], bs=bs,
                                                 maximize=hp["maximize"])
            clipped += int((ratio == 1).sum())
            unclipped += int((ratio < 1).sum())
            if hp["bias_correction"]:
                corrected += ratio.numel()
                changed += int(((ratio - official_ratio).abs() > 1e-3 * official_ratio).sum())
            torch.testing.assert_close(p.detach(), r["p"], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["exp_avg"], r["m"], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["hessian"], r["h"], rtol=1e-12, atol=1e-15)
    assert refreshes == [10, 9, 10]
    total = clipped + unclipped
    assert clipped > 0.1 * total and unclipped > 0.1 * total, (clipped, unclipped)  # both regimes exercised
    assert changed > 0.3 * corrected, (changed, corrected)

    win = sum(int((ref[id(p)]["m"].abs() < corrected_rho(g, k) * bs * ref[id(p)]["h"]).sum())
              for g, k in zip(groups, refreshes) for p in g["params"])
    official_win = sum(int((ref[id(p)]["m"].abs() < g["rho"] * bs * ref[id(p)]["h"]).sum())
                       for g in groups for p in g["params"])
    assert win != official_win
    d = opt.diagnostics(bs)
    assert d["train/win_rate"].item() == pytest.approx(win / sum(p.numel() for p in params), rel=1e-6)
    assert d["hessian_ema_weight"].item() == pytest.approx(1 - 0.99 ** 10, rel=1e-6)  # of the first group


# ----------------------------------------------------------------------------- 2. bounds

def make_optimizer(cls, params, impl, **kw):
    defaults = dict(lr=0.05, betas=(0.9, 0.95), weight_decay=0.3)
    if cls is not Lion:
        defaults["rho"] = 0.05
    defaults.update(kw)
    return cls(params, **defaults, **flags(impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SophiaG, SophiaH, Lion])
def test_per_coordinate_step_is_bounded_and_follows_momentum(cls, impl):
    """|delta theta| <= lr (1 + wd |theta|) on every coordinate; the non-decay part of the move is
    -lr * sign(m) * r with 0 <= r <= 1 for Sophia (never reversed), and exactly -lr * sign(c) for Lion,
    even with huge gradients, tiny curvature and (SophiaH) negative curvature estimates."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(3 * torch.randn(s, generator=gen, dtype=F64)) for s in [(6, 5), (11,)]]
    opt = make_optimizer(cls, params, impl)
    lr, wd, (beta1, _) = 0.05, 0.3, (0.9, 0.95)
    for t in range(40):
        if cls is not Lion and t % 5 == 0:
            estimates = random_grads(params, gen, (-30, 3))
            if cls is SophiaH:  # signed estimates, some negative
                estimates = [e * torch.randn(e.shape, generator=gen, dtype=F64).sign() for e in estimates]
            hessian_refresh(opt, params, estimates)
        grads = random_grads(params, gen, (-8, 6))
        old = [p.detach().clone() for p in params]
        old_m = [opt.state[p]["exp_avg"].clone() if p in opt.state else torch.zeros_like(p) for p in params]
        set_grads(params, grads)
        opt.step()
        for p, p0, m0, g in zip(params, old, old_m, grads):
            delta = p.detach() - p0
            assert torch.all(delta.abs() <= lr * (1 + wd * p0.abs()) * (1 + 1e-12))
            move = p.detach() - p0 * (1 - lr * wd)  # the part that is not weight decay
            assert torch.all(move.abs() <= lr * (1 + 1e-12))
            if cls is Lion:
                c = beta1 * m0 + (1 - beta1) * g
                torch.testing.assert_close(move, -lr * c.sign(), rtol=0, atol=1e-12)
            else:
                assert torch.all(move * opt.state[p]["exp_avg"] <= 0)  # never against the momentum


# ----------------------------------------------------------------------------- 3. h = 0: sign descent

@pytest.mark.parametrize("impl", IMPLS)
def test_sophiag_without_hessian_is_signsgd_with_momentum(impl):
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(4, 6, generator=gen, dtype=F64))
    lr, wd, beta1 = 0.02, 0.2, 0.8
    opt = SophiaG([p], lr=lr, betas=(beta1, 0.99), rho=0.1, weight_decay=wd, **flags(impl))
    m = torch.zeros_like(p)
    for t in range(5):
        g = torch.randn(p.shape, generator=gen, dtype=F64) * 1e-3
        expected = p.detach() * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        set_grads([p], [g])
        opt.step() if t % 2 else opt.step(bs=1)
        torch.testing.assert_close(p.detach(), expected - lr * m.sign(), rtol=1e-15, atol=1e-15)
        assert torch.all(opt.state[p]["hessian"] == 0)


# ----------------------------------------------------------------------------- 4. SophiaH

@pytest.mark.parametrize("impl", IMPLS)
def test_sophiah_hessian_is_ema_of_raw_estimate(impl):
    """SophiaH folds u * (H u) in as is (signed), SophiaG folds in g * g."""
    e1 = torch.tensor([2.0, -3.0, 0.0, -0.5], dtype=F64)
    e2 = torch.tensor([-1.0, 1.0, 4.0, 0.5], dtype=F64)
    for cls, f in [(SophiaH, lambda e: e), (SophiaG, lambda e: e * e)]:
        p = param([0.0, 0.0, 0.0, 0.0])
        opt = cls([p], betas=(0.9, 0.75), **flags(impl))
        hessian_refresh(opt, [p], [e1])
        torch.testing.assert_close(opt.state[p]["hessian"], 0.25 * f(e1), rtol=1e-15, atol=0)
        hessian_refresh(opt, [p], [e2])
        torch.testing.assert_close(opt.state[p]["hessian"], 0.75 * 0.25 * f(e1) + 0.25 * f(e2), rtol=1e-15, atol=0)
        assert torch.all(p.detach() == 0) and opt.state[p]["step"].item() == 0  # no parameter update


@pytest.mark.parametrize("impl", IMPLS)
def test_sophiah_nonpositive_curvature_takes_a_plain_sign_step(impl):
    """Where h <= 0 the step is exactly -lr * sign(m) after decay (the official formula would divide
    by a negative number: a reversed step of size ~1e8 for coordinate 2); h > 0 is clipped as usual."""
    p = param([1.0, -1.0, 2.0, 0.5, -0.5])
    lr, wd, rho = 0.1, 0.1, 0.2
    opt = SophiaH([p], lr=lr, betas=(0.5, 0.5), rho=rho, weight_decay=wd, **flags(impl))
    h = torch.tensor([-1.0, 0.0, -1e-9, 0.5, 2.0], dtype=F64)
    hessian_refresh(opt, [p], [h / 0.5])  # EMA with beta2 = 0.5 from 0: h = 0.5 * estimate
    torch.testing.assert_close(opt.state[p]["hessian"], h, rtol=1e-15, atol=0)

    set_grads([p], [[3.0, -2.0, 0.01, 0.4, -0.2]])  # m = [1.5, -1, 0.005, 0.2, -0.1]
    opt.step()  # SophiaH's default bs is 1: the threshold is rho * h
    expected = [
        1.0 * 0.99 - lr,  # h < 0: sign step
        -1.0 * 0.99 + lr,  # h = 0: sign step
        2.0 * 0.99 - lr,  # tiny negative h: sign step, not a reversed huge one
        0.5 * 0.99 - lr,  # h > 0: 0.2 / (0.2 * 0.5) = 2 -> clipped
        -0.5 * 0.99 + lr * 0.1 / (0.2 * 2.0),  # h > 0: ratio 0.25, not clipped
    ]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=F64), rtol=1e-14, atol=1e-15)
    # The same state with bs=5120 instead of SophiaH's default 1 would clip coordinate 4 too
    _, _, ratio = official_step(torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64), h.clamp(min=0),
                                torch.tensor([3.0, -2.0, 0.01, 0.4, -0.2], dtype=F64),
                                lr=lr, beta1=0.5, rho=rho, weight_decay=0, bs=5120)
    assert ratio[4] < 1e-3  # i.e. the default bs matters for this check


@pytest.mark.parametrize("cls, default_bs, other_bs", [(SophiaG, 5120, 1), (SophiaH, 1, 5120)])
def test_default_bs(cls, default_bs, other_bs):
    """step() without bs equals step(bs=5120) for SophiaG and step(bs=1) for SophiaH (and differs
    from the other value on this problem)."""
    def run(**step_kw):
        gen = torch.Generator().manual_seed(3)
        p = torch.nn.Parameter(torch.randn(50, generator=gen, dtype=F64))
        opt = cls([p], lr=0.01, rho=0.04, weight_decay=0.1)
        for t in range(6):
            if t % 3 == 0:
                # curvature such that rho * bs * h ~ |m| with the default bs, << |m| (all clipped) or
                # >> |m| (tiny steps) with the other
                scale = 0.15 if cls is SophiaG else 50.0  # SophiaG squares the estimate, SophiaH does not
                hessian_refresh(opt, [p], [scale * torch.rand(50, generator=gen, dtype=F64)])
            set_grads([p], [torch.randn(50, generator=gen, dtype=F64) * 0.05])
            opt.step(**step_kw)
        return p.detach().clone()

    default = run()
    assert torch.equal(default, run(bs=default_bs))
    assert not torch.allclose(default, run(bs=other_bs))


# ----------------------------------------------------------------------------- maximize

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls", [SophiaG, SophiaH, Lion])
def test_maximize_equals_minimizing_the_negation(cls, impl):
    """maximize=True with gradients g (and, for SophiaH, curvature estimates e of the maximized
    function) follows exactly the trajectory of minimizing with -g (and -e)."""
    def run(maximize):
        gen = torch.Generator().manual_seed(4)
        p = torch.nn.Parameter(torch.randn(30, generator=gen, dtype=F64))
        opt = make_optimizer(cls, [p], impl, maximize=maximize)
        sign = 1 if maximize else -1
        for t in range(12):
            if cls is not Lion and t % 4 == 0:
                hessian_refresh(opt, [p], [sign * torch.randn(30, generator=gen, dtype=F64)])
            set_grads([p], [sign * torch.randn(30, generator=gen, dtype=F64)])
            opt.step()
        return p.detach().clone()

    maximized = run(True)
    assert torch.equal(maximized, run(False))


# ----------------------------------------------------------------------------- 5. implementations agree

def agreement_run(cls, impl, steps, dtype=torch.float32, n_groups=3, lr_schedule=True, check_skips=False):
    """Runs `steps` random steps (Hessian refresh every 10) on several groups, with some p.grad None.
    Returns params and states, checking along the way (check_skips) that params without a gradient
    and their state are untouched by step() and update_hessian()."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(3, 4), (5,), (2, 2, 2), (7,), (1,), (4,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    frozen = torch.nn.Parameter(torch.randn(3, generator=gen).to(dtype))  # never gets a gradient
    groups = [
        dict(params=params[:2] + [frozen], lr=0.05, weight_decay=0.1),
        dict(params=params[2:4], lr=0.02, weight_decay=0.0),
        dict(params=params[4:], lr=0.1, weight_decay=0.3),
    ][:n_groups]
    if cls is not Lion:
        for g, rho in zip(groups, [0.03, 1.0, 0.2]):
            g["rho"] = rho
    params = [p for g in groups for p in g["params"] if p is not frozen]
    opt = cls(groups, betas=(0.9, 0.95), **flags(impl))
    for t in range(steps):
        grads = [None if (t + i) % 4 == 0 else g for i, g in enumerate(random_grads(params, gen, (-3, 1)))]
        if cls is not Lion and t % 10 == 0:
            estimates = random_grads(params, gen, (-4, -1))
            if cls is SophiaH:
                estimates = [e * torch.randn(e.shape, generator=gen).sign() for e in estimates]
            estimates = [None if gr is None else e for gr, e in zip(grads, estimates)]
            before = {i: state_snapshot(opt, p) for i, p in enumerate(params) if estimates[i] is None}
            hessian_refresh(opt, params, estimates)
            if check_skips:
                for i, snap in before.items():
                    assert_state_equal(state_snapshot(opt, params[i]), snap)
        if lr_schedule:
            for g in opt.param_groups:
                g["lr"] *= 0.98
        set_grads(params, grads)
        skipped = {i: (params[i].detach().clone(), state_snapshot(opt, params[i]))
                   for i, g in enumerate(grads) if g is None}
        opt.step() if cls is Lion else opt.step(bs=3)
        if check_skips:
            for i, (value, snap) in skipped.items():
                assert torch.equal(params[i].detach(), value)  # not even decayed
                assert_state_equal(state_snapshot(opt, params[i]), snap)
    assert frozen not in opt.state
    return [p.detach().clone() for p in params], [state_snapshot(opt, p) for p in params]


@pytest.mark.parametrize("cls", [SophiaG, SophiaH, Lion])
def test_single_and_foreach_agree(cls):
    """100 fp32 steps with 3 groups and missing gradients: foreach within 1e-6 relative of single."""
    p_single, s_single = agreement_run(cls, "single", 100, check_skips=True)
    p_foreach, s_foreach = agreement_run(cls, "foreach", 100, check_skips=True)
    for a, b in zip(p_foreach, p_single):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(s_foreach, s_single):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_fused_agrees_with_single_and_does_not_recompile_per_lr():
    """fused=True (torch.compile of the foreach body) vs the single-tensor body, one group of two
    tiny tensors, 20 steps with a new lr every step: within 1e-6 relative (fp32; fused computes
    1 - lr * wd from a float32 lr tensor, the reference from a Python float), and only one graph per
    update body (Hessian EMA, SophiaG step, Lion step) is compiled, not one per lr value. The same
    with bias_correction=True, whose rho changes at every refresh (rho / (1 - beta2^k)): it agrees with
    the single-tensor body, differs from the uncorrected run, and compiles no further graph."""
    from torch._dynamo.utils import counters

    def run(cls, impl, **kw):
        gen = torch.Generator().manual_seed(6)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(3,), (2, 2)]]
        if cls is SophiaG:
            kw["rho"] = 0.5
        opt = cls(params, lr=0.05, betas=(0.9, 0.95), weight_decay=0.1, **kw, **flags(impl))
        assert opt.implementation(params) == impl
        for t in range(20):
            if cls is SophiaG and t % 5 == 0:
                hessian_refresh(opt, params, [0.3 * torch.randn(p.shape, generator=gen) for p in params])
            opt.param_groups[0]["lr"] = 0.05 / (1 + t)
            set_grads(params, [torch.randn(p.shape, generator=gen) for p in params])
            opt.step(bs=2) if cls is SophiaG else opt.step()
        return params, opt

    graphs_before = counters["stats"]["unique_graphs"]
    for cls, kw in ((SophiaG, {}), (SophiaG, dict(bias_correction=True)), (Lion, {})):
        ref, _ = run(cls, "single", **kw)
        fused, opt = run(cls, "fused", **kw)
        for a, b in zip(fused, ref):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
        assert all(opt.state[p]["step"].item() == 20 for p in fused)
        if kw:
            uncorrected, _ = run(cls, "single")
            assert (fused[0] - uncorrected[0]).abs().max() > 1e-3  # the correction mattered
    assert counters["stats"]["unique_graphs"] - graphs_before <= 3


# ----------------------------------------------------------------------------- 6. official API

def test_constructor_and_step_signatures_match_official():
    sig = inspect.signature(SophiaG.__init__).parameters
    positional = [(n, p.default) for n, p in sig.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [("self", inspect.Parameter.empty), ("params", inspect.Parameter.empty),
                          ("lr", 1e-4), ("betas", (0.965, 0.99)), ("rho", 0.04), ("weight_decay", 1e-1)]
    assert sig["maximize"].kind is inspect.Parameter.KEYWORD_ONLY and sig["maximize"].default is False
    assert sig["capturable"].kind is inspect.Parameter.KEYWORD_ONLY and sig["capturable"].default is False
    step = list(inspect.signature(SophiaG.step).parameters.items())
    assert [n for n, _ in step] == ["self", "closure", "bs"] and step[1][1].default is None
    # the official default bs=5120 is resolved at call time (bs=None -> 5120): see test_default_bs
    p = param([1.0, 2.0])
    opt = SophiaG([p])
    assert {k: opt.defaults[k] for k in ("lr", "betas", "rho", "weight_decay", "maximize", "capturable")} == \
        dict(lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1, maximize=False, capturable=False)
    set_grads([p], [[1.0, -1.0]])
    opt.step(None, 5120)  # positional (closure, bs), as the official signature


def test_step_with_closure_returns_loss_and_uses_its_gradient():
    target = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    p = param([0.0, 0.0, 0.0])
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.99), weight_decay=0.0)

    def closure():
        opt.zero_grad()
        loss = ((p - target) ** 2).sum()
        loss.backward()  # step() runs the closure with grad enabled
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(2.25)
    torch.testing.assert_close(p.grad, -2 * target)
    torch.testing.assert_close(p.detach(), 0.1 * target.sign())  # h = 0: sign step towards the target


def test_state_and_param_group_keys():
    p, q = param([1.0, 2.0]), param([3.0])
    opt = SophiaG([p, q], rho=0.05)
    set_grads([p, q], [[1.0, 1.0], None])
    opt.update_hessian()
    opt.step(bs=4)
    assert set(opt.state[p]) == {"step", "exp_avg", "hessian"}
    assert torch.is_tensor(opt.state[p]["step"]) and opt.state[p]["step"].item() == 1
    assert q not in opt.state  # no gradient: no state
    assert {"lr", "betas", "rho", "weight_decay", "maximize", "capturable", "params"} <= set(opt.param_groups[0])
    assert set(Lion([param([1.0])]).param_groups[0]) >= {"lr", "betas", "weight_decay", "maximize"}


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_state_dict_round_trip_is_bit_exact(impl, bias_correction):
    """Save after 6 steps (torch.save), load with torch.load(weights_only=True) into a fresh optimizer
    built with other hyperparameters, continue 6 steps: identical to 12 uninterrupted steps. Each group's
    refresh count (`hessian_updates`, 2 at the save) is saved and restored: with bias_correction a count
    restarted at 0 would change rho / (1 - beta2^k) after the resume."""
    def batches(seed):
        gen = torch.Generator().manual_seed(seed)
        return [([torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)],
                 [torch.randn(4, 3, generator=gen) * 0.1, torch.randn(5, generator=gen) * 0.1]) for _ in range(12)]

    def new_params():
        gen = torch.Generator().manual_seed(7)
        return [torch.nn.Parameter(torch.randn(4, 3, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]

    def make(params, **kw):
        groups = [dict(params=params[:1], weight_decay=0.2), dict(params=params[1:], weight_decay=0.0, rho=0.3)]
        return SophiaG(groups, bias_correction=bias_correction, **kw, **flags(impl))

    def train(opt, params, data):
        for t, (g, e) in enumerate(data):
            if t % 3 == 0:
                hessian_refresh(opt, params, e)
            set_grads(params, g)
            opt.step(bs=7)

    data = batches(8)
    params = new_params()
    straight = make(params, lr=0.01)
    train(straight, params, data)

    first = new_params()
    opt = make(first, lr=0.01)
    train(opt, first, data[:6])
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert [g["hessian_updates"] for g in ckpt["optimizer"]["param_groups"]] == [2, 2]
    resumed = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = make(resumed, lr=123.0, betas=(0.1, 0.2))  # overwritten by the loaded param_groups
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.01
    assert [g["hessian_updates"] for g in opt2.param_groups] == [2, 2]
    train(opt2, resumed, data[6:])
    assert [g["hessian_updates"] for g in opt2.param_groups] == [g["hessian_updates"] for g in straight.param_groups] \
        == [4, 4]
    for a, b in zip(resumed, params):
        assert torch.equal(a, b)
    for a, b in zip(resumed, params):
        assert_state_equal(state_snapshot(opt2, a), state_snapshot(straight, b))


def official_state_dict(m, h, step=torch.tensor(3.0), extra_group_keys=True):
    group = {"lr": 0.01, "betas": (0.9, 0.99), "rho": 0.05, "weight_decay": 0.2, "params": [0, 1]}
    if extra_group_keys:
        group.update(maximize=False, capturable=False)
    return {"state": {i: {"step": step if not torch.is_tensor(step) else step.clone(), "exp_avg": m[i],
                          "hessian": h[i]} for i in range(2)},
            "param_groups": [group]}


@pytest.mark.parametrize("variant", ["official", "without_maximize_capturable", "float_step"])
def test_loads_an_official_style_state_dict_and_continues(variant):
    """A hand-built state_dict shaped like the official code's (through torch.save / torch.load with
    weights_only=True); older variants without maximize/capturable, or with a float `step`, get them
    filled in by __setstate__. The next step matches the official formula from the loaded state."""
    gen = torch.Generator().manual_seed(9)
    shapes = [(3,), (2, 2)]
    m = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    h = [torch.rand(s, generator=gen) for s in shapes]
    sd = official_state_dict(m, h, step=3.0 if variant == "float_step" else torch.tensor(3.0),
                             extra_group_keys=variant != "without_maximize_capturable")
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)

    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    start = [p.detach().clone() for p in params]
    opt = SophiaG(params, lr=1.0, rho=9.0)
    opt.load_state_dict(sd)
    group = opt.param_groups[0]
    assert group["maximize"] is False and group["capturable"] is False
    assert group["lr"] == 0.01 and group["rho"] == 0.05
    for p in params:
        assert torch.is_tensor(opt.state[p]["step"]) and opt.state[p]["step"].item() == 3

    grads = [torch.randn(s, generator=gen) for s in shapes]
    set_grads(params, grads)
    opt.step(bs=10)
    for i, p in enumerate(params):
        expected, exp_m, _ = official_step(start[i].double(), m[i].double(), h[i].double(), grads[i].double(),
                                           lr=0.01, beta1=0.9, rho=0.05, weight_decay=0.2, bs=10)
        torch.testing.assert_close(p.detach(), expected.float(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[p]["exp_avg"], exp_m.float(), rtol=1e-6, atol=1e-8)
        assert opt.state[p]["step"].item() == 4


@pytest.mark.parametrize("cls, kwargs", [
    (SophiaG, dict(lr=-1e-3)), (SophiaG, dict(betas=(1.0, 0.99))), (SophiaG, dict(betas=(0.9, 1.0))),
    (SophiaG, dict(betas=(-0.1, 0.99))), (SophiaG, dict(rho=-0.01)), (SophiaG, dict(weight_decay=-0.1)),
    (SophiaH, dict(lr=-1e-3)), (SophiaH, dict(rho=-0.01)), (SophiaH, dict(betas=(0.9, 1.5))),
    (Lion, dict(lr=-1e-3)), (Lion, dict(betas=(0.9, 1.0))), (Lion, dict(weight_decay=-1.0)),
])
def test_invalid_arguments_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls([param([1.0])], **kwargs)


def test_implementation_choice():
    p = param([1.0])
    assert SophiaG([p]).implementation([p]) == "single"  # CPU default
    assert SophiaG([p], foreach=True).implementation([p]) == "foreach"
    assert Lion([p], fused=True).implementation([p]) == "fused"


# ----------------------------------------------------------------------------- 7. diagnostics

def test_diagnostics_by_hand():
    """win_rate = fraction of coordinates with |m| < rho * bs * h (strictly: m = h = 0 counts as
    clipped), over the params that have state, overall and per named set of `param_sets` (a set counts
    only its params that have state; a set with none is left out); norms as stated;
    hessian_ema_weight = 1 - beta2^(refreshes so far); all 0-d tensors."""
    gen = torch.Generator().manual_seed(10)
    a, b, c, zero = (torch.nn.Parameter(torch.randn(s, generator=gen, dtype=F64)) for s in [(5, 4), (6,), (3,), (4,)])
    never = torch.nn.Parameter(torch.randn(2, dtype=F64))  # never has a gradient: no state, not counted
    opt = SophiaG([dict(params=[a, b, never], rho=0.05), dict(params=[c, zero], rho=0.5)], lr=0.01)
    rho = {a: 0.05, b: 0.05, c: 0.5, zero: 0.5}
    bs = 100
    refreshes = 0
    for t in range(4):
        if t % 2 == 0:
            hessian_refresh(opt, [a, b, c, zero], [torch.randn(p.shape, generator=gen, dtype=F64) * (p is not zero)
                                                   for p in (a, b, c, zero)])
            refreshes += 1
        set_grads([a, b, c, zero], [torch.randn(p.shape, generator=gen, dtype=F64) * (p is not zero)
                                    for p in (a, b, c, zero)])
        opt.step(bs=bs)
    assert refreshes == 2
    # sets across the two groups, one holding the stateless param, one with nothing but it
    sets = {"mixed": [a, c, never], "rest": [b, zero], "stateless": [never]}
    d = opt.diagnostics(bs, param_sets=sets)

    m = {p: opt.state[p]["exp_avg"] for p in rho}
    h = {p: opt.state[p]["hessian"] for p in rho}
    assert torch.all(m[zero] == 0) and torch.all(h[zero] == 0)
    unclipped = {p: int((m[p].abs() < rho[p] * bs * h[p]).sum()) for p in rho}
    win_rate = sum(unclipped.values()) / (20 + 6 + 3 + 4)
    mixed = (unclipped[a] + unclipped[c]) / (20 + 3)
    rest = (unclipped[b] + unclipped[zero]) / (6 + 4)
    assert 0 < win_rate < 1 and mixed != rest and mixed != win_rate and rest != win_rate
    assert set(d) == {"train/win_rate", "train/win_rate/mixed", "train/win_rate/rest", "hessian_norm",
                      "momentum_norm", "hessian_ema_weight"}
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in d.values())
    assert d["train/win_rate"].item() == pytest.approx(win_rate, rel=1e-6)  # computed in float32
    assert d["train/win_rate/mixed"].item() == pytest.approx(mixed, rel=1e-6)
    assert d["train/win_rate/rest"].item() == pytest.approx(rest, rel=1e-6)
    assert d["hessian_norm"].item() == pytest.approx(sum(float(h[p].abs().sum()) for p in h), rel=1e-12)
    assert d["momentum_norm"].item() == pytest.approx(math.sqrt(sum(float((m[p] ** 2).sum()) for p in m)), rel=1e-12)
    assert d["hessian_ema_weight"].item() == pytest.approx(1 - 0.99 ** 2, rel=1e-6)  # default beta2
    assert set(opt.diagnostics(bs)) == set(d) - {"train/win_rate/mixed", "train/win_rate/rest"}  # no sets
    # the default bs (5120) leaves many more coordinates unclipped here
    assert opt.diagnostics()["train/win_rate"].item() > win_rate


def test_diagnostics_before_any_refresh():
    """No state yet: no diagnostics. After a step without a refresh: h = 0, so nothing is unclipped and
    the EMA has given no weight to any estimate (hessian_ema_weight = 0)."""
    p = param([1.0, -2.0, 3.0])
    opt = SophiaG([p])
    assert opt.diagnostics() == {}
    set_grads([p], [[0.1, 0.2, -0.3]])
    opt.step()
    d = opt.diagnostics(param_sets={"all": [p]})
    assert d["train/win_rate"].item() == d["train/win_rate/all"].item() == 0
    assert d["hessian_norm"].item() == 0 and d["hessian_ema_weight"].item() == 0


# ----------------------------------------------------------------------------- 8a. sampling


def test_chi_square_helper_against_tables():
    # published chi-square quantiles (upper tail p): Wilson-Hilferty is within 2% here (0.6% in the upper tail)
    tables = [(10, 0.001, 29.588), (50, 0.001, 86.661), (100, 0.05, 124.342), (100, 0.001, 149.449), (20, 0.999, 5.921)]
    for dof, p, table in tables:
        assert chi_square_quantile(dof, p) == pytest.approx(table, rel=0.02)


SAMPLING_ROWS, SAMPLING_CLASSES, SAMPLES_PER_ROW = 4, 20, 50_000


def sampling_problem():
    gen = torch.Generator().manual_seed(11)
    logits = 1.2 * torch.randn(SAMPLING_ROWS, SAMPLING_CLASSES, generator=gen)
    return logits, logits.double().softmax(-1), gen


def draw(logits, gen):
    repeated = logits.repeat_interleave(SAMPLES_PER_ROW, dim=0)
    return sample_from_logits(repeated, gen).view(SAMPLING_ROWS, SAMPLES_PER_ROW)


def test_sample_from_logits_is_exact():
    """200k samples (4 rows x 50k) against softmax(logits): Pearson's chi-square with 4 * 19 dof below
    its p = 1e-6 critical value (~150), and above its lower p = 1e-6 one (not suspiciously regular)."""
    logits, probs, gen = sampling_problem()
    dof = SAMPLING_ROWS * (SAMPLING_CLASSES - 1)
    stat = chi_square_statistic(draw(logits, gen), probs)
    assert chi_square_quantile(dof, 1 - 1e-6) < stat < chi_square_quantile(dof, 1e-6), stat


def test_chi_square_test_has_power():
    """The same test rejects a sampler of softmax(2 * logits) by orders of magnitude, and one that
    samples softmax(1.05 * logits) (a 5% temperature error) too."""
    logits, probs, gen = sampling_problem()
    critical = chi_square_quantile(SAMPLING_ROWS * (SAMPLING_CLASSES - 1), 1e-6)
    assert chi_square_statistic(draw(2 * logits, gen), probs) > 100 * critical
    assert chi_square_statistic(draw(1.05 * logits, gen), probs) > critical


def test_sample_from_logits_shapes_and_generator():
    logits = torch.randn(2, 3, 9)
    s1 = sample_from_logits(logits, torch.Generator().manual_seed(0))
    s2 = sample_from_logits(logits, torch.Generator().manual_seed(0))
    assert s1.shape == (2, 3) and s1.dtype == torch.long and torch.equal(s1, s2)
    assert s1.min() >= 0 and s1.max() < 9
    peaked = torch.full((100, 5), -1e4)
    peaked[:, 3] = 0
    assert torch.all(sample_from_logits(peaked) == 3)


# ----------------------------------------------------------------------------- 8b. Gauss-Newton-Bartlett

def gnb_mean(logits, params, n_draws, seed):
    """Mean over draws of B * g_hat^2, g_hat = gradient of sampled_cross_entropy(logits) w.r.t. params,
    B = number of rows (tokens) of logits. Reuses the forward graph (the labels do not enter it)."""
    gen = torch.Generator().manual_seed(seed)
    n_rows = logits.numel() // logits.size(-1)
    total = [torch.zeros_like(p) for p in params]
    for _ in range(n_draws):
        g_hat = torch.autograd.grad(sampled_cross_entropy(logits, gen), params, retain_graph=True)
        for t, g in zip(total, g_hat):
            t.add_(n_rows * g * g)
    return torch.cat([t.reshape(-1) / n_draws for t in total])


def relative_error(estimate, exact):
    return float((estimate - exact).norm() / exact.norm())


def test_gnb_linear_softmax_converges_to_gauss_newton_diagonal_for_any_batch_size():
    """Linear softmax model, exact GN diagonal in closed form: for W[c, k], mean_i x_ik^2 p_ic (1 - p_ic);
    for b[c], mean_i p_ic (1 - p_ic). The mean of B * g_hat^2 over 6000 draws is within 5% (relative
    aggregate L2 error; its expected RMS value is 1.8%) for B = 32 rows and for B = 16 rows (the first
    half: the second half repeats it, so both have the same exact diagonal). A missing or wrong factor
    B would be off by 2x in one of the two."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(16, 5, generator=gen, dtype=F64)
    x = torch.cat([x, x])  # 32 rows, the second half a copy of the first
    w = torch.nn.Parameter(0.8 * torch.randn(7, 5, generator=gen, dtype=F64))
    b = torch.nn.Parameter(0.5 * torch.randn(7, generator=gen, dtype=F64))
    probs = (x @ w.T + b).softmax(-1).detach()
    v = probs * (1 - probs)
    exact = torch.cat([((v.T @ x ** 2) / 32).reshape(-1), v.mean(0)])
    for rows in (32, 16):
        estimate = gnb_mean(x[:rows] @ w.T + b, [w, b], 6000, seed=rows)
        assert relative_error(estimate, exact) < 0.05, rows


def tiny_gpt(vocab_size, n_embd, seed=0):
    """1-layer GPT in float64 with parameters perturbed away from the near-uniform GPT-2 init."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=4, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=n_embd, bias=True))
    model = model.double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=F64))
    return model


class Flat:
    """A model's parameters as one flat vector, for torch.func (the tied embedding counts once)."""

    def __init__(self, model):
        self.model = model
        self.names, self.params = zip(*model.named_parameters())
        self.vector = torch.cat([p.detach().reshape(-1) for p in self.params])

    def unflatten(self, vector):
        out, i = {}, 0
        for name, p in zip(self.names, self.params):
            out[name] = vector[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return out

    def __call__(self, vector, *args):
        return functional_call(self.model, self.unflatten(vector), args)


def test_gnb_gpt_converges_to_gauss_newton_diagonal_for_any_batch_size():
    """1-layer GPT (vocab 11, n_embd 8: 1008 parameters). Exact diagonal of the Gauss-Newton matrix of
    the mean loss over the B tokens, (1/B) sum_i J_i^T (diag p_i - p_i p_i^T) J_i, with J_i the Jacobian
    of token i's logits (torch.func.jacrev). The mean of B * g_hat^2 over 3000 draws is within 10%
    (relative aggregate L2 error; its expected RMS value is ~2%) for B = 8 tokens (two identical
    sequences) and B = 4 (one of them): both estimate the same diagonal."""
    model = tiny_gpt(vocab_size=11, n_embd=8)
    flat = Flat(model)
    seq = torch.randint(0, 11, (1, 4), generator=torch.Generator().manual_seed(13))
    idx = torch.cat([seq, seq])
    with model.twice_differentiable():  # vmap-friendly attention for jacrev; the same function
        jac = jacrev(lambda v: flat(v, idx)[0].reshape(-1, 11))(flat.vector)  # (tokens, vocab, params)
    with torch.no_grad():
        probs = model(idx)[0].reshape(-1, 11).softmax(-1)
    curvature = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    exact = torch.einsum("tvp,tvw,twp->p", jac, curvature, jac) / idx.numel()
    assert (exact > 0).float().mean() > 0.9  # non-trivial: nearly every parameter has curvature

    for rows in (idx, seq):
        estimate = gnb_mean(model(rows)[0], list(flat.params), 3000, seed=rows.size(0))
        assert relative_error(estimate, exact) < 0.10, rows.size(0)


# ----------------------------------------------------------------------------- 8c. Hutchinson

def test_rademacher_like():
    tensors = [torch.zeros(100, 100), torch.zeros(7, dtype=F64), torch.zeros(3, 2, dtype=torch.bfloat16),
               torch.zeros(())]
    probe = rademacher_like(tensors, torch.Generator().manual_seed(0))
    for u, t in zip(probe, tensors):
        assert u.shape == t.shape and u.dtype == t.dtype
        assert torch.all(u.abs() == 1)
    assert abs(probe[0].mean().item()) < 0.05  # balanced: 5 standard deviations for 10^4 entries
    again = rademacher_like(tensors, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(probe, again))  # same seed, same probe (all DDP ranks)
    other = rademacher_like(tensors, torch.Generator().manual_seed(1))
    assert not torch.equal(probe[0], other[0])


def test_hessian_vector_product_is_exact_on_linear_softmax():
    """H u against the closed-form Hessian of the mean cross-entropy of a linear softmax model:
    for theta = [W | b] (classes x inputs+1), (H U)[c, k] = mean_i xt_ik (A_i U xt_i)_c,
    A_i = diag(p_i) - p_i p_i^T, xt_i = [x_i, 1]."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(10, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 6, (10,), generator=gen)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=gen, dtype=F64))
    b = torch.nn.Parameter(torch.randn(6, generator=gen, dtype=F64))
    for seed in range(3):
        u = rademacher_like([w, b], torch.Generator().manual_seed(seed))
        hw, hb = hessian_vector_product(F.cross_entropy(x @ w.T + b, y), [w, b], u)
        with torch.no_grad():
            p = (x @ w.T + b).softmax(-1)
            xt = torch.cat([x, torch.ones(10, 1, dtype=F64)], dim=1)
            a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            ut = torch.cat([u[0], u[1][:, None]], dim=1)
            hu = torch.einsum("ik,icd,dj,ij->ck", xt, a, ut, xt) / 10
        torch.testing.assert_close(hw, hu[:, :4], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(hb, hu[:, 4], rtol=1e-12, atol=1e-14)


def test_hutchinson_on_gpt_converges_to_hessian_diagonal():
    """1-layer GPT (vocab 7, n_embd 4: 296 parameters) through GPT.twice_differentiable(). Exact Hessian
    by central finite differences of the gradient (float64, eps 1e-4, error ~1e-8: independent of
    double backward). E[u (H u)]_k = H_kk and Var[u (H u)]_k = sum_{j != k} H_kj^2 are then known
    exactly. The off-diagonal mass is ~5x the diagonal's, so the estimate converges slowly: over 1500
    probes the relative aggregate L2 error must be < 0.35 (its expected RMS value is 0.145, computed
    from the exact Hessian); the sharper check is that the per-coordinate z-scores, with the exact
    per-coordinate standard deviation, have mean square < 2 (1 expected). A wrong scale (e.g. 2x),
    sign or probe distribution fails both."""
    model = tiny_gpt(vocab_size=7, n_embd=4)
    flat = Flat(model)
    gen = torch.Generator().manual_seed(15)
    idx = torch.randint(0, 7, (2, 4), generator=gen)
    targets = torch.randint(0, 7, (2, 4), generator=gen)
    n = flat.vector.numel()
    with model.twice_differentiable():
        gradient = grad(lambda v: flat(v, idx, targets)[1])
        eps = 1e-4
        shifts = eps * torch.eye(n, dtype=F64)
        hessian = (vmap(gradient)(flat.vector + shifts) - vmap(gradient)(flat.vector - shifts)) / (2 * eps)
    assert float((hessian - hessian.T).abs().max()) < 1e-6 * float(hessian.abs().max())
    hessian = (hessian + hessian.T) / 2
    diag = hessian.diagonal()
    variance = (hessian ** 2).sum(1) - diag ** 2

    n_probes = 1500
    total = torch.zeros(n, dtype=F64)
    probe_gen = torch.Generator().manual_seed(16)
    params = list(flat.params)
    with model.twice_differentiable():
        for _ in range(n_probes):
            u = rademacher_like(params, probe_gen)
            hu = hessian_vector_product(model(idx, targets)[1], params, u)
            total += torch.cat([(a * b).reshape(-1) for a, b in zip(u, hu)])
    estimate = total / n_probes

    expected_rms = math.sqrt(float(variance.sum()) / n_probes) / float(diag.norm())
    assert expected_rms < 0.16  # the tolerance below is meaningful
    assert relative_error(estimate, diag) < 0.35
    noisy = variance > 1e-20  # parameters the loss does not depend on (the key bias) have H_kk = 0 exactly
    assert torch.all(estimate[~noisy].abs() < 1e-12)
    z2 = (estimate[noisy] - diag[noisy]) ** 2 / (variance[noisy] / n_probes)
    assert z2.mean() < 2, float(z2.mean())


# ----------------------------------------------------------------------------- 9. Lion closed form

@pytest.mark.parametrize("impl", IMPLS)
def test_lion_two_steps_by_hand(impl):
    p = param([1.0, -2.0, 0.5, 0.0])
    opt = Lion([p], lr=0.1, betas=(0.5, 0.75), weight_decay=0.2, **flags(impl))  # decay factor 0.98
    set_grads([p], [[1.0, 1.0, -1e-8, 0.0]])  # c = 0.5 g: sign [1, 1, -1, 0]
    opt.step()
    expected1 = [1.0 * 0.98 - 0.1, -2.0 * 0.98 - 0.1, 0.5 * 0.98 + 0.1, 0.0]
    torch.testing.assert_close(p.detach(), torch.tensor(expected1, dtype=F64), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.25, 0.25, -2.5e-9, 0.0], dtype=F64))

    set_grads([p], [[-0.1, -2.0, 1e-8, 3.0]])
    opt.step()
    # c = 0.5 m + 0.5 g = [0.075, -0.875, 3.75e-9, 1.5]: coordinate 0 follows the momentum, not g
    expected2 = [expected1[0] * 0.98 - 0.1, expected1[1] * 0.98 + 0.1, expected1[2] * 0.98 - 0.1, -0.1]
    torch.testing.assert_close(p.detach(), torch.tensor(expected2, dtype=F64), rtol=1e-15, atol=1e-15)
    # m = 0.75 m + 0.25 g
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.1625, -0.3125, 6.25e-10, 0.75], dtype=F64))
    assert set(opt.state[p]) == {"step", "exp_avg"} and opt.state[p]["step"].item() == 2
