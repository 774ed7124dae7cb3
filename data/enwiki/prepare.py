"""The 50M-token English Wikipedia corpus (for GPU experiments) -> data/enwiki/{train,val}.bin, meta.json.

    python data/enwiki/prepare.py                     # the copy beside the clone if there is one, else rebuilt
    python data/enwiki/prepare.py --src DIR           # from DIR/{train,val}.bin.xz (offline)
    python data/enwiki/prepare.py --rebuild           # from the public source: downloads 411 MB of text
    python data/enwiki/prepare.py --source_dir DIR    # from a local copy of the source's text/ folder

Source: GitHub jason-feng/wikiVisual at commit 1c0fac92 (2015), text/AA/wiki_00 ... text/AD/wiki_99: WikiExtractor
output of English Wikipedia, CC BY-SA 3.0. Processing (data/README.md): documents in file order, each the text
between its <doc> line and </doc>, stripped; documents under 200 characters dropped; every 200th of the rest is
val; training documents are taken in order while the training tokens (one <|endoftext|> each) stay within 50M,
and the first one that would exceed it ends both splits. Tokens: GPT-2's encode_ordinary, then <|endoftext|>.
Either way the result must have the published sha256, or nothing is kept.
"""
import argparse
import hashlib
import lzma
import os
import re
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

import numpy as np
from tqdm import tqdm

from data.tokens import write_meta, write_tokens
from training.files import atomic_write
from training.tokenizer import EOT, N_VOCAB, gpt2_encoding

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SRC = os.path.join(HERE, "..", "..", "..", "shared", "corpora", "enwiki")
SHA256 = {  # of train.bin and val.bin, from the corpus's data card
    "train": "c42a041967b9bae71f388722a8d24285fe018d07014727c556f972b80ce4838a",
    "val": "a1ab5a336c7a754cb773a65de68248c8bf2c7771d597010ce76d4abcefbf6396",
}
SOURCE = "https://raw.githubusercontent.com/jason-feng/wikiVisual/1c0fac92f29f17c1603bfffbe864e0dfdff66897/"
SOURCE_FILES = [f"text/{folder}/wiki_{i:02d}" for folder in ("AA", "AB", "AC", "AD") for i in range(100)]
SOURCE_BYTES = 410_864_431
MIN_CHARS, VAL_EVERY, TRAIN_TOKENS = 200, 200, 50_000_000
CHUNK = 1 << 24  # bytes decompressed at a time
DOC = re.compile(r"<doc [^>]*>\n(.*?)\n</doc>", re.S)


class CorpusError(Exception):
    """The corpus cannot be made as asked; the message says what to do."""


# ----------------------------------------------------------------------------- the published tokens

def decompress(src, digest):
    """The uint16 tokens of an .xz file, chunk by chunk, feeding `digest` on the way."""
    with lzma.open(src) as f, tqdm(unit="B", unit_scale=True, desc=os.path.basename(src)) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
            yield np.frombuffer(chunk, dtype="<u2")


def from_xz(src, out):
    for split in ("train", "val"):
        path = os.path.join(src, f"{split}.bin.xz")
        if not os.path.isfile(path):
            raise CorpusError(f"{path} not found; pass --src with the folder holding the corpus's .bin.xz files, "
                              "or --rebuild to make it from its public source")
        write_checked(out, split, decompress(path, digest := hashlib.sha256()), digest, path)


# ----------------------------------------------------------------------------- rebuilt from the source

