"""Tokenise text documents with GPT-2 BPE and write a dataset folder: train.bin, val.bin, meta.json.

    python data/prepare.py --input notes.txt more.jsonl.xz --out data/mytext

Inputs, one or more files, in order:
- .txt / .txt.xz: the whole file is one document; with --split_blank_lines, every run of blank
  lines separates documents instead. Surrounding whitespace is stripped, empty documents dropped.
- .jsonl / .jsonl.xz: one JSON object per line; its --text_field (default "text") is a document, as is.
Files are read as UTF-8, line endings normalised to LF. The documents are split like nanoGPT's
OpenWebText: train_test_split(test_size, seed=2357, shuffle=True), the test part renamed "val".
The inputs are read into memory; the tokens are not. All of them are read and checked before anything
is written, so a bad input or --out is one `error:` line and leaves no files behind.
data/openwebtext/prepare.py and data/enwiki_sample/prepare.py reuse tokenize_and_write below.
"""
import argparse
import contextlib
import json
import lzma
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import TextIO

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python data/...`

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value
from tqdm import tqdm

from data.tokens import META_FILE, write_meta, write_tokens
from training.tokenizer import EOT, N_VOCAB, gpt2_encoding

SEED = 2357  # nanoGPT's and the Sophia repository's split seed
DOCS_PER_WRITE = 1024
TOKENIZED = Features({"ids": List(Value("uint16")), "len": Value("int64")})


class PrepareError(ValueError):
    """An input or the output folder is unusable; the message says which and how to fix it."""


@contextlib.contextmanager
def open_text(path: str) -> Iterator[TextIO]:
    """path as UTF-8 text (decompressed if it ends in .xz), with every way reading it can fail,
    even halfway through, turned into a PrepareError."""
    opener = lzma.open if path.endswith(".xz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield f
    except OSError as e:  # missing, a folder, no permission
        raise PrepareError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text ({e.reason}); convert it to UTF-8") from None
    except (lzma.LZMAError, EOFError) as e:  # EOFError: a truncated .xz
        raise PrepareError(f"{path} is not valid xz-compressed data ({e}); compress it again with xz, "
                           "or drop .xz from its name if it is plain text") from None


def json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def jsonl_document(row_text: str, where: str, text_field: str) -> str:
    """The document on one JSONL line (`where` is path:line): the text_field of the object there."""
    try:
        row = json.loads(row_text)
    except json.JSONDecodeError as e:
        raise PrepareError(f"{where} is not valid JSON ({e.msg}, column {e.colno}); "
                           "each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise PrepareError(f"{where} is {json_type(row)}, not a JSON object; each line must be an object "
                           f"holding its text in the field named by --text_field (now {text_field!r})")
    if text_field not in row:
        raise PrepareError(f"{where} has no {text_field!r} field; pick the field with --text_field")
    if not isinstance(row[text_field], str):
        raise PrepareError(f"{where} has {json_type(row[text_field])} in its {text_field!r} field, not a string; "
                           "pick the text field with --text_field")
    return row[text_field]


def read_documents(path: str, text_field: str = "text", split_blank_lines: bool = False) -> list[str]:
    """The documents in one input file (see the module docstring for the formats)."""
    name = path.removesuffix(".xz")
    if not name.endswith((".txt", ".jsonl")):
        raise PrepareError(f"{path}: unsupported input, expected .txt or .jsonl (optionally .xz-compressed)")
    with open_text(path) as f:
        if name.endswith(".jsonl"):
            # line numbers count blank lines too, so they match an editor's
            docs = [jsonl_document(line, f"{path}:{i}", text_field) for i, line in enumerate(f, 1) if line.strip()]
        else:
            text = f.read()
            parts = re.split(r"\n\s*\n", text) if split_blank_lines else [text]
            docs = [part.strip() for part in parts if part.strip()]
    if not docs:
        raise PrepareError(f"{path} has no documents: it is empty or blank; leave it out of --input")
    return docs


def load_documents(paths: list[str], text_field: str = "text", split_blank_lines: bool = False) -> Dataset:
    """A Dataset with one "text" row per document of the given files, in order."""
    docs = [doc for path in paths for doc in read_documents(path, text_field, split_blank_lines)]
    return Dataset.from_dict({"text": docs})


def split_train_val(docs: Dataset, test_size: float = 0.0005, seed: int = SEED) -> dict[str, Dataset]:
    """nanoGPT's split; a float test_size rounds the val count up, so val gets at least 1 document."""
    if len(docs) < 2:
        raise PrepareError(f"need at least 2 documents to make a train and a val split, got {len(docs)}; "
                           "give more input, or split .txt files at blank lines with --split_blank_lines")
    split = docs.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return {"train": split["train"], "val": split["test"]}


def tokenize_batch(batch: dict[str, list]) -> dict[str, list]:
    enc = gpt2_encoding()
    ids = [enc.encode_ordinary(text) + [EOT] for text in batch["text"]]
    return {"ids": ids, "len": [len(x) for x in ids]}


def token_batches(tokenized: Dataset, total: int, desc: str) -> Iterator[np.ndarray]:
    """The token ids of tokenized, in document order, a few documents at a time, with a progress bar."""
    with tqdm(total=total, unit="tok", unit_scale=True, desc=desc) as bar:
        for table in tokenized.with_format("arrow").iter(batch_size=DOCS_PER_WRITE):
            ids = pc.list_flatten(table["ids"]).to_numpy()
            yield ids
            bar.update(ids.size)


def tokenize_and_write(splits: dict[str, Dataset], out_dir: str, num_proc: int = 1, source: str = "") -> dict:
    """Tokenise each split's "text" (encode_ordinary + EOT per document), write out_dir/<split>.bin
    atomically, then out_dir/meta.json; return the meta."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {"tokenizer": "gpt2", "vocab_size": N_VOCAB, "dtype": "uint16", "eot": EOT,
            "tokens": {}, "documents": {}, "source": source}
    for name, docs in splits.items():
        if len(docs) == 0:
            raise ValueError(f"split {name!r} has no documents")
        tokenized = docs.map(tokenize_batch, batched=True, remove_columns=docs.column_names, features=TOKENIZED,
                             num_proc=min(num_proc, len(docs)), desc=f"tokenizing {name}")
        total = int(np.sum(tokenized.with_format("numpy")["len"]))
        path = os.path.join(out_dir, f"{name}.bin")
        meta["tokens"][name] = write_tokens(path, token_batches(tokenized, total, desc=f"writing {path}"))
        meta["documents"][name] = len(docs)
    write_meta(out_dir, meta)  # last, so it only ever describes complete .bin files
    return meta


def make_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """Create out_dir and make (and delete) a file in it, so that an unwritable out_dir is an error
    before the slow tokenising, not after. A dataset already there is only replaced with overwrite."""
    existing = [name for name in ("train.bin", "val.bin", META_FILE) if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise PrepareError(f"--out {out_dir} already holds a dataset ({', '.join(existing)}); choose another --out, "
                           "or pass --overwrite to replace it")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as e:  # e.g. out_dir is a file, or in a read-only folder
        raise PrepareError(f"cannot write to --out {out_dir}: {e.strerror}; pick another folder") from None


def prepare_local_files(paths: list[str], out_dir: str, test_size: float = 0.0005, num_proc: int = 1,
                        text_field: str = "text", split_blank_lines: bool = False, overwrite: bool = False) -> dict:
    splits = split_train_val(load_documents(paths, text_field, split_blank_lines), test_size)
    make_out_dir(out_dir, overwrite)
    source = f"local files {', '.join(paths)}; train_test_split(test_size={test_size}, seed={SEED}), test -> val"
    return tokenize_and_write(splits, out_dir, num_proc, source)


def print_counts(meta: dict, out_dir: str) -> None:
    for name, n_tokens in meta["tokens"].items():
        print(f"{os.path.join(out_dir, name)}.bin: {n_tokens:,} tokens, {meta['documents'][name]:,} documents")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help=".txt, .jsonl, optionally .xz")
    parser.add_argument("--out", required=True, help="dataset folder, e.g. data/mytext")
    parser.add_argument("--test_size", type=float, default=0.0005, help="fraction of documents for val")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--text_field", default="text", help="JSONL field holding the text")
    parser.add_argument("--split_blank_lines", action="store_true", help="blank lines separate .txt documents")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    args = parser.parse_args()
    if not 0 < args.test_size < 1:
        parser.error("--test_size must be a fraction in (0, 1)")
    try:
        meta = prepare_local_files(args.input, args.out, args.test_size, args.num_proc,
                                   args.text_field, args.split_blank_lines, args.overwrite)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    print_counts(meta, args.out)


if __name__ == "__main__":
    main()
