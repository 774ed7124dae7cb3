"""Evaluation: the mean loss of each split, over eval_iters random batches (the same ones at every evaluation) or,
for the val split with val_eval='full', over all of it in order; shared out among ranks, abandoned on a stop."""

import math

import torch
import torch.distributed as torch_dist

from training.distributed import generator
from training.step import data_loss


class Evaluator:
    def __init__(self, cfg, dist, network, precision, train_data, val_data):
        self.cfg, self.dist, self.network, self.precision = cfg, dist, network, precision
        self.train_data, self.val_data = train_data, val_data

    @torch.no_grad()
    def __call__(self, stopping=lambda: False):
        """Mean loss of each split: over eval_iters random batches (the same at every evaluation: a generator
        seeded alike each time), or for the val split with val_eval='full' over all of it (full_split_loss).
        Batches are shared out among ranks. `stopping()` is asked before each round of batches (one per rank,
        so every rank asks as often); once it says yes, the evaluation is abandoned and None returned: a stop
        never waits for it."""
        self.network.compiled.eval()
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
            self.network.compiled.train()

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
                with self.precision.ctx:
                    total += data_loss(self.network.compiled, *data.windows(batch)).float()
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
                with self.precision.ctx:
                    sums[k] = data_loss(self.network.compiled, X, Y).double() * Y[:n].numel()
        if world_size > 1:
            torch_dist.all_reduce(sums)  # each entry is one rank's, the others add zeros: exact
        return math.fsum(sums.tolist()) / (len(starts) * data.block_size)
