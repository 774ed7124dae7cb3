"""The 50M-token English Wikipedia corpus (for GPU experiments) -> data/enwiki/{train,val}.bin, meta.json.

    python data/enwiki/prepare.py [--src DIR]

The corpus comes already tokenised with GPT-2's tokenizer, in this project's format, as train.bin.xz
and val.bin.xz (its data card: ../shared/corpora/README.md beside a clone of this repository, the
default --src). This script decompresses them, checks their sha256 and writes meta.json.
Source: English Wikipedia (WikiExtractor output, 2015), CC BY-SA 3.0; 13,290 training and 67
validation articles, split by document (every 200th document is validation).
"""
import argparse
import hashlib
import lzma
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

import numpy as np
from tqdm import tqdm

from data.tokens import write_meta, write_tokens
from training.tokenizer import EOT, N_VOCAB

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SRC = os.path.join(HERE, "..", "..", "..", "shared", "corpora", "enwiki")
SHA256 = {  # of the decompressed files, from the corpus's data card
    "train": "c42a041967b9bae71f388722a8d24285fe018d07014727c556f972b80ce4838a",
    "val": "a1ab5a336c7a754cb773a65de68248c8bf2c7771d597010ce76d4abcefbf6396",
}
CHUNK = 1 << 24  # bytes decompressed at a time


def decompress(src, digest):
    """The uint16 tokens of an .xz file, chunk by chunk, feeding `digest` on the way."""
    with lzma.open(src) as f, tqdm(unit="B", unit_scale=True, desc=os.path.basename(src)) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
            yield np.frombuffer(chunk, dtype="<u2")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=DEFAULT_SRC, help="folder holding train.bin.xz and val.bin.xz")
    args = parser.parse_args()
    counts = {"tokens": {}, "documents": {}}
    for split in ("train", "val"):
        src = os.path.join(args.src, f"{split}.bin.xz")
        if not os.path.isfile(src):
            sys.exit(f"error: {src} not found; pass --src with the folder holding the corpus's .bin.xz files")
        dst = os.path.join(HERE, f"{split}.bin")
        digest = hashlib.sha256()
        write_tokens(dst, decompress(src, digest))
        if digest.hexdigest() != SHA256[split]:
            os.remove(dst)
            sys.exit(f"error: {src} does not decompress to the published data (sha256 mismatch); fetch it again")
        tokens = np.memmap(dst, dtype=np.uint16, mode="r")
        counts["tokens"][split] = int(tokens.size)
        counts["documents"][split] = int(np.count_nonzero(tokens == EOT))
        print(f"{dst}: {tokens.size:,} tokens, {counts['documents'][split]:,} documents")
    write_meta(HERE, {"tokenizer": "gpt2", "vocab_size": N_VOCAB, "dtype": "uint16", "eot": EOT, **counts,
                      "source": "English Wikipedia, 50M-token GPT-2-tokenised corpus (shared/corpora/enwiki, "
                                "CC BY-SA 3.0); val = every 200th document"})


if __name__ == "__main__":
    main()
