import importlib.util
import json
import lzma
import os
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import one_error_line
from datasets import Dataset

from data.prepare import PrepareError, load_documents, read_documents, split_train_val, tokenize_and_write
from data.tokens import DatasetError, open_split, read_meta, verify_tokens, write_meta, write_tokens
from training.tokenizer import EOT, N_VOCAB, gpt2_encoding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["Hello world", "A second document.\n\nWith two paragraphs.", "", "ünïcödé 中文 😀", "  spaces  "]


def expected_tokens(docs: list[str]) -> np.ndarray:
    enc = gpt2_encoding()
    return np.array([t for doc in docs for t in enc.encode_ordinary(doc) + [EOT]], dtype=np.uint16)


def read_bin(path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2")


def run_script(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture
def dataset_dir(tmp_path):
    """A small valid dataset folder made by tokenize_and_write."""
    splits = {"train": Dataset.from_dict({"text": DOCS}), "val": Dataset.from_dict({"text": DOCS[:2]})}
    tokenize_and_write(splits, str(tmp_path / "tiny"), num_proc=1, source="test")
    return str(tmp_path / "tiny")


# tokenize_and_write


def test_tokenize_and_write(tmp_path):
    splits = {"train": Dataset.from_dict({"text": DOCS}), "val": Dataset.from_dict({"text": DOCS[1:3]})}
    meta = tokenize_and_write(splits, str(tmp_path), num_proc=1, source="unit test")
    for name, ds in splits.items():
        tokens = read_bin(tmp_path / f"{name}.bin")
        np.testing.assert_array_equal(tokens, expected_tokens(ds["text"]))
        assert meta["tokens"][name] == tokens.size
        assert meta["documents"][name] == len(ds) == np.count_nonzero(tokens == EOT)
    assert read_meta(str(tmp_path)) == meta
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == N_VOCAB and meta["dtype"] == "uint16"
    assert meta["eot"] == EOT and meta["source"] == "unit test"
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "train.bin", "val.bin"]  # no .tmp left
    with pytest.raises(ValueError, match="split 'val' has no documents"):
        tokenize_and_write({"val": splits["val"].select([])}, str(tmp_path))


def test_tokenize_and_write_two_processes_keeps_document_order(tmp_path):
    docs = [f"Document number {i}: " + "word " * (i % 7) + "😀" * (i % 3) for i in range(300)]
    splits = split_train_val(Dataset.from_dict({"text": docs}), test_size=0.1)
    meta = tokenize_and_write(splits, str(tmp_path), num_proc=2)
    for name, ds in splits.items():
        np.testing.assert_array_equal(read_bin(tmp_path / f"{name}.bin"), expected_tokens(ds["text"]))
    assert meta["documents"] == {"train": 270, "val": 30}


def test_split_train_val_matches_nanogpt_and_keeps_a_val_document():
    docs = Dataset.from_dict({"text": [f"doc {i}" for i in range(100)]})
    splits = split_train_val(docs)
    reference = docs.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    assert splits["val"]["text"] == reference["test"]["text"] and len(splits["val"]) == 1
    assert splits["train"]["text"] == reference["train"]["text"]
    assert len(split_train_val(Dataset.from_dict({"text": ["a", "b"]}))["val"]) == 1
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_train_val(Dataset.from_dict({"text": ["only one"]}))


# reading local files


def test_read_txt_files(tmp_path):
    text = "Title\nFirst paragraph.\n\n  \nSecond doc.\r\n\r\nThird\n  indented\n\n\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    with lzma.open(tmp_path / "a.txt.xz", "wt", encoding="utf-8") as f:
        f.write(text)
    whole = [text.replace("\r\n", "\n").strip()]  # text mode normalises line endings
    split = ["Title\nFirst paragraph.", "Second doc.", "Third\n  indented"]
    for name in ["a.txt", "a.txt.xz"]:
        assert read_documents(str(tmp_path / name)) == whole
        assert read_documents(str(tmp_path / name), split_blank_lines=True) == split


def test_read_jsonl_files(tmp_path):
    rows = [{"text": "one", "id": 1}, {"text": "two\n\nlines", "id": 2}, {"body": "three", "text": ""}]
    lines = "".join(json.dumps(row) + "\n" for row in rows) + "\n"  # a trailing blank line is ignored
    (tmp_path / "a.jsonl").write_text(lines, encoding="utf-8")
    with lzma.open(tmp_path / "a.jsonl.xz", "wt", encoding="utf-8") as f:
        f.write(lines)
    for name in ["a.jsonl", "a.jsonl.xz"]:
        assert read_documents(str(tmp_path / name)) == ["one", "two\n\nlines", ""]
    with pytest.raises(ValueError, match=r"a.jsonl:1 has no 'body' field"):
        read_documents(str(tmp_path / "a.jsonl"), text_field="body")


def test_load_documents_keeps_file_order(tmp_path):
    (tmp_path / "b.txt").write_text("B", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "A1"}\n{"text": "A2"}\n', encoding="utf-8")
    docs = load_documents([str(tmp_path / "b.txt"), str(tmp_path / "a.jsonl")])
    assert docs["text"] == ["B", "A1", "A2"]
    with pytest.raises(ValueError, match="unsupported input"):
        load_documents([str(tmp_path / "notes.md")])


def test_cli_end_to_end(tmp_path):
    docs = [f"Line {i} of a tiny corpus, with ünïcode." for i in range(20)]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "data" / "tiny"
    result = run_script("data/prepare.py", "--input", str(tmp_path / "tiny.jsonl"), "--out", str(out),
                        "--test_size", "0.1", "--num_proc", "2")
    assert "train.bin: " in result.stdout and "val.bin: " in result.stdout
    meta = read_meta(str(out))
    assert meta["documents"] == {"train": 18, "val": 2}
    decoded = [gpt2_encoding().decode(open_split(str(out), split).tolist()) for split in ("train", "val")]
    got = [doc for text in decoded for doc in text.split("<|endoftext|>")[:-1]]
    assert sorted(got) == sorted(docs)


# data/prepare.py: one-line errors, nothing written


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """The stderr of a script that failed cleanly: non-zero exit and one line, 'error: ...'."""
    assert result.returncode != 0 and "\n" not in result.stderr.strip(), result.stderr[-3000:]
    return one_error_line(result.stderr)


def prepare_error_line(*args: str) -> str:
    """Run data/prepare.py expecting a clean failure."""
    return one_line_failure(subprocess.run([sys.executable, "data/prepare.py", *args], cwd=REPO_ROOT,
                                           capture_output=True, text=True))


BAD_INPUTS = [  # file name, its bytes (None: no such file), what the error says ({path}: the file's path)
    ("missing.txt", None, "cannot read {path}: No such file or directory"),
    ("empty.txt", b"", "{path} has no documents"),
    ("blank.jsonl", b"\n  \n", "{path} has no documents"),
    ("latin1.txt", "café".encode("latin-1"), "{path} is not UTF-8 text"),
    ("notes.md", b"# notes", "{path}: unsupported input, expected .txt or .jsonl"),
    ("bad.jsonl", b'{"text": "a"}\n\n{"text": "b",}\n', "{path}:3 is not valid JSON ("),  # the blank line counts
    # the reason ends "starting at": then the column, not "at at column"
    ("unterminated.jsonl", b'{"text": "a', "{path}:1 is not valid JSON (Unterminated string starting at, column 10)"),
    ("array.jsonl", b'{"text": "a"}\n["b"]\n', "{path}:2 is an array, not a JSON object; each line must be an "
                                                "object holding its text in the field named by --text_field"),
    ("other.jsonl", b'\n{"body": "a"}\n', "{path}:2 has no 'text' field; pick the field with --text_field"),
    ("number.jsonl", b'{"text": 1}\n', "{path}:1 has a number in its 'text' field, not a string; pick the text "
                                        "field with --text_field"),
    ("plain.txt.xz", b"plain text", "{path} is not valid xz-compressed data"),
    ("cut.jsonl.xz", lzma.compress(b'{"text": "a"}\n' * 100)[:40], "{path} is not valid xz-compressed data"),
    ("one.txt", b"a single document", "need at least 2 documents to make a train and a val split, got 1; give more "
                                      "input, or split .txt files at blank lines with --split_blank_lines"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    line = prepare_error_line("--input", str(path), "--out", str(tmp_path / "out"))
    assert message.format(path=path) in line
    assert os.listdir(tmp_path) == ([] if content is None else [name])


@pytest.mark.parametrize("out", ["a_file", "a_file/sub"])
def test_cli_unwritable_out_is_one_line_and_writes_nothing(tmp_path, out):
    (tmp_path / "docs.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "a_file").write_text("kept", encoding="utf-8")
    docs = str(tmp_path / "docs.txt")
    line = prepare_error_line("--input", docs, "--split_blank_lines", "--out", str(tmp_path / out))
    assert f"cannot write to --out {tmp_path / out}: " in line and "pick another folder" in line
    assert sorted(os.listdir(tmp_path)) == ["a_file", "docs.txt"] and (tmp_path / "a_file").read_text() == "kept"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_cli_read_only_out_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "docs.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    docs = str(tmp_path / "docs.txt")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    for out in (read_only, read_only / "sub"):
        line = prepare_error_line("--input", docs, "--split_blank_lines", "--out", str(out))
        assert f"cannot write to --out {out}: Permission denied" in line
    assert os.listdir(read_only) == []


# data/tokens.py: errors


def test_open_split_reads_tokens(dataset_dir):
    tokens = open_split(dataset_dir, "train", vocab_size=50304)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, expected_tokens(DOCS))


def test_open_split_missing_file_names_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(DatasetError, match=r"nope/train.bin not found.*`python data/prepare.py --input"):
        open_split(str(tmp_path / "nope"), "train")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the command names data/prepare.py as reached from the working directory
    with pytest.raises(DatasetError) as e:
        open_split("data/mytext", "train")
    script = re.search(r"`python (\S+) --input <your text files> --out data/mytext`", str(e.value)).group(1)
    assert os.path.samefile(script, os.path.join(REPO_ROOT, "data", "prepare.py"))
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(DatasetError, match=r"`python data/enwiki_sample/prepare.py`"):
        open_split("data/enwiki_sample", "no_such_split")


def test_open_split_rejects_bad_files(dataset_dir):
    path = os.path.join(dataset_dir, "train.bin")
    open(path, "wb").close()
    with pytest.raises(DatasetError, match="train.bin is empty"):
        open_split(dataset_dir, "train")
    with open(path, "wb") as f:
        f.write(b"\x01\x02\x03")
    with pytest.raises(DatasetError, match=r"odd size \(3 bytes\)"):
        open_split(dataset_dir, "train")
    with open(path, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="holds 2 tokens but .*meta.json says"):
        open_split(dataset_dir, "train")


@pytest.mark.parametrize("change, message", [
    ({"dtype": "uint32"}, "has dtype 'uint32'"),
    ({"tokenizer": "char"}, "has tokenizer 'char'"),
    ({"vocab_size": 60000}, r"needs vocab_size >= 60000"),
])
def test_open_split_checks_meta(dataset_dir, change, message):
    write_meta(dataset_dir, {**read_meta(dataset_dir), **change})
    with pytest.raises(DatasetError, match=message + ".*make it with `python data/prepare.py"):
        open_split(dataset_dir, "val", vocab_size=50304)


def test_open_split_without_meta(dataset_dir):
    os.remove(os.path.join(dataset_dir, "meta.json"))
    assert open_split(dataset_dir, "val").size == expected_tokens(DOCS[:2]).size


def test_verify_tokens_scans_each_version_of_a_file_once(dataset_dir, monkeypatch):
    """Every id is checked against the tokenizer's vocabulary (ids 50257-50303 fit the model's padded output
    layer, so only this check catches them), with the first bad one's position; a stamp beside the file skips
    the scan until the file changes."""
    import data.tokens
    path = os.path.join(dataset_dir, "train.bin")
    stamp = path + ".verified"
    verify_tokens(path, N_VOCAB)
    assert os.path.exists(stamp)
    scans = []
    real = np.memmap
    monkeypatch.setattr(data.tokens.np, "memmap", lambda *a, **kw: scans.append(a) or real(*a, **kw))
    verify_tokens(path, N_VOCAB)
    assert scans == []  # the stamp vouched for the file
    tokens = read_bin(path).copy()
    tokens[20] = 50300
    write_tokens(path, tokens)
    with pytest.raises(DatasetError, match=r"train.bin has token id 50300 at position 20, but the tokenizer's ids "
                                           r"are below 50257; make it with `python"):
        verify_tokens(path, N_VOCAB)
    assert len(scans) == 1  # the file changed: scanned again
    tokens[20] = 7
    write_tokens(path, tokens)
    verify_tokens(path, N_VOCAB, chunk=10)  # chunked, the scan sees every id
    tokens[25] = 60000
    write_tokens(path, tokens)
    with pytest.raises(DatasetError, match="id 60000 at position 25"):
        verify_tokens(path, N_VOCAB, chunk=10)


# data/tokens.py: atomic writes


def test_write_tokens_array_and_batches(tmp_path):
    path = str(tmp_path / "x.bin")
    assert write_tokens(path, np.array([1, 2, 65535])) == 3
    np.testing.assert_array_equal(read_bin(path), [1, 2, 65535])
    batches = [np.arange(i * 10, i * 10 + 10, dtype=np.uint16)[::-1] for i in range(5)]  # non-contiguous views
    assert write_tokens(path, iter(batches)) == 50
    np.testing.assert_array_equal(read_bin(path), np.concatenate(batches))
    with pytest.raises(ValueError, match="must be in"):
        write_tokens(path, np.array([1, 65536]))


def test_interrupted_write_leaves_no_bin_and_keeps_old_one(tmp_path):
    def batches_then_crash():
        yield np.arange(100, dtype=np.uint16)
        raise KeyboardInterrupt

    path = str(tmp_path / "train.bin")
    with pytest.raises(KeyboardInterrupt):
        write_tokens(path, batches_then_crash())
    assert os.listdir(tmp_path) == []

    write_tokens(path, np.array([7, 8, 9], dtype=np.uint16))
    with pytest.raises(KeyboardInterrupt):
        write_tokens(path, batches_then_crash())
    assert os.listdir(tmp_path) == ["train.bin"]
    np.testing.assert_array_equal(read_bin(path), [7, 8, 9])


# prepare scripts


def test_enwiki_sample_prepare(tmp_path):
    result = run_script("data/enwiki_sample/prepare.py", "--out", str(tmp_path))
    assert "tokens" in result.stdout
    meta = read_meta(str(tmp_path))
    train, val = (open_split(str(tmp_path), split, vocab_size=N_VOCAB) for split in ("train", "val"))
    assert meta["tokens"] == {"train": train.size, "val": val.size}
    assert train.size > val.size > 0
    assert 1_050_000 < train.size + val.size < 1_150_000
    assert meta["documents"] == {"train": 303, "val": 34}
    assert np.count_nonzero(val == EOT) == 34
    assert gpt2_encoding().decode(val[:4].tolist()) == "Anarchism\n"  # article 0 is val


def load_script(relative_path: str):
    spec = importlib.util.spec_from_file_location("script_under_test", os.path.join(REPO_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openwebtext_loader_reads_parquet_shards_in_order(tmp_path, monkeypatch):
    owt = load_script("data/openwebtext/prepare.py")
    for shard in range(3):
        rows = [f"shard {shard} row {i}" for i in range(4)]
        Dataset.from_dict({"text": rows}).to_parquet(str(tmp_path / f"train-{shard:05d}-of-00003.parquet"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(owt, "OPENWEBTEXT_PARQUET", str(tmp_path / "train-*.parquet"))
    monkeypatch.setattr(owt, "OPENWEBTEXT_DOCUMENTS", 12)
    docs = owt.load_openwebtext(num_proc=1)
    assert docs["text"] == [f"shard {s} row {i}" for s in range(3) for i in range(4)]
    monkeypatch.setattr(owt, "OPENWEBTEXT_DOCUMENTS", 8_013_769)
    with pytest.raises(PrepareError, match="has 12 documents, expected 8,013,769"):
        owt.load_openwebtext(num_proc=1)


def test_prepare_refuses_to_replace_a_dataset_unless_asked(tmp_path):
    (tmp_path / "docs.txt").write_text("one\n\ntwo\n\nthree\n", encoding="utf-8")
    out = tmp_path / "data" / "mine"
    common = ("--input", str(tmp_path / "docs.txt"), "--split_blank_lines", "--out", str(out))
    run_script("data/prepare.py", *common)
    before = {name: (out / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")}
    line = prepare_error_line(*common)
    assert f"--out {out} already holds a dataset (train.bin, val.bin, meta.json)" in line and "--overwrite" in line
    assert {name: (out / name).read_bytes() for name in before} == before
    run_script("data/prepare.py", *common, "--overwrite")


def test_openwebtext_input_errors_are_one_line(tmp_path):
    (tmp_path / "page.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    for path, message in ((tmp_path / "missing.jsonl", "No such file or directory"),
                          (tmp_path / "page.jsonl", "page.jsonl:2 has no 'text' field")):
        result = subprocess.run([sys.executable, "data/openwebtext/prepare.py", "--input", str(path), "--out",
                                 str(tmp_path / "owt")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert message in one_line_failure(result)
    assert not (tmp_path / "owt").exists()


def test_openwebtext_from_an_unreachable_hub_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "data/openwebtext/prepare.py", "--out", str(tmp_path / "owt"),
                             "--num_proc", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    line = one_line_failure(result)
    assert "cannot load OpenWebText from the Hugging Face Hub" in line and "--input" in line
    assert not (tmp_path / "owt").exists()


def test_openwebtext_prepare_with_local_input(tmp_path):
    docs = [f"Web page {i}." for i in range(10)]
    (tmp_path / "owt.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    run_script("data/openwebtext/prepare.py", "--input", str(tmp_path / "owt.jsonl"), "--out", str(tmp_path / "owt"),
               "--num_proc", "1")
    meta = read_meta(str(tmp_path / "owt"))
    assert meta["documents"] == {"train": 9, "val": 1}  # ceil(0.0005 * 10) = 1
    assert "seed=2357" in meta["source"]


# data/enwiki/prepare.py: the corpus rebuilt from its public source

def wikiextractor_source(folder, articles):
    """The source's layout (text/AA/wiki_00 ... text/AD/wiki_99) with `articles` (title, body) as WikiExtractor
    writes them, spread over the first three files; the other files empty."""
    enwiki = load_script("data/enwiki/prepare.py")
    for name in enwiki.SOURCE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("")
    for i, (title, body) in enumerate(articles):
        with open(folder / enwiki.SOURCE_FILES[i % 3], "a", encoding="utf-8") as f:
            f.write(f'<doc id="{i}" url="https://en.wikipedia.org/wiki?curid={i}" title="{title}">\n'
                    f"{title}\n\n{body}\n</doc>\n")
    return enwiki


def shipped_articles():
    """(title, body) of the articles of the embedded Wikipedia sample (its raw text, shipped in the repository)."""
    text = lzma.open(os.path.join(REPO_ROOT, "data", "enwiki_sample", "enwiki-sample.txt.xz"), "rt").read()
    return [tuple(article.split("\n", 1)) for article in text.strip().split("\n\n")]


def test_enwiki_processing_on_documents_in_the_sources_format(tmp_path):
    """The rebuild's processing, on the sample's articles written as WikiExtractor files, with a short document
    among them and small split and cap settings: documents in file order (wiki_00, wiki_01, ...), short ones
    dropped, every val_every-th of the rest val, training documents taken until the next would pass the cap,
    which ends both splits; tokens are encode_ordinary + EOT."""
    articles = shipped_articles()[:40]
    articles.insert(5, ("Stub", "Too short."))  # under 200 characters: dropped
    enwiki = wikiextractor_source(tmp_path, articles)
    in_file_order = [articles[i] for f in range(3) for i in range(len(articles)) if i % 3 == f]
    documents = list(enwiki.source_documents(str(tmp_path)))
    assert documents == [f"{title}\n\n{body}".strip() for title, body in in_file_order]

    encode = gpt2_encoding().encode_ordinary
    kept = [doc for doc in documents if len(doc) >= 200]
    assert len(kept) == len(documents) - 1
    tokens = [np.array(encode(doc) + [EOT], dtype=np.uint16) for doc in kept]
    cap = sum(t.size for i, t in enumerate(tokens[:30]) if i % 7)  # the training documents among the first 30
    splits = enwiki.select(documents, encode, val_every=7, train_tokens=cap)
    assert [t.tolist() for t in splits["val"]] == [tokens[i].tolist() for i in range(0, 30, 7)]
    assert [t.tolist() for t in splits["train"]] == [tokens[i].tolist() for i in range(30) if i % 7]
    assert sum(t.size for t in splits["train"]) == cap  # the 31st document would pass it


def test_enwiki_rebuild_checks_the_published_sha256(tmp_path, monkeypatch):
    """Documents that are not the corpus give tokens whose sha256 is not the published one: one line, nothing
    kept. Offline, the download says how to go on without internet."""
    enwiki = wikiextractor_source(tmp_path / "source", shipped_articles()[:12])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(enwiki.CorpusError, match=r"does not give the published train.bin .*nothing was kept"):
        enwiki.rebuild(str(tmp_path / "source"), str(out))
    assert os.listdir(out) == []
    monkeypatch.setattr(enwiki, "SOURCE", "http://127.0.0.1:9/")  # nothing listens there
    with pytest.raises(enwiki.CorpusError, match=r"cannot download http://127.0.0.1:9/text/AA/wiki_00 .*--src"):
        enwiki.download(str(tmp_path / "cache"))
    assert not glob_files(tmp_path / "cache")


def test_enwiki_download_fetches_each_source_file_once(tmp_path, monkeypatch):
    """The download (from a file:// copy here) keeps the source's layout and skips what it already has."""
    source = tmp_path / "source"
    enwiki = wikiextractor_source(source, shipped_articles()[:3])
    monkeypatch.setattr(enwiki, "SOURCE", source.as_uri() + "/")
    cache = tmp_path / "cache"
    enwiki.download(str(cache))
    assert all((cache / name).read_bytes() == (source / name).read_bytes() for name in enwiki.SOURCE_FILES)
    fetched = []
    monkeypatch.setattr(enwiki.urllib.request, "urlopen", lambda *a, **kw: fetched.append(a))
    enwiki.download(str(cache))
    assert fetched == []


def glob_files(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
