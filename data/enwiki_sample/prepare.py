"""The embedded English Wikipedia sample (README.md beside this file) -> train.bin, val.bin, meta.json.

    python data/enwiki_sample/prepare.py [--out DIR] [--num_proc N]

Offline and a few seconds: 337 articles, ~1.1M tokens. Articles are separated by a blank line;
every 10th article (index % 10 == 0, 34 of them) is val, the rest train, so the split is fixed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

from datasets import Dataset

from data.prepare import print_counts, read_documents, tokenize_and_write

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "enwiki-sample.txt.xz")
VAL_EVERY = 10


def split_articles(articles: list[str]) -> dict[str, Dataset]:
    return {
        "train": Dataset.from_dict({"text": [a for i, a in enumerate(articles) if i % VAL_EVERY != 0]}),
        "val": Dataset.from_dict({"text": articles[::VAL_EVERY]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE, help="output folder (default: this folder)")
    parser.add_argument("--num_proc", type=int, default=1, help="tokenising processes (1 is enough here)")
    args = parser.parse_args()
    articles = read_documents(CORPUS, split_blank_lines=True)
    source = (f"data/enwiki_sample/enwiki-sample.txt.xz: {len(articles)} English Wikipedia articles "
              f"(CC BY-SA 3.0, see its README.md); val = every {VAL_EVERY}th article (index % {VAL_EVERY} == 0)")
    meta = tokenize_and_write(split_articles(articles), args.out, args.num_proc, source)
    print_counts(meta, args.out)


if __name__ == "__main__":
    main()
