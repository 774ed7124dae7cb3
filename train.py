"""
Train a GPT-2 model with AdamW, Lion, Sophia-G or Sophia-H: one training loop for every optimizer.

    python train.py config/train_cpu_demo.py                    # CPU, a few minutes
    python train.py config/train_gpt2_small_sophia.py           # one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small_sophia.py

Configuration: configurator.py (every key, its default and meaning). Sophia's Hessian refresh is one
more step of the same loop, taken every `hess_interval` iterations, after that iteration's update, as in
the official code: Sophia-G backpropagates the mean cross-entropy against labels sampled from the model
(Gauss-Newton-Bartlett), Sophia-H a Hessian-vector product with a random sign vector (Hutchinson).
"""

import ctypes
import dataclasses
import gc
import math
import os
import signal
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, rng_state, save_checkpoint,
                        set_rng_state)
from configurator import ConfigError, describe_keys, load_config, note
from data.tokens import DatasetError, check_all_tokens, check_tokens, open_split, read_meta
from kernels import OUTPUT_LAYERS, check_fp8, check_output_layer, convert_to_float8
from metrics import MetricsError, MetricsLog, check_wandb
from model import GPT, GPTConfig
from optimizers import OPTIMIZERS
from outdir import OutDir, OutDirError
from progress import Eta, duration, warn_if_too_big_for_the_cpu
from sophia import (fold_in_estimate, gnb_refresh, hutchinson_refresh, micro_batch_seed, sampled_cross_entropy,
                    sampled_gradient, sampled_linear_cross_entropy)


# ----------------------------------------------------------------------------- processes and devices

@dataclass
class Dist:
    """This process's place in the run: rank, world size, device, and a gloo group for small
    host-side agreements (whether to stop) that must not wait on the GPU."""
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    control_group: object = None

    @property
    def is_master(self):
        return self.rank == 0


def init_distributed(cfg):
    """A Dist for this process, and the config with everything derived from it resolved (device, backend,
    compile, the batch settings): what the run logs and checkpoints is what it did."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cuda = torch.device(device).type == "cuda"
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not a device PyTorch knows: use 'cpu', 'cuda', 'cuda:1', ... "
                          f"or 'auto'") from None
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but PyTorch sees no CUDA GPU here (torch {torch.__version__}); "
                          f"use --device=cpu, or device='auto' to take a GPU when there is one")
    if cuda and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s), "
                          f"numbered from 0")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
    try:
        check_output_layer(cfg.output_layer, cuda)
        if cfg.fp8:
            check_fp8(device)
            if OPTIMIZERS[cfg.optimizer_name].refresh == "hutchinson":
                raise ValueError("fp8=True cannot run Sophia-H's refresh: float8 matmuls have no double backward")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = resolve_batches(dataclasses.replace(cfg, device=device, backend=backend,
                                              compile=cuda if cfg.compile is None else cfg.compile), world_size)
    if "RANK" not in os.environ:  # a single process
        return cfg, Dist(device=device)
    if cuda:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=cfg.dist_timeout)
    if not torch_dist.is_initialized():  # bench.py sets up one Trainer per row in the same processes
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    control = torch_dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return cfg, Dist(rank, world_size, device, control)


def resolve_batches(cfg, world_size):
    """The config with hess_total_bs (0 = total_bs) and the accumulation steps of the training and the
    Hessian batches written in, for `world_size` processes."""
    hess_total_bs = cfg.hess_total_bs or cfg.total_bs
    if cfg.gnb_batch == "train" and hess_total_bs > cfg.total_bs:
        raise ConfigError(f"gnb_batch='train' takes the refresh batch from the iteration's batch: "
                          f"hess_total_bs={hess_total_bs} must be <= total_bs={cfg.total_bs}")
    steps = accumulation_steps(cfg.total_bs, cfg.batch_size, world_size)
    if cfg.gradient_accumulation_steps not in (0, steps):  # e.g. an official config, made for 10 GPUs
        note(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is replaced by {steps}: the "
             f"accumulation here is total_bs / (batch_size * processes) = {cfg.total_bs} / ({cfg.batch_size} * "
             f"{world_size})")
    return dataclasses.replace(cfg, hess_total_bs=hess_total_bs, gradient_accumulation_steps=steps,
                               hess_accumulation_steps=accumulation_steps(hess_total_bs, cfg.batch_size, world_size,
                                                                          key="hess_total_bs"))


def accumulation_steps(global_seqs, batch_size, world_size, key="total_bs"):
    """Micro-steps per process that make a global batch of `global_seqs` sequences."""
    per_step = batch_size * world_size
    if global_seqs % per_step:
        raise ConfigError(f"{key}={global_seqs} is not a multiple of batch_size * processes = "
                          f"{batch_size} * {world_size}; change batch_size or {key}")
    return global_seqs // per_step


def generator(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def keep_freed_memory():
    """For CPU runs on glibc (Linux): keep freed memory in the process instead of returning it to the OS.
    PyTorch takes CPU tensors straight from malloc, and glibc maps each block above its mmap threshold
    (32 MB at most) afresh and unmaps it when freed, so every iteration's logits (hundreds of MB in the CPU
    demo) page-faulted in again: the demo spent as long in the kernel as computing (20M page faults in 30
    iterations, measured). With mmap off and the heap never trimmed, the faults (and the system time) go,
    the losses stay bit-identical, and memory stays at its peak. Elsewhere this does nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # macOS, musl: another allocator
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def compile_seconds():
    """Seconds torch.compile has spent compiling in this process so far: frames, and the backward graphs
    it compiles lazily at their first use (0 where this torch does not count them)."""
    spent = getattr(torch._dynamo.utils, "cumulative_time_spent_ns", {})
    return (spent.get("entire_frame_compile", 0) + spent.get("entire_backward_compile", 0)) / 1e9


