"""
What each metrics record holds: the log window (the iterations since the last record: their mean loss and
gradient norm, the clip count) and training time, which leaves out what torch.compile spends compiling.
"""

import time

import torch
import torch.distributed as torch_dist

from training.distributed import global_mean
from training.step import l2_norm


def compile_seconds():
    """Seconds torch.compile has spent compiling in this process so far: frames, and the backward graphs
    it compiles lazily at their first use (0 where this torch does not count them)."""
    spent = getattr(torch._dynamo.utils, "cumulative_time_spent_ns", {})
    return (spent.get("entire_frame_compile", 0) + spent.get("entire_backward_compile", 0)) / 1e9


class Stopwatch:
    """Training time: wall-clock seconds less the time torch.compile spent compiling meanwhile. With several
    processes, less the longest any of them compiled, since the quicker ones wait for the slowest at their
    next collective; a lap is then a collective on `group`, which every rank takes at the same point."""

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


class LogWindow:
    """The iterations since the last record, kept as device tensors (no host sync until the record) and
    checkpointed, so a resumed run logs what the uninterrupted one would. A record is due every log_interval
    iterations; the step before it also measures its update's RMS."""

    def __init__(self, cfg, dist):
        self.cfg, self.dist = cfg, dist
        self.tokens_per_iter = cfg.total_bs * cfg.block_size
        self.clip_count = torch.zeros((), device=dist.device)  # over the whole run
        self.loss_sum = torch.zeros((), device=dist.device)
        self.grad_norm_sum = torch.zeros((), device=dist.device)
        self.iters, self.time_at_start, self.update_rms = 0, 0.0, None

    def due(self, steps):
        return steps % self.cfg.log_interval == 0

    def add(self, loss, grad_norm, update_rms=None):
        """One iteration's mean loss, gradient norm before clipping and (if measured) update RMS."""
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm
        if self.cfg.grad_clip:
            self.clip_count += grad_norm > self.cfg.grad_clip
        self.iters += 1
        if update_rms is not None:
            self.update_rms = update_rms

    def record(self, steps, train_time, model, optimizer, diagnostics):
        """The record logged after `steps` iterations (the loop's one regular host sync): `train/loss` and
        `grad_norm` are means over the window; starts the next window."""
        n, dt = self.iters, train_time - self.time_at_start
        record = {
            "iter": steps,
            "tokens": steps * self.tokens_per_iter,
            "time": train_time,
            "train/loss": global_mean(self.loss_sum / n, self.dist),
            "lr": optimizer.param_groups[0]["lr"],
            "ms_per_iter": 1000 * dt / n,
            "tokens_per_s": self.tokens_per_iter * n / dt,
            "train/clip_rate": self.clip_count.item() / steps,
            "grad_norm": self.grad_norm_sum.item() / n,
            "param_norm": l2_norm(list(model.parameters())).item(),
        }
        if self.dist.device_type == "cuda":  # peak_flops is a GPU's
            record["mfu"] = model.estimate_mfu(self.tokens_per_iter / self.dist.world_size * n, dt,
                                               self.cfg.peak_flops)
        if self.update_rms is not None:
            record["update_rms"] = self.update_rms.item()
        if diagnostics:
            record.update({k: v.item() for k, v in optimizer.diagnostics(param_sets=model.param_sets()).items()})
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.iters, self.time_at_start = 0, train_time
        return record

    def state_dict(self):
        """A collective under DDP (the loss is averaged over ranks)."""
        return {"clip_count": self.clip_count.item(),
                "since_log": {"iters": self.iters, "time": self.time_at_start,
                              "loss_sum": global_mean(self.loss_sum, self.dist),
                              "grad_norm_sum": self.grad_norm_sum.item()}}

    def load_state_dict(self, state, train_time):
        """A checkpoint from before the window was saved (`since_log`) starts a window at its iteration."""
        self.clip_count.fill_(state["clip_count"])
        since = state.get("since_log", {"iters": 0, "time": train_time, "loss_sum": 0.0, "grad_norm_sum": 0.0})
        self.iters, self.time_at_start = since["iters"], since["time"]
        self.loss_sum.fill_(since["loss_sum"])
        self.grad_norm_sum.fill_(since["grad_norm_sum"])
