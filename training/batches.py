"""Token windows and batches: the training batches of a run (the same for any number of processes, continued
exactly on resume) and the windows an evaluation reads."""

import os

import numpy as np
import torch

from data.tokens import DatasetError, open_split, verify_tokens
from training.distributed import generator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    def __init__(self, data_dir, split, cfg, dist, n_vocab):
        """`n_vocab`: the tokenizer's vocabulary; rank 0 checks every id of the file against it, once per file."""
        self.path = os.path.join(data_dir, f"{split}.bin")
        self.n_tokens = len(open_split(data_dir, split, n_vocab))  # checks the file and its meta.json
        if dist.is_master:
            verify_tokens(self.path, n_vocab)
        if self.n_tokens <= cfg.block_size:
            raise DatasetError(f"{self.path} has {self.n_tokens} tokens, fewer than block_size + 1 = "
                               f"{cfg.block_size + 1}")
        self.block_size, self.dist, self.seed = cfg.block_size, dist, cfg.seed
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
        tokens = torch.from_numpy(tokens.astype(np.int64))
        if torch.device(self.dist.device).type == "cuda":
            tokens = tokens.pin_memory().to(self.dist.device, non_blocking=True)  # async copy
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def next_batch(self, global_seqs, micro_steps):
        """This rank's `micro_steps` micro-batches [(X, Y), ...] of the next global batch of `global_seqs`
        sequences (the config's resolved total_bs and gradient_accumulation_steps, or their hess_ twins)."""
        per_rank = global_seqs // self.dist.world_size
        mine = self.window_starts(global_seqs)[self.dist.rank * per_rank:(self.dist.rank + 1) * per_rank]
        X, Y = self.windows(mine)
        return list(zip(X.chunk(micro_steps), Y.chunk(micro_steps)))

    def state_dict(self):
        return {"data_position": self.position}

    def load_state_dict(self, state):
        self.position = state["data_position"]
