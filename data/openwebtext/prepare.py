"""OpenWebText -> train.bin (~9.0B tokens, 17 GiB), val.bin (~4.4M tokens), meta.json, split as in nanoGPT.

    python data/openwebtext/prepare.py [--num_proc N]           # downloads ~24 GB of Parquet from the Hub
    python data/openwebtext/prepare.py --input FILE [FILE ...]  # your own copy, as for data/prepare.py

Split: train_test_split(test_size=0.0005, seed=2357, shuffle=True) of the 8,013,769 documents, test renamed
val (4,007 documents), as nanoGPT and the Sophia repository do. Needs ~100 GB of disk for the Hub cache.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

from datasets import Dataset, load_dataset

from data.prepare import (SEED, PrepareError, load_documents, make_out_dir, print_counts, split_train_val,
                          tokenize_and_write)

HERE = os.path.dirname(os.path.abspath(__file__))
# nanoGPT's load_dataset("openwebtext") runs the Hub repo's loading script, which datasets >= 4 refuses
# ("Dataset scripts are no longer supported": github.com/karpathy/nanoGPT/issues/633). The dataset's owner
# has since pushed the script's output as Parquet to data/ of the same repo (push_to_hub, which keeps the row
# order; huggingface.co/datasets/Skylion007/openwebtext/discussions/18). The generic parquet loader reads it
# whether or not the script is still there. Not revision="refs/convert/parquet": the Hub's automatic
# conversion keeps only the first 5 GB of a dataset this large.
OPENWEBTEXT_PARQUET = "hf://datasets/Skylion007/openwebtext/data/train-*.parquet"
OPENWEBTEXT_DOCUMENTS = 8_013_769
TEST_SIZE = 0.0005


def load_openwebtext(num_proc: int) -> Dataset:
    try:
        docs = load_dataset("parquet", data_files={"train": OPENWEBTEXT_PARQUET}, split="train", num_proc=num_proc)
    except Exception as e:  # no network, the Hub unreachable or offline (HF_HUB_OFFLINE), a file gone
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PrepareError(f"cannot load OpenWebText from the Hugging Face Hub ({type(e).__name__}: {reason}); "
                           "check the network (or HF_ENDPOINT, a proxy), or pass your own copy with --input") from None
    if len(docs) != OPENWEBTEXT_DOCUMENTS:
        # a different row count would silently give a different seed-2357 split
        raise PrepareError(f"{OPENWEBTEXT_PARQUET} has {len(docs):,} documents, expected {OPENWEBTEXT_DOCUMENTS:,}; "
                           "pass your own copy with --input")
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help="local .txt/.jsonl files instead of the Hub (see data/prepare.py)")
    parser.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    parser.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    try:
        docs = load_documents(args.input) if args.input else load_openwebtext(args.num_proc)
        splits = split_train_val(docs, TEST_SIZE)
        make_out_dir(args.out, overwrite=True)  # this folder's own dataset: made again, as it was
    except PrepareError as e:
        sys.exit(f"error: {e}")
    origin = f"local files {', '.join(args.input)}" if args.input else f"OpenWebText, {OPENWEBTEXT_PARQUET}"
    source = f"{origin}; train_test_split(test_size={TEST_SIZE}, seed={SEED}), test -> val"
    meta = tokenize_and_write(splits, args.out, args.num_proc, source)
    print_counts(meta, args.out)


if __name__ == "__main__":
    main()
