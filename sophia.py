r"""
Sophia (Liu et al. 2023, arXiv 2305.14342) and Lion (Chen et al. 2023), plus the two diagonal-Hessian
estimators Sophia uses: Gauss-Newton-Bartlett (Sophia-G) and Hutchinson (Sophia-H).

SophiaG keeps the official code's parameterisation (github.com/Liuhong99/Sophia), so its published
hyperparameters carry over. Per parameter tensor, with state m (`exp_avg`) and h (`hessian`), both
zero at first:

    update_hessian(bs):  h <- beta2 * h + (1 - beta2) * g_hat * g_hat    (g_hat: what is in p.grad)
    step():              p <- p * (1 - lr * weight_decay)
                         m <- beta1 * m + (1 - beta1) * g
                         p <- p - lr * sign(m) * min(|m| / (rho * bs * max(h, 0) + 1e-15), 1)

No bias correction (official); `bias_correction=True` is our deviation for experiments: the step then
uses h / (1 - beta2^k) after k refreshes, as Adam corrects its second moment. g_hat is the gradient of
the mean cross-entropy of `bs` tokens against labels sampled from the model itself, so bs * g_hat^2 is
the GNB estimate of the diagonal of the Gauss-Newton matrix and rho is the paper's gamma. The refreshes
below pass bs to update_hessian, which keeps it for the steps until the next refresh; the official API's
step(bs=...) overrides it. Until the first refresh h = 0 and the update is sign(m) (sign descent with
momentum). Where h <= 0 (Hutchinson's estimate can be negative) the denominator is the paper's
max(rho * h, eps): the coordinate takes a sign step, never a reversed or huge one. The per-coordinate step
is at most lr (plus the decay lr * weight_decay * |p|).

SophiaH stores Hutchinson's estimate u * (H u) itself, not a square: update_hessian() does
h <- beta2 * h + (1 - beta2) * p.grad with u * (H u) in p.grad, and step uses bs = 1, so rho is the
paper's gamma directly. Lion:

    c <- beta1 * m + (1 - beta1) * g;  p <- p * (1 - lr * wd) - lr * sign(c);  m <- beta2 * m + (1 - beta2) * g

Each update has a readable single-tensor body (the reference), a multi-tensor body on torch._foreach_*
ops, and `fused`: that multi-tensor body compiled by torch.compile into a few fused kernels (the
default on CUDA, where the update is bound by memory traffic).
"""

import contextlib

import torch
import torch.distributed
import torch.nn.functional as F
from torch.optim.optimizer import Optimizer

EPS = 1e-15  # the official code's epsilon in the denominator of the clipped ratio


def _eps(dtype):
    """EPS, or the smallest normal number where EPS would underflow to 0 (float16), avoiding 0 / 0."""
    return max(EPS, torch.finfo(dtype).tiny)


# ----------------------------------------------------------------------------- estimators

def sample_from_logits(logits, generator=None):
    """One exact sample per row of softmax(logits), by the Gumbel-max trick: argmax(logits + G), with
    Gumbel noise G = -log(-log(U)), U uniform. Under torch.compile it fuses into one pass over the
    logits (the noise is made in registers), several times faster than torch.distributions.Categorical
    and with no extra memory."""
    if generator is None:  # rand_like: torch.compile also takes symbolic (dynamic) shapes
        uniform = torch.rand_like(logits, dtype=torch.float32)
    else:
        uniform = torch.rand(logits.shape, dtype=torch.float32, device=logits.device, generator=generator)
    return (logits.float() - torch.log(-torch.log(uniform))).argmax(dim=-1)


def sampled_cross_entropy(logits, generator=None):
    """Mean cross-entropy against labels sampled from the model's own softmax: its gradient g_hat
    gives the Gauss-Newton-Bartlett estimate B * g_hat^2 (B = number of rows of `logits`)."""
    logits = logits.reshape(-1, logits.size(-1))
    labels = sample_from_logits(logits.detach(), generator)
    return F.cross_entropy(logits.float(), labels)  # fp32, as under autocast: logits may come out of it in bf16