class Stopwatch:
    """Training time: wall-clock seconds, less the time torch.compile spent compiling meanwhile (so the
    first iterations, and the first refresh, are charged only for running). With several processes, less
    the longest any of them compiled: ranks finish compiling at different times, and the quicker ones wait
    for the slowest at their next collective (measured on 2 H200s: rank 0 waited 1.3 s in the iteration
    after the first refresh, rank 1's compilation of the Hessian update being that much longer). A lap is
    a collective then, on `group`; every rank must take it at the same point of the loop."""

    def __init__(self, world_size=1, group=None):
        self.world_size, self.group = world_size, group
        self.restart()

    def restart(self):
        self.start, self.compiled_at_start = time.perf_counter(), compile_seconds()

    def lap(self):
        """Seconds since the last (re)start, compilation excluded; restarts."""
        compiled = compile_seconds() - self.compiled_at_start
        if self.world_size > 1:  # also where a quicker rank waits (before its clock is read)
            longest = torch.tensor([compiled], dtype=torch.float64)
            torch_dist.all_reduce(longest, op=torch_dist.ReduceOp.MAX, group=self.group)
            compiled = longest.item()
        seconds = time.perf_counter() - self.start - compiled
        self.restart()
        return seconds


# ----------------------------------------------------------------------------- data

REPO = os.path.dirname(os.path.abspath(__file__))


def dataset_dir(name):
    """data/<name> under the working directory if it is there, else under the repository (as a path
    relative to the working directory): a run started from another folder finds the prepared data, and
    a missing dataset's error names the repository's folder and the script that makes it."""
    here = os.path.join("data", name)
    return here if os.path.isdir(here) else os.path.relpath(os.path.join(REPO, "data", name))


class Batches:
    """Windows of `block_size + 1` tokens from a token file.

    Training batches walk through the file's disjoint windows in a shuffled order, one epoch after
    another (a permutation seeded by (seed, epoch)), so no window repeats before the whole file has been
    seen; `position` counts the windows used, and is all a checkpoint needs to continue exactly. Each
    global batch is the next `global_seqs` windows and each rank takes its slice, so the data does not
    depend on the number of processes. Evaluation uses random windows (from a generator it passes in), or
    all of them in order.
    """

    def __init__(self, data_dir, split, cfg, dist, vocab_size):
        self.path, self.vocab_size = os.path.join(data_dir, f"{split}.bin"), vocab_size
        tokens = open_split(data_dir, split, vocab_size)  # checks the file and its meta.json
        self.n_tokens = len(tokens)
        if read_meta(data_dir) is None and dist.is_master:  # no meta.json to vouch for the ids: look at them all
            check_all_tokens(tokens, vocab_size, self.path)
        if self.n_tokens <= cfg.block_size:
            raise DatasetError(f"{self.path} has {self.n_tokens} tokens, fewer than block_size + 1 = "
                               f"{cfg.block_size + 1}")
        self.block_size, self.batch_size, self.dist, self.seed = cfg.block_size, cfg.batch_size, dist, cfg.seed
        self.n_windows = (self.n_tokens - 1) // self.block_size
        self.position = 0
        self._order = (None, None)  # (epoch, permutation)

    def epoch_order(self, epoch):
        """The shuffled order of the windows in an epoch (cached: one epoch at a time is in use)."""
        if self._order[0] != epoch:
            self._order = (epoch, torch.randperm(self.n_windows, generator=generator(hash((self.seed, epoch)))))
        return self._order[1]

    def window_starts(self, n):
        """Start offsets of the next n training windows."""
        starts = []
        while len(starts) < n:
            epoch, i = divmod(self.position, self.n_windows)
            take = min(n - len(starts), self.n_windows - i)
            starts += (self.epoch_order(epoch)[i:i + take] * self.block_size).tolist()
            self.position += take
        return starts

    def all_window_starts(self):
        """Start offsets of every disjoint window of the file, in order."""
        return list(range(0, self.n_windows * self.block_size, self.block_size))

    def random_starts(self, n, generator):
        return torch.randint(self.n_tokens - self.block_size, (n,), generator=generator).tolist()

    def windows(self, starts):
        """Inputs and targets (each (len(starts), block_size)) on this process's device."""
        data = np.memmap(self.path, dtype=np.uint16, mode="r")  # a fresh memmap per batch: no memory leak (nanoGPT)
        tokens = np.stack([data[s:s + self.block_size + 1] for s in starts])
        check_tokens(tokens, self.vocab_size, self.path)
        tokens = torch.from_numpy(tokens.astype(np.int64))
        if torch.device(self.dist.device).type == "cuda":
            tokens = tokens.pin_memory().to(self.dist.device, non_blocking=True)  # async copy
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def next_batch(self, global_seqs):
        """This rank's micro-batches [(X, Y), ...] of the next global batch of `global_seqs` sequences."""
        per_rank = global_seqs // self.dist.world_size
        mine = self.window_starts(global_seqs)[self.dist.rank * per_rank:(self.dist.rank + 1) * per_rank]
        X, Y = self.windows(mine)
        return list(zip(X.split(self.batch_size), Y.split(self.batch_size)))


