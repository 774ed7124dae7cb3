"""
Checkpoints: written atomically, read without running code (weights_only), with one-line errors. The model in
a checkpoint of the official Sophia code (github.com/Liuhong99/Sophia, nanoGPT's format) loads too.
"""

import dataclasses
import os
import random
import re
import shutil
import warnings

import numpy as np
import torch

from model import GPT, GPTConfig
from training.files import atomic_write

# The official code saves the model it trains, which under torch.compile is a wrapper holding it as _orig_mod
# (and under DDP as module): its parameter names carry these prefixes.
WRAPPER_PREFIXES = re.compile(r"^(?:_orig_mod\.|module\.)+")
# The official model's causal masks (Hugging Face's GPT-2 also has masked_bias): buffers, not weights, made
# from block_size; our attention makes its mask itself.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(state, path):
    """Write `state` to `path` so that a crash or kill mid-write never damages the previous checkpoint
    (a temporary file beside it, fsynced, then renamed over it). A write that fails (a full disk: torch's zip
    writer says "unexpected pos") is a one-line CheckpointError that names the folder and the space needed."""
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        folder = os.path.dirname(os.path.abspath(path))
        need = sum(t.numel() * t.element_size() for t in tensors_in(state))
        free = shutil.disk_usage(folder).free
        reason = ("the disk is full" if free < 2 * need else
                  short_reason(e) if isinstance(e, RuntimeError) else e.strerror)
        raise CheckpointError(f"cannot write the checkpoint {path}: {reason} (it needs about {need / 1e9:.2g} GB, "
                              f"{free / 1e9:.2g} GB are free in {folder}); free some space there and resume with "
                              f"--init_from=resume. The previous checkpoint, if any, is intact") from None


def tensors_in(value):
    """Every tensor in a nested state (dicts, lists, tuples)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint at `path`, loaded with weights_only=True: tensors and plain Python values only,
    so a checkpoint from elsewhere cannot run code."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path} to resume from: start the run with init_from='scratch' (the "
                              f"files of a run that never saved one are moved aside), or use init_from='auto', which "
                              f"resumes when there is a checkpoint and starts afresh when there is none")
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


def model_state(state):
    """A state dict for our GPT from a checkpoint's 'model': ours as it is, or the official code's, whose names
    are ours once the wrappers' prefixes and the mask buffers are gone."""
    return {WRAPPER_PREFIXES.sub("", key): tensor for key, tensor in state.items() if not key.endswith(MASK_BUFFERS)}


def gpt_config(model_args):
    """Our GPTConfig from a checkpoint's 'model_args' (the official code's has the same keys). A setting that our
    GPT lacks would change what the weights compute, so it is refused rather than dropped."""
    unknown = sorted(set(model_args) - {field.name for field in dataclasses.fields(GPTConfig)})
    if unknown:
        settings = ", ".join(f"{key}={model_args[key]!r}" for key in unknown)
        raise CheckpointError(f"the checkpoint's model has settings that model.py does not have: {settings}")
    return GPTConfig(**model_args)


def model_from_checkpoint(ckpt):
    """Our GPT with a checkpoint's weights, ours or the official code's. The official model's GELU is the tanh
    approximation and ours is exact, so its logits differ here slightly (docs/official-code.md)."""
    missing = [key for key in ("model_args", "model") if key not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint has no {' or '.join(missing)} entry: it is not a model checkpoint")
    model = GPT(gpt_config(ckpt["model_args"]))
    try:
        model.load_state_dict(model_state(ckpt["model"]))
    except RuntimeError as e:  # torch's message: a header line, then one line per kind of mismatch
        detail = str(e).strip().splitlines()[1:] or [str(e)]
        raise CheckpointError(f"the checkpoint's weights do not fit its model_args: {detail[0].strip()}") from None
    return model


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