def sample_from_linear(hidden, weight, generator=None, block_rows=8192):
    """sample_from_logits(hidden @ weight.T), computed `block_rows` rows at a time: the same exact samples of
    the output layer's softmax with only one block's logits in memory, for a fused output layer (whose full
    logits never exist). Labels shaped like hidden without its last dimension; no gradient."""
    with torch.no_grad():
        rows = hidden.reshape(-1, hidden.size(-1))
        labels = [sample_from_logits(F.linear(block, weight), generator) for block in rows.split(block_rows)]
    return torch.cat(labels).view(hidden.shape[:-1])


def sampled_linear_cross_entropy(hidden, weight, linear_cross_entropy, generator=None):
    """sampled_cross_entropy for a fused output layer: labels from sample_from_linear, then
    linear_cross_entropy(hidden, weight, labels) (e.g. kernels.liger_linear_cross_entropy), the mean
    cross-entropy of softmax(hidden @ weight.T) against them. Its gradient is the same g_hat."""
    return linear_cross_entropy(hidden, weight, sample_from_linear(hidden, weight, generator))


def rademacher_like(tensors, generator=None):
    """Random +-1 vectors shaped like `tensors` (Hutchinson's probe u)."""
    return [torch.randint(0, 2, t.shape, generator=generator, device=t.device).to(t.dtype).mul_(2).sub_(1)
            for t in tensors]


def hessian_vector_product(loss, params, vectors):
    """H v for the Hessian of `loss` w.r.t. `params`, by double backward (needs a twice-differentiable
    model: see GPT.twice_differentiable)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return torch.autograd.grad(grads, params, grad_outputs=vectors)


# ----------------------------------------------------------------------------- update bodies

def _single_tensor_sophiag(params, grads, exp_avgs, hessians, *, lr, beta1, rho, weight_decay, bs):
    for param, grad, exp_avg, hess in zip(params, grads, exp_avgs, hessians):
        param.mul_(1 - lr * weight_decay)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        ratio = (exp_avg.abs() / ((rho * bs * hess).clamp_(min=0) + _eps(hess.dtype))).clamp_(max=1)
        param.addcmul_(exp_avg.sign(), ratio, value=-lr)


def _multi_tensor_sophiag(params, grads, exp_avgs, hessians, *, lr, beta1, rho, weight_decay, bs):
    # lr may be a 0-d tensor (fused path: no recompilation when it changes), hence mul/sub, not alpha=
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    denom = torch._foreach_mul(hessians, rho * bs)
    torch._foreach_clamp_min_(denom, 0)
    torch._foreach_add_(denom, _eps(hessians[0].dtype))
    # sign(m) * min(|m| / d, 1) == clamp(m / d, -1, 1) since d > 0
    step = torch._foreach_div(exp_avgs, denom)
    torch._foreach_clamp_min_(step, -1)
    torch._foreach_clamp_max_(step, 1)
    torch._foreach_mul_(step, lr)
    torch._foreach_sub_(params, step)


def _single_tensor_lion(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay):
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        update = (exp_avg * beta1).add_(grad, alpha=1 - beta1).sign_()
        param.mul_(1 - lr * weight_decay).add_(update, alpha=-lr)
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def _multi_tensor_lion(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay):
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_mul_(update, lr)
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_sub_(params, update)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


def _single_tensor_ema_square(hessians, grads, *, beta2):
    for hess, grad in zip(hessians, grads):
        hess.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


def _multi_tensor_ema_square(hessians, grads, *, beta2):
    torch._foreach_mul_(hessians, beta2)
    torch._foreach_addcmul_(hessians, grads, grads, value=1 - beta2)


def _single_tensor_ema(hessians, estimates, *, beta2):
    for hess, estimate in zip(hessians, estimates):
        hess.mul_(beta2).add_(estimate, alpha=1 - beta2)


def _multi_tensor_ema(hessians, estimates, *, beta2):
    torch._foreach_mul_(hessians, beta2)
    torch._foreach_add_(hessians, estimates, alpha=1 - beta2)


_compiled = {}


def _fused(fn):
    """`fn` compiled by torch.compile (fused Triton kernels on CUDA). It compiles once per parameter
    group (its list lengths and constant hyperparameters are baked in; lr is a tensor); past torch's
    recompile limit (8 groups of distinct settings) the rest run the eager foreach body."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


