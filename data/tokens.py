"""Read and write nanoGPT-format token files.

A dataset folder data/<name>/ holds train.bin and val.bin, each a flat array of little-endian uint16
GPT-2 token ids with <|endoftext|> (50256) after every document, plus meta.json describing them.
train.py imports this module, so it needs only the standard library, numpy and training/files.py.
"""
import json
import os
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from training.files import atomic_write

DTYPE = np.dtype("<u2")  # little-endian uint16 on any host
META_FILE = "meta.json"
EXPECTED_META = {"tokenizer": "gpt2", "dtype": "uint16"}


class DatasetError(Exception):
    """A token file is missing or not what training expects; the message says how to remake it."""


DATA = os.path.dirname(os.path.abspath(__file__))


def prepare_command(data_dir: str) -> str:
    """The command that makes the dataset in data_dir (a path from the working directory): its own prepare.py
    if it has one, else data/prepare.py, named from the working directory too."""
    script = os.path.join(data_dir, "prepare.py")
    if os.path.isfile(script):
        return f"python {script}"
    return f"python {os.path.relpath(os.path.join(DATA, 'prepare.py'))} --input <your text files> --out {data_dir}"


def dataset_error(path: str, problem: str) -> DatasetError:
    return DatasetError(f"{path} {problem}; make it with `{prepare_command(os.path.dirname(path))}`")


def as_tokens(batch: np.ndarray | list[int]) -> np.ndarray:
    """batch as a contiguous little-endian uint16 array, refusing ids that would wrap around."""
    batch = np.asarray(batch)
    if batch.dtype != DTYPE and batch.size and (batch.min() < 0 or batch.max() > np.iinfo(DTYPE).max):
        raise ValueError(f"token ids must be in [0, 65535] to be stored as uint16, got {batch.min()}..{batch.max()}")
    return np.ascontiguousarray(batch, dtype=DTYPE)


def write_tokens(path: str, tokens: np.ndarray | Iterable[np.ndarray]) -> int:
    """Atomically write token ids to path as flat uint16 and return how many were written.

    tokens is one array, or an iterable of arrays (batches) for datasets larger than memory: each batch
    is appended as it comes, so only one is ever held. Wrap the iterable for a progress bar."""
    batches = [tokens] if isinstance(tokens, np.ndarray) else tokens
    written = 0
    with atomic_write(path) as f:
        for batch in batches:
            batch = as_tokens(batch)
            f.write(memoryview(batch))
            written += batch.size
    return written


def write_meta(data_dir: str, meta: dict) -> None:
    with atomic_write(os.path.join(data_dir, META_FILE)) as f:
        f.write((json.dumps(meta, indent=2) + "\n").encode())


def read_meta(data_dir: str) -> dict | None:
    """data_dir's meta.json, or None if it has none (e.g. token files made elsewhere)."""
    path = os.path.join(data_dir, META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise dataset_error(path, f"is not valid JSON ({e})") from None


def check_meta(meta: dict, path: str, split: str, vocab_size: int | None) -> None:
    """Check the token file at path against its folder's meta.json."""
    meta_path = os.path.join(os.path.dirname(path), META_FILE)
    for key, expected in EXPECTED_META.items():
        if meta.get(key) != expected:
            raise dataset_error(path, f"has {key} {meta.get(key)!r} in {meta_path}, expected {expected!r}")
    if vocab_size is not None and meta.get("vocab_size", 0) > vocab_size:
        raise dataset_error(path, f"needs vocab_size >= {meta['vocab_size']} ({meta_path}), the model has {vocab_size}")
    n_tokens = meta.get("tokens", {}).get(split)
    n_found = os.path.getsize(path) // DTYPE.itemsize
    if n_tokens is not None and n_tokens != n_found:
        # e.g. a prepare run that was interrupted between writing the splits and meta.json
        raise dataset_error(path, f"holds {n_found} tokens but {meta_path} says {n_tokens}")


def open_split(data_dir: str, split: str, vocab_size: int | None = None) -> np.memmap:
    """Memory-map data_dir/<split>.bin read-only, after checking it (and meta.json, when present)."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise dataset_error(path, "not found")
    size = os.path.getsize(path)
    if size == 0:
        raise dataset_error(path, "is empty")
    if size % DTYPE.itemsize:
        raise dataset_error(path, f"has an odd size ({size} bytes), so it is not a uint16 token file")
    meta = read_meta(data_dir)
    if meta is not None:
        check_meta(meta, path, split, vocab_size)
    return np.memmap(path, dtype=DTYPE, mode="r")


def verify_tokens(path: str, n_vocab: int, chunk: int = 1 << 26) -> None:
    """Raise DatasetError unless every id in the token file at `path` is below n_vocab (the tokenizer's
    vocabulary; the model's padded output layer is larger, so a bad id would train silently). The scan runs
    once per version of the file: a stamp beside it (<path>.verified: its size, modification time and inode)
    skips it until the file changes. 128 MB at a time, with a progress bar for large files."""
    stat = os.stat(path)
    stamp_path = path + ".verified"
    version = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "n_vocab": n_vocab}
    try:
        with open(stamp_path) as f:
            if json.load(f) == version:
                return
    except (OSError, ValueError):
        pass
    tokens = np.memmap(path, dtype=DTYPE, mode="r")
    starts = range(0, len(tokens), chunk)
    for start in tqdm(starts, desc=f"checking {path}", unit="chunk", disable=len(starts) < 8):
        part = tokens[start:start + chunk]
        if part.size and int(part.max()) >= n_vocab:
            at = start + int(np.argmax(part >= n_vocab))
            raise dataset_error(path, f"has token id {int(tokens[at])} at position {at:,}, but the tokenizer's "
                                      f"ids are below {n_vocab}")
    try:
        with atomic_write(stamp_path) as f:
            f.write(json.dumps(version).encode())
    except OSError:  # a read-only dataset folder: check again next time
        pass
