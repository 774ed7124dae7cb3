"""
Checkpoints: written atomically, read without running code (weights_only), with one-line errors.
"""

import os
import random
import warnings

import numpy as np
import torch

from data.tokens import atomic_write  # the token files' temp-file-and-rename writer


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state, path):
    """Write `state` to `path` so that a crash or kill mid-write never damages the previous checkpoint
    (a temporary file beside it, fsynced, then renamed over it)."""
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint at `path`, loaded with weights_only=True: tensors and plain Python values only,
    so a checkpoint from elsewhere cannot run code."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path} to resume from; train with init_from='scratch' first")
    try:
        with warnings.catch_warnings():
            # unpickling garbage can warn too (e.g. of an odd pickle protocol); the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same here
        raise CheckpointError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint of this "
                              f"project ({short_reason(e)})") from None


def short_reason(error):
    """The first sentence of torch's own error (e.g. its zip reader's), else the error's type: the
    weights-only unpickler's message advises weights_only=False, which would let the file run code, and
    errors from deeper inside unpickling garbage ("pop from empty list") mean nothing to a user."""
    message = str(error).strip()
    if isinstance(error, RuntimeError) and message:
        return message.splitlines()[0].split(". ")[0]
    return type(error).__name__


def rng_state(device):
    """Every random generator a run draws from, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