# ----------------------------------------------------------------------------- optimizers

class _ClippedSignOptimizer(Optimizer):
    """What SophiaG and Lion share: argument checks, lazy state, and the choice among the single-tensor
    reference, the multi-tensor (foreach) body and its compiled (fused) version."""

    state_keys = ("exp_avg",)

    def __init__(self, params, defaults, *, foreach=None, fused=None):
        lr, betas, weight_decay = defaults["lr"], defaults["betas"], defaults["weight_decay"]
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas (each must be in [0, 1)): {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults.setdefault("maximize", False)
        defaults.setdefault("capturable", False)
        super().__init__(params, defaults)
        self.foreach, self.fused = foreach, fused
        self._scalar_tensors = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("capturable", False)
        for s in self.state.values():  # old pickles kept `step` as a float
            if "step" in s and not torch.is_tensor(s["step"]):
                s["step"] = torch.tensor(float(s["step"]))

    def _init_group(self, group):
        """The group's params that have a gradient, and their gradients; creates missing state."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                device = p.device if group["capturable"] else "cpu"
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
            for key in self.state_keys:
                if key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grads = [p.grad.neg() if group["maximize"] else p.grad for p in params]
        return params, grads

    def _state(self, params, key):
        return [self.state[p][key] for p in params]

    def implementation(self, params):
        """'fused' (compiled multi-tensor body) by default on CUDA, else 'foreach' if asked, else the
        'single'-tensor reference."""
        on_cuda = all(p.is_cuda for p in params)
        if on_cuda if self.fused is None else self.fused:
            return "fused"
        return "foreach" if (on_cuda if self.foreach is None else self.foreach) else "single"

    changing = ("lr", "rho")  # hyperparameters that may change between steps (schedule, bias correction)

    def _apply(self, single, multi, *tensor_lists, **hyper):
        """Run one update body on the tensor lists. For the fused body, the `changing` hyperparameters
        become reused 0-d device tensors: a changing Python float would make torch.compile recompile."""
        impl = self.implementation(tensor_lists[0])
        if impl == "single":
            return single(*tensor_lists, **hyper)
        if impl == "foreach":
            return multi(*tensor_lists, **hyper)
        device = tensor_lists[0][0].device
        for key in self.changing:
            if key in hyper:
                if (device, key) not in self._scalar_tensors:
                    self._scalar_tensors[device, key] = torch.zeros((), dtype=torch.float32, device=device)
                hyper[key] = self._scalar_tensors[device, key].fill_(hyper[key])
        return _fused(multi)(*tensor_lists, **hyper)

    @torch.no_grad()
    def _run_step(self, closure, update):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._init_group(group)
            if params:
                torch._foreach_add_(self._state(params, "step"), 1)
                update(group, params, grads)
        return loss


class SophiaG(_ClippedSignOptimizer):
    """Sophia with the Gauss-Newton-Bartlett estimator, in the official code's parameterisation (see the
    module docstring). API-compatible with the official `SophiaG`: same constructor, `update_hessian()`,
    `step(closure=None, bs=5120)`, state keys `step`, `exp_avg`, `hessian`. Each parameter group also
    counts its refreshes in `hessian_updates` and keeps the last one's bs in `hessian_bs` (`default_bs`, the
    official step's default, until a refresh gives one).

    `foreach`/`fused` pick the implementation (default: fused on CUDA, single-tensor elsewhere).
    `bias_correction` (not in the official code) divides h by 1 - beta2^refreshes in the step.
    """

    state_keys = ("exp_avg", "hessian")
    default_bs = 5120

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1, *,
                 bias_correction=False, maximize=False, capturable=False, foreach=None, fused=None):
        if not 0.0 <= rho:
            raise ValueError(f"Invalid rho value: {rho}")
        defaults = dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, bias_correction=bias_correction,
                        maximize=maximize, capturable=capturable)
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    hessian_update = (_single_tensor_ema_square, _multi_tensor_ema_square)

    @staticmethod
    def hessian_ema_weight(group):
        """1 - beta2^k after k refreshes: the weight the EMA has given to estimates so far (it starts
        at h = 0, so the rest of its weight is on that zero)."""
        return 1 - group["betas"][1] ** group.get("hessian_updates", 0)

    def effective_rho(self, group):
        """rho, or with bias correction rho / (1 - beta2^k): the same as dividing h by that weight."""
        weight = self.hessian_ema_weight(group)
        return group["rho"] / weight if group.get("bias_correction") and weight > 0 else group["rho"]

    @torch.no_grad()
    def update_hessian(self, bs=None):
        """Fold the estimate in p.grad into the Hessian EMA (squared for SophiaG, as is for SophiaH). `bs`: the
        number of tokens whose mean loss produced it (kept in each group's `hessian_bs` for the steps)."""
        for group in self.param_groups:
            params, grads = self._init_group(group)
            if params:
                self._apply(*self.hessian_update, self._state(params, "hessian"), grads, beta2=group["betas"][1])
                group["hessian_updates"] = group.get("hessian_updates", 0) + 1
            if bs is not None:
                group["hessian_bs"] = bs

    def hessian_bs(self, group, bs=None):
        """The bs of a group's step: given, else its last refresh's, else default_bs."""
        return bs if bs is not None else group.get("hessian_bs", self.default_bs)

    def step(self, closure=None, bs=None):
        """One update. `bs`: the number of tokens whose mean loss produced the Hessian estimate (official:
        total_bs * block_size); by default the one update_hessian was given."""
        def update(group, params, grads):
            self._apply(_single_tensor_sophiag, _multi_tensor_sophiag,
                        params, grads, self._state(params, "exp_avg"), self._state(params, "hessian"),
                        lr=group["lr"], beta1=group["betas"][0], rho=self.effective_rho(group),
                        weight_decay=group["weight_decay"], bs=self.hessian_bs(group, bs))

        return self._run_step(closure, update)

    @torch.no_grad()
    def diagnostics(self, bs=None, param_sets=None):
        """Device tensors (no host sync) for logging: `train/win_rate` (fraction of coordinates with
        |m| < rho * bs * h, i.e. not clipped: the official metric), the same over each named set of
        parameters in `param_sets` ({name: [params]}) as `train/win_rate/<name>`, `hessian_norm` (sum of
        |h|, the official L1 norm), `momentum_norm` (L2) and `hessian_ema_weight` (1 - beta2^refreshes,
        of the first group). `bs` as for step()."""
        unclipped, h_l1, m_sq = {}, [], []
        for group in self.param_groups:
            params = [p for p in group["params"] if "hessian" in self.state.get(p, {})]
            if not params:
                continue
            m = [self.state[p]["exp_avg"] for p in params]
            h = [self.state[p]["hessian"] for p in params]
            threshold = self.effective_rho(group) * self.hessian_bs(group, bs)
            unclipped.update({p: (mi.abs() < threshold * hi).sum() for p, mi, hi in zip(params, m, h)})
            h_l1 += torch._foreach_norm(h, 1)
            m_sq += [n.square() for n in torch._foreach_norm(m)]
        if not unclipped:
            return {}

        def win_rate(params):
            params = [p for p in params if p in unclipped]
            return torch.stack([unclipped[p] for p in params]).sum() / sum(p.numel() for p in params)

        sets = {f"train/win_rate/{name}": win_rate(params) for name, params in (param_sets or {}).items()
                if any(p in unclipped for p in params)}
        return {
            "train/win_rate": win_rate(unclipped),
            **sets,
            "hessian_norm": torch.stack(h_l1).sum(),
            "momentum_norm": torch.stack(m_sq).sum().sqrt(),
            "hessian_ema_weight": torch.tensor(self.hessian_ema_weight(self.param_groups[0])),
        }


class SophiaH(SophiaG):
    """Sophia with Hutchinson's estimator. p.grad must hold u * (H u) when update_hessian() is called
    (see `rademacher_like`, `hessian_vector_product`); the EMA takes it as is (it may be negative).
    Its bs is 1, so rho is the paper's gamma. With maximize=True the estimate is negated as well
    (maximizing f is minimizing -f). The official repository never released Sophia-H for GPT-2; the
    defaults here follow the paper's text (gamma = 0.01)."""

    default_bs = 1

    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), rho=0.01, weight_decay=1e-1, **kwargs):
        super().__init__(params, lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, **kwargs)

    hessian_update = (_single_tensor_ema, _multi_tensor_ema)


