"""
The training step: the model as the step runs it (compiled, and wrapped by DDP across processes), precision
(autocast; fp16's loss scaling), the learning-rate schedule, gradient accumulation over micro-batches,
clipping, the optimizer step; then Sophia's Hessian refresh when it is due (training/refresh.py).
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from model import GPT, GPTConfig
from training.kernels import OUTPUT_LAYERS, convert_to_float8


@dataclass
class Network:
    """The model three ways: `model` the plain module (parameters, state, the refreshes that need neither
    compile nor DDP), `compiled` its torch.compile'd forward (evaluation, refresh forward passes), `trained`
    what the training step runs (compiled, and wrapped by DDP across processes)."""
    model: GPT
    compiled: object
    trained: object


def compiler(cfg):
    """torch.compile with the config's mode, or nothing."""
    return (lambda f: torch.compile(f, mode=cfg.compile_mode)) if cfg.compile else (lambda f: f)


def build_network(cfg, dist):
    model = GPT(GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                          dropout=cfg.dropout, bias=cfg.bias,
                          scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx))
    model.to(dist.device)
    if cfg.fp8:
        convert_to_float8(model)
    model.fused_loss = OUTPUT_LAYERS[cfg.output_layer][0] if cfg.output_layer != "torch" else None
    compiled = compiler(cfg)(model)
    trained = compiled
    if dist.world_size > 1:
        trained = DDP(compiled, device_ids=[dist.device] if dist.device_type == "cuda" else None)
    return Network(model, compiled, trained)


class Precision:
    """Autocast to the config's dtype (weights stay fp32); under fp16, its small range: losses are scaled for
    their backward, gradients unscaled before anything uses them, and a step whose gradient overflowed is
    skipped (the official code's GradScaler)."""

    def __init__(self, cfg, device_type):
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.dtype]
        self.ctx = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

    def loss_scale(self):
        """What a loss is multiplied by before its backward: the GradScaler's scale under fp16 (a host sync)."""
        return self.scaler.get_scale() if self.scaler else None

    def step(self, optimizer):
        if self.scaler:
            self.scaler.step(optimizer)  # skipped if the gradient overflowed
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self):
        return {"grad_scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state):
        if self.scaler and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


def get_lr(it, cfg):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, as the official code."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * it / cfg.warmup_iters
    if it >= cfg.lr_decay_iters:  # where the cosine ends (or right after a warmup as long as the decay)
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def l2_norm(tensors):
    """The L2 norm of a list of tensors taken as one vector (a device scalar)."""
    return torch.nn.utils.get_total_norm(tensors)


def rms(tensors):
    """Root mean square over all elements of a list of tensors (a device scalar)."""
    return l2_norm(tensors) / math.sqrt(sum(t.numel() for t in tensors))


def data_loss(model, X, Y):
    return model(X, Y)[1]


def accumulate_gradients(model, micro_batches, loss_fn, ctx, reduction="mean", scaler=None):
    """Backpropagate the mean of `loss_fn(model, X, Y)` over the micro-batches [(X, Y), ...], so p.grad
    holds the gradient of the global batch's mean loss; DDP synchronises gradients on the last
    micro-step only. reduction='sum' backpropagates each micro-batch's loss undivided (the official
    train_adam.py), so p.grad is the sum over micro-steps. `scaler` (a GradScaler) scales the losses
    (fp16). Returns the mean loss as a device tensor (no host sync)."""
    n = len(micro_batches)
    scale = 1 / n if reduction == "mean" else 1
    total = 0.0
    for i, (X, Y) in enumerate(micro_batches):
        sync = model.no_sync() if isinstance(model, DDP) and i < n - 1 else nullcontext()
        with sync:
            with ctx:
                loss = loss_fn(model, X, Y)
            (scaler.scale(loss * scale) if scaler else loss * scale).backward()
        total += loss.detach()
    return total / n


def clip_gradients(params, max_norm):
    """Clip the gradient's global norm at max_norm (if set); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class TrainStep:
    """One optimizer step on the next global batch, then the optimizer's Hessian refresh when it is due."""

    def __init__(self, cfg, network, optimizer, precision, batches, refresh):
        self.cfg, self.network, self.optimizer = cfg, network, optimizer
        self.precision, self.batches, self.refresh = precision, batches, refresh

    def __call__(self, it, measure_update=False):
        """Iteration `it` (0-based). Returns device tensors: the batch's mean loss, the gradient's norm before
        clipping, and with measure_update the RMS of the change the step made to the parameters (else None)."""
        cfg, params = self.cfg, list(self.network.model.parameters())
        for group in self.optimizer.param_groups:
            group["lr"] = get_lr(it, cfg)
        refresh_due = self.refresh.due(it + 1)
        loss_fn = self.refresh.training_loss(it + 1) if refresh_due else data_loss
        with self.refresh.step_settings():
            loss = accumulate_gradients(self.network.trained,
                                        self.batches.next_batch(cfg.total_bs, cfg.gradient_accumulation_steps),
                                        loss_fn, self.precision.ctx, cfg.grad_accumulation, self.precision.scaler)
        if self.precision.scaler:
            self.precision.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(params, cfg.grad_clip)
        update_rms = None
        with torch.no_grad():
            before = [p.clone() for p in params] if measure_update else None
            self.precision.step(self.optimizer)
            if measure_update:
                torch._foreach_sub_(before, params)  # minus the change: one buffer, not two
                update_rms = rms(before)
        self.optimizer.zero_grad(set_to_none=True)
        if refresh_due:
            self.refresh(it + 1)
        return loss, grad_norm, update_rms
