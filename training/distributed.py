"""
Processes and devices: this process's place in a run (rank, world size, device), the settings that depend on
them (device, backend, compile, micro-steps), and the few collectives the loop itself takes: a mean over
ranks, and the agreement to stop.
"""

import dataclasses
import os
import signal
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from training.config import ConfigError, note
from training.kernels import check_fp8, check_output_layer


@dataclass
class Dist:
    """This process's place in the run: rank, world size, its device ('cuda:N' under torchrun), and a gloo
    group for small host-side agreements (whether to stop) that must not wait on the GPU."""
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    control_group: object = None

    @property
    def is_master(self):
        return self.rank == 0

    @property
    def device_type(self):
        return torch.device(self.device).type


def init_distributed(cfg):
    """A Dist for this process, and the config with everything derived from it resolved (device type, backend,
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
    kind = torch.device(device).type
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={cfg.device!r} but PyTorch has no Apple GPU (MPS) here; use --device=cpu, or "
                          f"device='auto' to take a GPU when there is one")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={cfg.device!r}: this project runs on 'cpu', 'cuda' or 'mps'")
    if cuda and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s), "
                          f"numbered from 0")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
    try:
        check_output_layer(cfg.output_layer, cuda)
        if cfg.fp8:
            check_fp8(device)
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
    if not torch_dist.is_initialized():  # bench.py sets up one run per row in the same processes
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


def agree(value, dist):
    """Rank 0's value on every rank (a collective on the control group)."""
    if dist.world_size > 1:
        box = [value]
        torch_dist.broadcast_object_list(box, src=0, group=dist.control_group)
        value = box[0]
    return value


def generator(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def global_mean(value, dist):
    """The mean of a device scalar over ranks, as a float (a host sync)."""
    if dist.world_size > 1:
        value = value.clone()
        torch_dist.all_reduce(value)
        value /= dist.world_size
    return value.item()


class StopRequest:
    """SIGTERM or SIGINT asks the run to stop: every rank finishes its current iteration (or abandons an
    evaluation), they agree, rank 0 saves one checkpoint, and each process exits 0 (clusters send SIGTERM
    before pre-emption); during the start, the start is undone instead. A second signal ends the process at
    once, with one line (a checkpoint being written then is left unfinished, and the next start removes it).

    Under torchrun, signal the launcher: it forwards the signal once to every worker and SIGKILLs those still
    running 30 s later. Its own exit status varies, so judge a stopped run by its checkpoint."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._exit_now)

    @staticmethod
    def _exit_now(signum, frame):
        os.write(2, f"{signal.Signals(signum).name} again: exiting at once\n".encode())
        os._exit(128 + signum)

    def agreed(self, dist):
        """True on every rank once any rank was signalled (all ranks must stop at the same iteration)."""
        if dist.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=dist.control_group)
        return bool(flag.item())