class Lion(_ClippedSignOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), the paper's third
    baseline: sign of an interpolation of momentum and gradient, decoupled weight decay."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False, foreach=None, fused=None):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, foreach=foreach, fused=fused)

    def step(self, closure=None):
        def update(group, params, grads):
            self._apply(_single_tensor_lion, _multi_tensor_lion, params, grads, self._state(params, "exp_avg"),
                        lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                        weight_decay=group["weight_decay"])

        return self._run_step(closure, update)


# ----------------------------------------------------------------------------- refreshes, for any training loop
#
# Call one of these every k steps, between an optimizer step and the next backward (they use and clear
# p.grad). Under torch.distributed, every rank calls it with its own share of the refresh batch; the
# gradient is averaged over ranks here, so pass the plain model's forward, not the DDP wrapper's.

def micro_batch_seed(seed, index):
    """The sampling seed of micro-batch `index` (counted over all ranks) of a refresh seeded with `seed` (an
    int or a tuple of ints): the labels then depend neither on the number of processes nor on the order in
    which they run. None for an unseeded refresh."""
    return None if seed is None else hash((*(seed if isinstance(seed, tuple) else (seed,)), index))


@contextlib.contextmanager
def seeded(seed, device):
    """Draw from the global generators (dropout, sampling) as if just seeded with `seed`; they are left
    as they were. With seed None, draw from them as they are."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _rank_and_world_size():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _params(optimizer, params):
    return list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]


@torch.no_grad()
def fold_in_estimate(optimizer, params=None, *, bs=None, max_norm=None, loss_scale=None):
    """The end of every refresh: p.grad holds this process's estimate; average it over ranks, clip its global
    norm at max_norm (if given and not 0), fold it into the Hessian EMA (optimizer.update_hessian(bs), `bs` the
    tokens behind the estimate over all ranks) and clear p.grad. `params`: the optimizer's, in the order to take them
    (it decides float rounding, not the result).
    `loss_scale`: what the loss was multiplied by before its backward (fp16 training: a GradScaler's
    get_scale()): the estimate is divided by it first, and one that overflowed is dropped, not folded in.
    Returns whether the estimate was folded in."""
    params = [p for p in _params(optimizer, params) if p.grad is not None]
    grads = [p.grad for p in params]
    _, world_size = _rank_and_world_size()
    if world_size > 1:
        for g in grads:
            torch.distributed.all_reduce(g)  # SUM, then divide: gloo has no AVG
        torch._foreach_div_(grads, world_size)
    finite = True
    if loss_scale is not None:
        torch._foreach_div_(grads, loss_scale)
        finite = torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()).item()  # the same on every rank
    if finite:
        if max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, torch.nn.utils.get_total_norm(grads))
        optimizer.update_hessian(bs=bs)
    optimizer.zero_grad(set_to_none=True)
    return finite


def gnb_refresh(optimizer, logits_fn, inputs, *, params=None, max_norm=None, seed=None, loss_fn=None,
                loss_scale=None):
    """Sophia-G's refresh (the official one): g_hat = the gradient of the mean, over the micro-batches
    `inputs` (and over ranks), of the cross-entropy of `logits_fn(X)` against labels sampled from its own
    softmax; clipped at max_norm like a training gradient (the official code clips it at grad_clip); then
    h <- beta2 h + (1 - beta2) g_hat^2. Micro-batch i of rank r samples (and runs dropout) under
    `micro_batch_seed(seed, r * len(inputs) + i)` when a seed is given, else from the global generators.
    `loss_fn(logits)` replaces sampled_cross_entropy (e.g. a compiled copy of it). With a fused output layer,
    logits_fn gives the hidden states and loss_fn is sampled_linear_cross_entropy with the output weight bound
    (the logits then never exist: the refresh's peak memory stays the training step's). Under fp16, pass the
    GradScaler's get_scale() as loss_scale: the loss is scaled for its backward, the estimate unscaled.
    Every rank must pass the same number of micro-batches, and p.grad must be empty (call it after
    zero_grad). The optimizer keeps the number of tokens behind the estimate (over all ranks) as its steps' bs."""
    rank, world_size = _rank_and_world_size()
    loss_fn = loss_fn or sampled_cross_entropy
    tokens = 0
    for i, X in enumerate(inputs):
        with seeded(micro_batch_seed(seed, rank * len(inputs) + i), X.device):
            outputs = logits_fn(X)
            loss = loss_fn(outputs)
        (loss * (1 / len(inputs)) * (loss_scale or 1)).backward()  # as gradient accumulation scales a micro-batch
        tokens += outputs[..., 0].numel()
    fold_in_estimate(optimizer, params, bs=tokens * world_size, max_norm=max_norm, loss_scale=loss_scale)


