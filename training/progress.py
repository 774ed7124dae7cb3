"""
What a training run tells the person watching it, beyond its log lines: how long things take (durations,
the time left), and a warning when a config made for GPUs is started on a CPU.
"""

import sys
import time

import torch


def duration(seconds):
    """Seconds as a short human-readable duration: 45s, 3m12s, 2h05m, 3d04h."""
    seconds = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub_size:02d}{sub}"
    return f"{seconds}s"


class Eta:
    """Time left to max_iters at this process's wall-clock pace since its first log line (which leaves out
    start-up and compilation; evaluations and checkpoints are in)."""

    def __init__(self, max_iters):
        self.max_iters, self.origin = max_iters, None

    def __call__(self, it, seconds_per_iter):
        """At the first log line the pace is that line's seconds_per_iter."""
        now = time.perf_counter()
        if self.origin is None:
            self.origin = (it, now)
        else:
            seconds_per_iter = (now - self.origin[1]) / (it - self.origin[0])
        return duration(seconds_per_iter * (self.max_iters - it))


def cpu_flops():
    """This CPU's float32 matmul FLOP/s, measured (~0.1 s; no random numbers drawn: a resumed run's are restored)."""
    a = torch.full((512, 512), 0.5)
    a @ a
    start = time.perf_counter()
    for _ in range(8):
        a @ a
    return 8 * 2 * 512**3 / (time.perf_counter() - start)


def warn_if_too_big_for_the_cpu(model, tokens_per_iter, batch_size):
    """A GPU-sized config started on a CPU says so at once, with what an iteration will cost, rather than
    running silently for minutes at many GB (from 10 s per iteration on). tokens_per_iter: this process's."""
    seconds = model.flops_per_token() * tokens_per_iter / cpu_flops()
    if seconds < 10:
        return
    # weights, gradients and two optimizer states in fp32; a micro-batch's logits, softmax and their gradient
    logits = batch_size * model.config.block_size * model.config.vocab_size
    memory = 16 * model.num_params(non_embedding=False) + 3 * 4 * logits
    print(f"warning: a GPU-sized run on the CPU: {model.num_params() / 1e6:.0f}M parameters, {tokens_per_iter:,.0f} "
          f"tokens per iteration; expect ~{duration(seconds)} per iteration at this CPU's measured speed and over "
          f"{memory / 2**30:.0f} GB of memory. For a CPU run start from config/train_cpu_demo.py",
          file=sys.stderr, flush=True)
