"""GPT-2 BPE tokenizer (tiktoken) that works offline, from the BPE ranks shipped in data/gpt2.tiktoken."""
import base64
import functools
import hashlib
import os

import tiktoken

EOT = 50256  # <|endoftext|>, written after every document
N_VOCAB = 50257

RANKS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "gpt2.tiktoken")
# same bytes as tiktoken's r50k_base.tiktoken (the "gpt2" encoding), see data/README.md
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenisation regex; tiktoken's built-in one is a faster, equivalent form
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RESTORE_HINT = "restore it with `git checkout -- data/gpt2.tiktoken`"


def load_ranks(path: str = RANKS_PATH) -> dict[bytes, int]:
    """Read a tiktoken ranks file (`base64(token) rank` per line) after checking its sha256."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"GPT-2 BPE ranks file {path} is missing: {RESTORE_HINT}") from None
    if hashlib.sha256(data).hexdigest() != RANKS_SHA256:
        raise ValueError(f"GPT-2 BPE ranks file {path} is corrupted (sha256 mismatch): {RESTORE_HINT}")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def gpt2_encoding(source: str = "auto") -> tiktoken.Encoding:
    """The GPT-2 encoding. "auto"/"file": from data/gpt2.tiktoken, no network (same ids as tiktoken's);
    "tiktoken": tiktoken.get_encoding("gpt2"), which downloads the ranks on first use (and caches them)."""
    if source == "tiktoken":
        return tiktoken.get_encoding("gpt2")
    if source not in ("auto", "file"):
        raise ValueError(f"unknown tokenizer source {source!r}: use 'auto', 'file' or 'tiktoken'")
    return shipped_encoding()


@functools.lru_cache(maxsize=1)
def shipped_encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_ranks(),
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=N_VOCAB,
    )