def sampled_gradient(logits, params, *, scale=1.0, seed=None, loss_fn=None):
    """For Sophia-G's refresh from the training batch (one extra backward pass, no extra forward): the
    gradient of scale * sampled_cross_entropy(logits) w.r.t. params, from the logits of the training
    step's own forward pass, whose graph is kept for the training loss's backward. Sum it over the
    micro-batches with scale = 1 / their number (times the loss scale under fp16), put the sum in p.grad
    after the step, then call fold_in_estimate with bs the tokens behind it. `seed`: this micro-batch's (see
    micro_batch_seed)."""
    with seeded(seed, logits.device):
        loss = (loss_fn or sampled_cross_entropy)(logits)
    return torch.autograd.grad(loss * scale, params, retain_graph=True)


def hutchinson_refresh(optimizer, loss_fn, inputs, *, params=None, generator=None, loss_scale=None):
    """Sophia-H's refresh: u * (H u), H the Hessian of the mean of loss_fn(batch) over the micro-batches
    `inputs` (and over ranks), u one Rademacher vector from `generator` (seed it alike on every rank), by
    double backward (the model must be twice differentiable: see GPT.twice_differentiable); then
    h <- beta2 h + (1 - beta2) u * (H u), whose bs is 1. `loss_scale` as for gnb_refresh."""
    params = [p for p in _params(optimizer, params) if p.requires_grad]
    probe = rademacher_like(params, generator)
    for batch in inputs:
        loss = loss_fn(batch) / len(inputs) * (loss_scale or 1)
        for p, hv in zip(params, hessian_vector_product(loss, params, probe)):
            p.grad = hv if p.grad is None else p.grad.add_(hv)
    torch._foreach_mul_([p.grad for p in params], probe)  # u = +-1: exact, so before or after averaging
    fold_in_estimate(optimizer, params, bs=1, loss_scale=loss_scale)
