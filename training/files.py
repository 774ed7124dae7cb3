"""Files written whole or not at all: a crash or a kill mid-write never leaves a truncated file under the real
name (checkpoints, token files)."""

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Write to a temporary file beside path and rename it to path only once it is complete and on disk,
    so a crash never leaves a truncated file under the real name (an existing file stays as it was). The
    temporary name is the process's own: processes writing the same file at once (bench.py under
    torchrun) each rename a whole one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    # make the rename itself durable
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
