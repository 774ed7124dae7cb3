import numpy as np
import pytest
import torch

from data.tokens import write_tokens


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors on a shared 2-core machine: more intra-op threads only add contention (10-50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_tiny_dataset(folder):
    """data/<name>/{train,val}.bin in `folder` (a pathlib.Path): token ids with some structure (each token
    is likely the previous one + 1), so the loss falls, and ids far below the vocabulary size."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40_000), ("val", 8_000)):
        steps = np.where(rng.random(n) < 0.7, 1, rng.integers(0, 512, n))
        write_tokens(str(folder / f"{split}.bin"), (np.cumsum(steps) % 512).astype(np.uint16))


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """In-process training runs are single-process runs, even under a launcher that set these."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A folder holding data/tiny/{train,val}.bin (write_tiny_dataset), for runs started from it."""
    root = tmp_path_factory.mktemp("root")
    write_tiny_dataset(root / "data" / "tiny")
    return root
