"""Small shared helpers: seeds, devices, and the one atomic (umask-correct) writer of files and folders."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a fit is reproducible on the CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when PyTorch sees a GPU, else the CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Write a file (or, with ``directory=True``, a folder) atomically.

    Yields a temporary path beside ``path`` (same folder, so the final rename
    is atomic); write the content there. When the block ends without an
    error, the temporary gets the permissions a new file or folder gets under
    the user's umask (``0o666`` / ``0o777`` masked) and replaces ``path``
    (an existing folder is swapped out and removed). On an error the
    temporary is removed and ``path`` is left as it was. Missing parent
    folders are created.

    Examples
    --------
    >>> with atomic_path("out/table.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, dir_ = f".{path.name}.", path.parent
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dir_))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix or ".tmp", dir=dir_)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        if directory and path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=dir_))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``open(path, mode)`` for writing, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