def download(cache):
    """The source files in `cache` (text/..., as in the source repository), fetching those not there yet."""
    missing = [name for name in SOURCE_FILES if not os.path.isfile(os.path.join(cache, name))]
    for name in tqdm(missing, desc=f"downloading {len(missing)} source files", unit="file", disable=not missing):
        path = os.path.join(cache, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with urllib.request.urlopen(SOURCE + name, timeout=60) as response, atomic_write(path) as f:
                f.write(response.read())
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise CorpusError(f"cannot download {SOURCE + name} ({reason}); without internet, pass --src with the "
                              "corpus's .bin.xz files (../shared/corpora/enwiki beside a clone of this "
                              "repository)") from None
    return cache


def source_documents(source_dir):
    """The documents of the source files, in order: each the text between its <doc> line and </doc>, stripped."""
    for name in SOURCE_FILES:
        path = os.path.join(source_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CorpusError(f"cannot read the source file {path} ({e.strerror}); --source_dir must hold the "
                              "source's text/AA/wiki_00 ... text/AD/wiki_99") from None
        for match in DOC.finditer(text):
            yield match.group(1).strip()


def select(documents, encode, min_chars=MIN_CHARS, val_every=VAL_EVERY, train_tokens=TRAIN_TOKENS):
    """{"train": [...], "val": [...]}: each document's tokens (encode(text) + EOT) by the corpus's rules: documents
    under min_chars dropped; of the rest (doc_index 0, 1, ...), every val_every-th is val; training documents
    are taken while the training tokens stay within train_tokens, and the first that would exceed them ends
    both splits."""
    splits, total = {"train": [], "val": []}, 0
    kept = (doc for doc in documents if len(doc) >= min_chars)
    for doc_index, doc in enumerate(tqdm(kept, desc="tokenizing", unit="doc")):
        tokens = np.array(encode(doc) + [EOT], dtype=np.uint16)
        if doc_index % val_every == 0:
            splits["val"].append(tokens)
        elif total + tokens.size > train_tokens:
            break
        else:
            splits["train"].append(tokens)
            total += tokens.size
    return splits


def rebuild(source_dir, out):
    splits = select(source_documents(source_dir), gpt2_encoding().encode_ordinary)
    for split, docs in splits.items():
        digest = hashlib.sha256()
        write_checked(out, split, hashed(docs, digest), digest, f"the documents of {source_dir}")


def hashed(arrays, digest):
    for array in arrays:
        digest.update(array.astype("<u2").tobytes())
        yield array


# ----------------------------------------------------------------------------- either way

def write_checked(out, split, tokens, digest, origin):
    """Write out/<split>.bin from `tokens`, keeping it only if it is the published file."""
    path = os.path.join(out, f"{split}.bin")
    write_tokens(path, tokens)
    if digest.hexdigest() != SHA256[split]:
        os.remove(path)
        raise CorpusError(f"{origin} does not give the published {split}.bin (sha256 {digest.hexdigest()[:12]}..., "
                          f"expected {SHA256[split][:12]}...); nothing was kept")


def write_corpus_meta(out, source):
    counts = {"tokens": {}, "documents": {}}
    for split in ("train", "val"):
        tokens = np.memmap(os.path.join(out, f"{split}.bin"), dtype=np.uint16, mode="r")
        counts["tokens"][split] = int(tokens.size)
        counts["documents"][split] = int(np.count_nonzero(tokens == EOT))
        print(f"{os.path.join(out, split)}.bin: {tokens.size:,} tokens, {counts['documents'][split]:,} documents")
    write_meta(out, {"tokenizer": "gpt2", "vocab_size": N_VOCAB, "dtype": "uint16", "eot": EOT, **counts,
                     "source": f"English Wikipedia, 50M-token GPT-2-tokenised corpus ({source}, CC BY-SA 3.0); "
                               f"val = every {VAL_EVERY}th document"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--src", help="folder holding train.bin.xz and val.bin.xz")
    how.add_argument("--rebuild", action="store_true", help="download the public source and rebuild the corpus")
    how.add_argument("--source_dir", help="a local copy of the source (its text/AA/wiki_00 ... text/AD/wiki_99)")
    parser.add_argument("--cache", default=os.path.join(HERE, "source"), help="where --rebuild keeps the download")
    parser.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    args = parser.parse_args()
    src = args.src or (None if args.rebuild or args.source_dir else DEFAULT_SRC)
    try:
        os.makedirs(args.out, exist_ok=True)
        if src and (args.src or os.path.isdir(src)):
            from_xz(src, args.out)
            write_corpus_meta(args.out, "shared/corpora/enwiki")
        else:
            rebuild(args.source_dir or download(args.cache), args.out)
            write_corpus_meta(args.out, f"rebuilt from {SOURCE}text/")
    except CorpusError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
