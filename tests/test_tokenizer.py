import os
import shutil

import pytest
import tiktoken

import training.tokenizer as tokenizer
from training.tokenizer import EOT, N_VOCAB, gpt2_encoding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# makes tiktoken.get_encoding("gpt2") work offline (see ../shared/tokenizer/README.md)
TIKTOKEN_CACHE = os.path.join(REPO_ROOT, "..", "shared", "tokenizer", "tiktoken_cache")

MIXED_TEXT = "".join([
    "Hello world! The quick brown fox jumps over the lazy dog. It's, we're, they'll, I've, she'd.\n",
    "def f(x: int) -> int:\n\treturn x ** 2  # square\n\n    if x != 0: print(f'{x=}')\r\n",
    "Numbers: 0 1 12 123 1234 3.14159 -42 1e-9 1,000,000 0xFF 2024-01-31 12:30:45\n",
    "Русский текст, 中文文本，日本語のテキスト、한국어 텍스트, العربية, עברית, हिन्दी, ελληνικά, ไทย\n",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇫🇷 ❤️ ✓ → ∑ ∞ ≠ ≤ © ® ™ € £ ¥\n",
    "Whitespace:   three  two\t\ttabs \u00a0nbsp \u200bzwsp \ufeffbom      \n\n\n\r\n\r\nend   ",
    "Special text stays text: <|endoftext|> and <|fim_prefix|>.\n",
]) * 6


def test_known_ids():
    enc = gpt2_encoding()
    assert enc.n_vocab == N_VOCAB == 50257
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [EOT] == [50256]
    assert EOT not in enc.encode_ordinary("<|endoftext|>")


def test_roundtrip_on_mixed_text():
    assert len(MIXED_TEXT) > 2000
    enc = gpt2_encoding()
    ids = enc.encode_ordinary(MIXED_TEXT)
    assert max(ids) < EOT
    assert enc.decode(ids) == MIXED_TEXT


def test_encoding_is_cached_and_sources_agree():
    assert gpt2_encoding() is gpt2_encoding("auto") is gpt2_encoding("file")
    with pytest.raises(ValueError, match="unknown tokenizer source"):
        gpt2_encoding("huggingface")


def test_same_ids_as_tiktoken(monkeypatch):
    if os.path.isdir(TIKTOKEN_CACHE):
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
    try:
        reference = tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no offline cache
        pytest.skip(f"tiktoken's gpt2 encoding is unavailable offline: {e}")
    ours = gpt2_encoding()
    assert ours.encode_ordinary(MIXED_TEXT) == reference.encode_ordinary(MIXED_TEXT)
    assert ours.encode(MIXED_TEXT, allowed_special="all") == reference.encode(MIXED_TEXT, allowed_special="all")
    assert ours.n_vocab == reference.n_vocab


def test_corrupted_or_missing_ranks_file(tmp_path):
    corrupted = tmp_path / "gpt2.tiktoken"
    shutil.copy(tokenizer.RANKS_PATH, corrupted)
    with open(corrupted, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    with pytest.raises(ValueError, match="corrupted .*git checkout -- data/gpt2.tiktoken"):
        tokenizer.load_ranks(str(corrupted))
    with pytest.raises(FileNotFoundError, match="missing: .*git checkout -- data/gpt2.tiktoken"):
        tokenizer.load_ranks(str(tmp_path / "nope.tiktoken"))


def test_shipped_ranks_file():
    ranks = tokenizer.load_ranks()
    assert len(ranks) == N_VOCAB - 1
    assert sorted(ranks.values()) == list(range(N_VOCAB - 1))