# ----------------------------------------------------------------------------- optimization

def get_lr(it, cfg):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, as the official code."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * it / cfg.warmup_iters
    if it > cfg.lr_decay_iters:
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


# ----------------------------------------------------------------------------- the run

class Trainer:
    """One run's state (model, optimizer, data, counters) and its steps. `train_iteration()` is the whole
    training step, Hessian refresh included; main() and bench.py both call it."""

    def __init__(self, cfg, dist):
        self.cfg, self.dist = cfg, dist
        self.device_type = torch.device(dist.device).type
        torch.manual_seed(cfg.seed + dist.rank)  # dropout differs across ranks; data does not (see Batches)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.dtype]
        self.ctx = torch.autocast(self.device_type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        # fp16's small range: losses are scaled for their backward, gradients unscaled before anything uses
        # them, and a step whose gradient overflowed is skipped (the official code's GradScaler)
        self.scaler = torch.amp.GradScaler(self.device_type) if dtype == torch.float16 else None

        self.tokens_per_iter = cfg.total_bs * cfg.block_size

        self.model = GPT(GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                   n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                                   scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx))
        self.model.to(dist.device)
        if cfg.fp8:
            convert_to_float8(self.model)
        data_dir = dataset_dir(cfg.dataset)
        vocab = self.model.config.vocab_size
        self.train_data = Batches(data_dir, "train", cfg, dist, vocab)
        self.val_data = Batches(data_dir, "val", cfg, dist, vocab)

        self.spec = OPTIMIZERS[cfg.optimizer_name]
        self.optimizer = self.spec.build(self.model.optim_groups(cfg.weight_decay), cfg, self.device_type == "cuda")
        self.refresh = getattr(self, f"refresh_{self.spec.refresh}") if self.spec.refresh else None
        self.step_kwargs = self.spec.step_kwargs(cfg)

        self.iter_num, self.best_val_loss, self.train_time = 0, float("inf"), 0.0
        self.gnb_gradient = None  # gnb_batch='train': g_hat between the iteration's backward and the refresh
        self.clip_count = torch.zeros((), device=dist.device)
        # since the last log line (checkpointed, so a resumed run logs what the uninterrupted one would)
        self.loss_sum = torch.zeros((), device=dist.device)
        self.grad_norm_sum = torch.zeros((), device=dist.device)
        self.iters_since_log, self.time_at_log = 0, 0.0
        self.update_rms = None  # of the last iteration before a log line (see train_iteration)
        self.wandb_run_id = None
        if cfg.init_from == "resume":
            self.load_state(load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt")))
        elif cfg.init_from.endswith(".pt"):
            self.load_weights(cfg.init_from)

        compiled = (lambda f: torch.compile(f, mode=cfg.compile_mode)) if cfg.compile else (lambda f: f)
        self.gnb_from_train_batch = self.spec.refresh == "gnb" and cfg.gnb_batch == "train"
        # that refresh backpropagates twice through a forward pass (retain_graph), which the compiled
        # backward's donated buffers (saved activations reused as scratch space) do not allow
        self.compile_settings = nullcontext()
        if self.gnb_from_train_batch:
            self.compile_settings = torch._functorch.config.patch(donated_buffer=False)
        self.compiled = compiled(self.model)
        # Sophia-G's refresh: forward to the output layer, then the cross-entropy against labels sampled there
        self.refresh_forward = lambda X: self.compiled(X)[0]
        self.sampled_cross_entropy = compiled(sampled_cross_entropy)
        fused_loss = OUTPUT_LAYERS[cfg.output_layer][0] if cfg.output_layer != "torch" else None
        if fused_loss:  # the logits never exist: hidden states, and labels sampled a block of rows at a time
            self.model.fused_loss = fused_loss
            self.refresh_forward = compiled(self.model.hidden_states)
            self.sampled_cross_entropy = compiled(self.sampled_linear_cross_entropy)
        self.ddp_model = self.compiled
        if dist.world_size > 1:
            self.ddp_model = DDP(self.compiled, device_ids=[dist.device] if self.device_type == "cuda" else None)

    # --- the training step

    def set_lr(self):
        lr = get_lr(self.iter_num, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def clip_gradients(self):
        """Clip the gradient's global norm at grad_clip (if set); returns the norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.grad_clip, norm)
        return norm

    def train_iteration(self):
        """One optimizer step on the next global batch, then the Hessian refresh when it is due.
        Returns the batch's mean loss as a device tensor. The iteration before each log line also
        measures the RMS of the change it makes to the parameters (update_rms)."""
        self.set_lr()
        refresh_due = self.refresh and (self.iter_num + 1) % self.cfg.hess_interval == 0
        loss_fn = data_loss
        if refresh_due and self.gnb_from_train_batch:
            loss_fn = self.data_loss_and_gnb_gradient()
        with self.compile_settings:
            loss = accumulate_gradients(self.ddp_model, self.train_data.next_batch(self.cfg.total_bs), loss_fn,
                                        self.ctx, self.cfg.grad_accumulation, self.scaler)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip_gradients()
        self.grad_norm_sum += grad_norm
        if self.cfg.grad_clip:
            self.clip_count += grad_norm > self.cfg.grad_clip
        with torch.no_grad():
            params = list(self.model.parameters())
            logged_next = (self.iter_num + 1) % self.cfg.log_interval == 0
            before = [p.clone() for p in params] if logged_next else None
            if self.scaler:
                self.scaler.step(self.optimizer, **self.step_kwargs)  # skipped if the gradient overflowed
                self.scaler.update()
            else:
                self.optimizer.step(**self.step_kwargs)
            if logged_next:
                torch._foreach_sub_(before, params)  # minus the change: one buffer, not two
                self.update_rms = rms(before)
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        self.loss_sum += loss
        self.iters_since_log += 1
        if refresh_due:
            self.refresh()
        return loss

    def refresh_gnb(self):
        """Sophia-G (sophia.gnb_refresh): g_hat from the mean loss against sampled labels over hess_total_bs
        sequences, averaged over ranks and clipped like a gradient. As the official code, the batch is a
        fresh one (gnb_batch='fresh'): an extra forward and backward pass, by the plain model (the refresh
        averages over ranks itself). With gnb_batch='train', g_hat was already computed from the
        iteration's own forward pass (data_loss_and_gnb_gradient): one extra backward pass. Labels are
        seeded by (seed, iteration, micro-batch index): the same for any number of processes, and on resume."""
        params = list(self.model.parameters())
        if self.gnb_from_train_batch:
            for p, g in zip(params, self.gnb_gradient):
                p.grad = g
            self.gnb_gradient = None
            fold_in_estimate(self.optimizer, params, max_norm=self.cfg.grad_clip, loss_scale=self.loss_scale())
        else:
            inputs = [X for X, _ in self.train_data.next_batch(self.cfg.hess_total_bs)]
            gnb_refresh(self.optimizer, self.refresh_outputs, inputs, params=params, max_norm=self.cfg.grad_clip,
                        seed=(self.cfg.seed, self.iter_num), loss_fn=self.sampled_cross_entropy,
                        loss_scale=self.loss_scale())

    def loss_scale(self):
        """What the refreshes multiply their loss by before its backward: the GradScaler's scale under fp16."""
        return self.scaler.get_scale() if self.scaler else None

    def sampled_linear_cross_entropy(self, hidden):
        """With a fused output layer, the output layer runs in the loss: under autocast, as the training step's."""
        with self.ctx:
            return sampled_linear_cross_entropy(hidden, self.model.lm_head.weight, self.model.fused_loss)

    def refresh_outputs(self, X):
        """What the fresh GNB refresh samples from: the logits, or the hidden states for a fused output layer."""
        with self.ctx:
            return self.refresh_forward(X)

    def data_loss_and_gnb_gradient(self):
        """A loss_fn for accumulate_gradients that, on the first micro-batches (hess_total_bs sequences
        over all ranks), also backpropagates the cross-entropy against labels sampled from the same
        forward pass's logits (sophia.sampled_gradient) into self.gnb_gradient, for refresh_gnb after this
        iteration's step. Seeded as the fresh refresh's labels, by the refreshing iteration's number."""
        params = list(self.model.parameters())
        n_micro = self.cfg.hess_accumulation_steps
        self.gnb_gradient = [torch.zeros_like(p) for p in params]
        index = iter(range(n_micro))
        scale = (self.loss_scale() or 1) / n_micro  # once: under fp16 the loss scale is a host sync

        def loss_fn(model, X, Y):
            outputs, loss = model(X, Y)  # logits, or hidden states for a fused output layer
            i = next(index, None)
            if i is not None:
                seed = micro_batch_seed((self.cfg.seed, self.iter_num + 1), self.dist.rank * n_micro + i)
                torch._foreach_add_(self.gnb_gradient, sampled_gradient(
                    outputs, params, scale=scale, seed=seed, loss_fn=self.sampled_cross_entropy))
            return loss

        return loss_fn

    def refresh_hutchinson(self):
        """Sophia-H (sophia.hutchinson_refresh): u * (H u) for the Hessian of the mean loss over a fresh
        batch, with one Rademacher u seeded by (seed, iteration), so the same on every rank. Runs on the plain
        model made twice differentiable: double backward needs neither compile nor DDP nor fused kernels."""
        def loss_fn(batch):
            with self.ctx:
                return data_loss(self.model, *batch)

        with self.model.twice_differentiable():
            hutchinson_refresh(self.optimizer, loss_fn, self.train_data.next_batch(self.cfg.hess_total_bs),
                               params=list(self.model.parameters()), loss_scale=self.loss_scale(),
                               generator=generator(hash((self.cfg.seed, self.iter_num)), self.dist.device))

    # --- evaluation

    @torch.no_grad()
    def evaluate(self, stopping=lambda: False):
        """Mean loss of each split: over eval_iters random batches (the same at every evaluation: a generator
        seeded alike each time), or for the val split with val_eval='full' over all of it (full_split_loss).
        Batches are shared out among ranks. `stopping()` is asked before each round of batches (one per rank,
        so every rank asks as often); once it says yes, the evaluation is abandoned and None returned: a stop
        never waits for it."""
        self.compiled.eval()
        try:
            losses = {}
            for split, data in (("train", self.train_data), ("val", self.val_data)):
                if split == "val" and self.cfg.val_eval == "full":
                    losses[split] = self.full_split_loss(data, stopping)
                else:
                    losses[split] = self.sampled_loss(data, stopping)
                if losses[split] is None:
                    return None
            return losses
        finally:
            self.compiled.train()

    def sampled_loss(self, data, stopping):
        """Mean loss over eval_iters random batches of `data`, all-reduced over ranks."""
        rank, world_size, eval_iters = self.dist.rank, self.dist.world_size, self.cfg.eval_iters
        starts = data.random_starts(eval_iters * self.cfg.batch_size, generator(self.cfg.seed + 1))
        total = torch.zeros((), device=self.dist.device)
        for k in range(rank, math.ceil(eval_iters / world_size) * world_size, world_size):
            if stopping():
                return None
            if k < eval_iters:
                batch = starts[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
                with self.ctx:
                    total += data_loss(self.compiled, *data.windows(batch)).float()
        if world_size > 1:
            torch_dist.all_reduce(total)
        return total.item() / eval_iters

    def full_split_loss(self, data, stopping):
        """Mean loss per token over every complete window of `data`, in order, in batches of batch_size (the
        last one padded with ignored targets, so every batch has one shape). Batch k is rank k % world_size's,
        and the batches' loss sums are added on the host in batch order: the same number for any number of
        processes."""
        rank, world_size, size = self.dist.rank, self.dist.world_size, self.cfg.batch_size
        starts = data.all_window_starts()
        n_batches = math.ceil(len(starts) / size)
        sums = torch.zeros(n_batches, dtype=torch.float64, device=self.dist.device)
        for k in range(rank, math.ceil(n_batches / world_size) * world_size, world_size):
            if stopping():
                return None
            if k < n_batches:
                X, Y = data.windows(starts[k * size:(k + 1) * size])
                n = len(X)
                if n < size:
                    X = torch.cat([X, X[:1].expand(size - n, -1)])
                    Y = torch.cat([Y, torch.full_like(Y[:1], -1).expand(size - n, -1)])
                with self.ctx:
                    sums[k] = data_loss(self.compiled, X, Y).double() * Y[:n].numel()
        if world_size > 1:
            torch_dist.all_reduce(sums)  # each entry is one rank's, the others add zeros: exact
        return math.fsum(sums.tolist()) / (len(starts) * data.block_size)

    # --- checkpoints

    def state_dict(self):
        """Everything needed to continue exactly (a collective under DDP: every rank must call it)."""
        rng = [rng_state(self.dist.device)]
        if self.dist.world_size > 1:
            rng = [None] * self.dist.world_size
            torch_dist.all_gather_object(rng, rng_state(self.dist.device))
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "model_args": dataclasses.asdict(self.model.config),
            "config": dataclasses.asdict(self.cfg),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "train_time": self.train_time,
            "clip_count": self.clip_count.item(),
            "rng": rng,
            "data_position": self.train_data.position,
            "wandb_run_id": self.wandb_run_id,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
            "since_log": {"iters": self.iters_since_log, "time": self.time_at_log,
                          "loss_sum": self.global_mean(self.loss_sum), "grad_norm_sum": self.grad_norm_sum.item()},
        }

    def load_state(self, ckpt):
        """Continue from a checkpoint; a different model shape or optimizer is a one-line error."""
        try:
            ours = dataclasses.asdict(self.model.config)
            for key, value in ckpt["model_args"].items():
                if ours.get(key) != value:
                    raise CheckpointError(f"the checkpoint's model has {key}={value!r}, the config {ours.get(key)!r}; "
                                          f"use the checkpoint's settings or another out_dir")
            theirs = ckpt["config"]["optimizer_name"]
            if theirs != self.cfg.optimizer_name:
                raise CheckpointError(f"the checkpoint was trained with optimizer_name={theirs!r}, the config "
                                      f"asks for {self.cfg.optimizer_name!r}")
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
            self.train_time, self.wandb_run_id = ckpt["train_time"], ckpt["wandb_run_id"]
            self.clip_count.fill_(ckpt["clip_count"])
            self.train_data.position = ckpt["data_position"]
            if self.scaler and ckpt.get("grad_scaler"):
                self.scaler.load_state_dict(ckpt["grad_scaler"])
            since = ckpt.get("since_log", {"iters": 0, "time": self.train_time, "loss_sum": 0.0, "grad_norm_sum": 0.0})
            self.iters_since_log, self.time_at_log = since["iters"], since["time"]
            self.loss_sum.fill_(since["loss_sum"])
            self.grad_norm_sum.fill_(since["grad_norm_sum"])
            if len(ckpt["rng"]) == self.dist.world_size:  # else a new number of processes: fresh streams
                set_rng_state(ckpt["rng"][self.dist.rank], self.dist.device)
        except (KeyError, RuntimeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            reason = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint in {self.cfg.out_dir} does not fit this run: {reason}") from None

    def load_weights(self, path):
        """Fine-tuning: start from the weights of a checkpoint (ours or the official code's) whose model is
        this config's, dropout aside."""
        if not os.path.exists(path):
            raise CheckpointError(f"init_from={path!r}: no such checkpoint")
        loaded = model_from_checkpoint(load_checkpoint(path))
        theirs, ours = dataclasses.asdict(loaded.config), dataclasses.asdict(self.model.config)
        for key, value in ours.items():
            if key != "dropout" and theirs[key] != value:
                raise CheckpointError(f"the checkpoint {path} has a model with {key}={theirs[key]!r}, the config "
                                      f"{value!r}: set --{key}={theirs[key]!r}")
        self.model.load_state_dict(loaded.state_dict())

    def save(self):
        state = self.state_dict()
        if self.dist.is_master:
            path = os.path.join(self.cfg.out_dir, "ckpt.pt")
            save_checkpoint(state, path)
            print(f"saved {path} at iteration {self.iter_num}", flush=True)

    # --- logging

    def global_mean(self, value):
        """The mean of a device scalar over ranks, as a float (a host sync)."""
        if self.dist.world_size > 1:
            value = value.clone()
            torch_dist.all_reduce(value)
            value /= self.dist.world_size
        return value.item()

    def log_record(self):
        """The record logged every log_interval iterations (the loop's one regular host sync): `train/loss`
        and `grad_norm` are means over the iterations since the last record; starts the next interval."""
        n, dt = self.iters_since_log, self.train_time - self.time_at_log
        record = {
            "iter": self.iter_num,
            "tokens": self.iter_num * self.tokens_per_iter,
            "time": self.train_time,
            "train/loss": self.global_mean(self.loss_sum / n),
            "lr": self.optimizer.param_groups[0]["lr"],
            "ms_per_iter": 1000 * dt / n,
            "tokens_per_s": self.tokens_per_iter * n / dt,
            "train/clip_rate": self.clip_count.item() / self.iter_num,
            "grad_norm": self.grad_norm_sum.item() / n,
            "param_norm": l2_norm(list(self.model.parameters())).item(),
        }
        if self.device_type == "cuda":  # peak_flops is a GPU's
            record["mfu"] = self.model.estimate_mfu(self.tokens_per_iter / self.dist.world_size * n, dt,
                                                    self.cfg.peak_flops)
        if self.update_rms is not None:
            record["update_rms"] = self.update_rms.item()
        if self.spec.diagnostics:
            diagnostics = self.optimizer.diagnostics(**self.step_kwargs, param_sets=self.model.param_sets())
            record.update({k: v.item() for k, v in diagnostics.items()})
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.iters_since_log, self.time_at_log = 0, self.train_time
        return record


class StopRequest:
    """SIGTERM or SIGINT asks the run to stop: every rank finishes its current iteration (or abandons an
    evaluation), they agree, rank 0 saves one checkpoint, and each process exits 0 (clusters send
    SIGTERM before pre-emption). A second signal ends the process at once.

    Under torchrun, signal the launcher: it forwards the signal once to every worker and SIGKILLs those
    still running 30 s later. Its own exit status varies (0 or 1, seen with torch 2.11 and 2.13), so judge a
    stopped run by its checkpoint, not by torchrun's exit status."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, signal.SIG_DFL)

    def agreed(self, dist):
        """True on every rank once any rank was signalled (all ranks must stop at the same iteration)."""
        if dist.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=dist.control_group)
        return bool(flag.item())


# ----------------------------------------------------------------------------- the run

def usage():
    return (__doc__.strip() + "\n\nConfig keys and their defaults (set them in a config file or as "
            "--key=value):\n" + describe_keys())


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def start(argv):
    """The run's config, processes and Trainer, with out_dir claimed by rank 0. A problem is a one-line
    error, after which nothing that this start created remains."""
    out_dir = None
    try:
        cfg = load_config(argv)
        cfg, dist = init_distributed(cfg)
        if dist.is_master:
            check_wandb(cfg)
            out_dir = OutDir(cfg.out_dir)
            moved_to = out_dir.claim(cfg.init_from, cfg.overwrite)
            if moved_to:
                print(f"overwrite=True: moved the run that was in {cfg.out_dir} to {moved_to}")
        if dist.device == "cpu":
            keep_freed_memory()
        return cfg, dist, Trainer(cfg, dist), out_dir
    except (ConfigError, DatasetError, CheckpointError, OutDirError, MetricsError) as e:
        if out_dir:
            out_dir.abandon()
        fail(e)


def run(cfg, dist, trainer):
    """Train to max_iters (or until a stop is requested), evaluating, logging and checkpointing."""
    stop = StopRequest()
    log = None

    def say(*text):  # rank 0 speaks for the run; flushed, for logs that a scheduler writes to files
        if dist.is_master:
            print(*text, flush=True)

    if dist.is_master:
        say("config:", dataclasses.asdict(cfg))
        say(f"model: {trainer.model.num_params() / 1e6:.2f}M parameters; {cfg.gradient_accumulation_steps} micro-steps of "
            f"{cfg.batch_size} x {cfg.block_size} tokens on each of {dist.world_size} process(es); "
            f"{trainer.tokens_per_iter:,} tokens per iteration")
        if cfg.init_from == "resume":
            say(f"resuming {cfg.out_dir}/ckpt.pt at iteration {trainer.iter_num} of {cfg.max_iters}")
        if trainer.device_type == "cpu":
            warn_if_too_big_for_the_cpu(trainer.model, trainer.tokens_per_iter / dist.world_size, cfg.batch_size)
        log = MetricsLog(cfg, resume_iter=trainer.iter_num if cfg.init_from == "resume" else None,
                         wandb_run_id=trainer.wandb_run_id)
        trainer.wandb_run_id = log.wandb_run_id

    def check_finite(value, what):
        if not math.isfinite(value):
            fail(f"{what} is {value} at iteration {trainer.iter_num}; stopping without saving. The last good "
                 f"checkpoint is {os.path.join(cfg.out_dir, 'ckpt.pt')} (if any): resume from it with a "
                 f"lower learning_rate or stronger grad_clip")

    def stopping():
        return stop.agreed(dist)

    clock, eta = Stopwatch(dist.world_size, dist.control_group), Eta(cfg.max_iters)
    saved_at = trainer.iter_num if cfg.init_from == "resume" else None
    losses, stopped = None, False
    while True:
        it = trainer.iter_num
        if it % cfg.eval_interval == 0 or it == cfg.max_iters or cfg.eval_only:
            synchronize(dist.device)
            trainer.train_time += clock.lap()
            val = "all of val" if cfg.val_eval == "full" else f"{cfg.eval_iters} of val"
            say(f"iter {it}: evaluating ({cfg.eval_iters} batches of train, {val})")
            started = time.perf_counter()
            losses = trainer.evaluate(stopping)
            if losses is None:
                stopped = True
                break
            check_finite(losses["val"], "the validation loss")
            if log:
                say(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                    f"({duration(time.perf_counter() - started)})")
                log.write({"iter": it, "tokens": it * trainer.tokens_per_iter, "time": trainer.train_time,
                           "val/loss": losses["val"], "eval/train_loss": losses["train"]})
            improved = losses["val"] < trainer.best_val_loss
            trainer.best_val_loss = min(trainer.best_val_loss, losses["val"])
            due = cfg.checkpoint_interval == 0 or it % cfg.checkpoint_interval == 0
            if it > 0 and saved_at != it and due and (improved or cfg.always_save_checkpoint) and not cfg.eval_only:
                trainer.save()
                saved_at = it
            clock.restart()
        if it >= cfg.max_iters or cfg.eval_only:
            break

        trainer.train_iteration()
        if trainer.iter_num % cfg.log_interval == 0:
            trainer.train_time += clock.lap()
            record = trainer.log_record()
            check_finite(record["train/loss"], "the training loss")
            if log:
                log.write(record)
                mfu = f"{100 * record['mfu']:.1f}%" if "mfu" in record else "n/a"
                say(f"iter {record['iter']}/{cfg.max_iters}: loss {record['train/loss']:.4f}, lr {record['lr']:.2e}, "
                    f"{record['ms_per_iter']:.1f} ms/iter, {record['tokens_per_s']:,.0f} tokens/s, mfu {mfu}, "
                    f"eta {eta(trainer.iter_num, record['ms_per_iter'] / 1000)}")
        if stopping():
            check_finite(trainer.global_mean(trainer.loss_sum), "the training loss")
            stopped = True
            break

    if stopped:
        if dist.world_size > 1:  # every rank says where it stopped: they must agree
            print(f"rank {dist.rank}: stopping at iteration {trainer.iter_num}", flush=True)
        say(f"stop requested: saving a checkpoint at iteration {trainer.iter_num} and exiting")
    if saved_at != trainer.iter_num and not cfg.eval_only:
        synchronize(dist.device)
        trainer.train_time += clock.lap()
        trainer.save()
    if log:
        log.close()
    if stopped:
        say("stopped: continue with the same command and --init_from=resume")
    elif not cfg.eval_only:
        say(f"finished {cfg.max_iters} iterations: val loss {losses['val']:.4f} (best {trainer.best_val_loss:.4f}); "
            f"{cfg.out_dir}/ckpt.pt, {cfg.out_dir}/metrics.jsonl")


def lost_the_others(error, cfg, dist, trainer):
    """A process of a multi-process run failed (or one died and the others' collectives failed or timed
    out after dist_timeout seconds): say so in one line after the traceback, and exit at once, since the
    collectives in flight would block an orderly shutdown."""
    traceback.print_exc()
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"error: rank {dist.rank} of {dist.world_size} stopped in iteration {trainer.iter_num + 1}: {reason[:300]}. "
          f"When one process dies the others fail like this within dist_timeout={cfg.dist_timeout:g} s: look for the "
          f"first error in all ranks' logs. {os.path.join(cfg.out_dir, 'ckpt.pt')} holds the last completed "
          f"checkpoint (if any); continue with the same command and --init_from=resume", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def main(argv=None, then=None):
    """train.py's command line. `then(trainer, dist)`, if given, runs on every process after the run and
    before the processes disband (scripts/rank_agreement.py checks the ranks' states with it)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    cfg, dist, trainer, out_dir = start(argv)
    try:
        run(cfg, dist, trainer)
    except DatasetError as e:  # a bad token id in a file whose meta.json vouched for it: found mid-run
        fail(e)
    except RuntimeError as e:
        if dist.world_size == 1:
            raise
        lost_the_others(e, cfg, dist, trainer)
    finally:
        if out_dir:
            out_dir.release()
    if then:
        then(trainer, dist)
    if dist.world_size > 1:
        torch_dist.barrier()  # let rank 0 finish writing before any process group goes away
        del trainer  # DDP holds the process group; free it (the Trainer is in a reference cycle) before
        gc.collect()  # destroying the group, or gloo can abort at interpreter exit
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
