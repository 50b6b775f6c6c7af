"""Small shared helpers: seeds, devices, threads, the epoch progress bar, and the one
atomic (umask-correct) writer of files and folders.

torch is imported only by the functions that need it, so that the command line
can check its arguments and paths before loading the numerical libraries.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from .errors import AMEDLConfigError


def whole_number(name: str, value, low: int, *, error: type[Exception] = AMEDLConfigError,
                 none_means: str | None = None):
    """``value`` as a Python int when it is a whole number >= ``low`` (bools are not numbers here).

    ``none_means`` allows ``None`` and says what it means in the error; otherwise ``error`` names the problem.
    """
    import numpy as np

    if value is None and none_means is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        also = f" (or None: {none_means})" if none_means is not None else ""
        raise error(f"{name} must be a whole number >= {low}{also}, got {value!r}")
    return int(value)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a fit is reproducible on the CPU."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device="auto"):
    """The ``torch.device`` for a setting: ``"auto"`` is CUDA when PyTorch sees a
    GPU, else the CPU; anything else must name a device that exists here.

    Raises :class:`~amedl.errors.AMEDLConfigError` for an unknown device name, a GPU
    when PyTorch sees none, or a GPU index beyond the ones it sees.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise AMEDLConfigError(f"device {device!r} is not a device PyTorch knows; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AMEDLConfigError(
                f"device {str(device)!r}: PyTorch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}); use 'cpu' or 'auto' (device=..., command line --device)"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise AMEDLConfigError(
                f"device {str(device)!r}: there is no GPU {dev.index}; PyTorch sees {n} GPU(s) "
                f"({', '.join(f'cuda:{i}' for i in range(n))})"
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise AMEDLConfigError(f"device {str(device)!r}: PyTorch has no MPS (Apple GPU) backend here; use 'cpu' or 'auto'")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise AMEDLConfigError(f"device {str(device)!r}: PyTorch has no {dev.type!r} device here; use 'cpu' or 'auto'")
    return dev


# ---------------------------------------------------------------------------------- threads

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_environment(n: int) -> None:
    """Set the thread variables of OpenMP, MKL, OpenBLAS and numba to ``n`` for
    libraries not imported yet (the command line calls this before importing them)."""
    for var in _THREAD_VARS:
        if var == "NUMBA_NUM_THREADS" and "numba" in sys.modules:
            # numba re-reads its environment at each compilation and refuses a
            # NUMBA_NUM_THREADS that differs from its running pool
            continue
        os.environ[var] = str(int(n))
    _numba_threads(int(n))


def apply_threads(n: int | None) -> int | None:
    """Use ``n`` CPU threads in torch, numba and BLAS (threadpoolctl) from now on.

    ``None`` keeps the libraries' defaults, except that numba, which ignores
    ``OMP_NUM_THREADS``, follows it when it is set (and ``NUMBA_NUM_THREADS`` is not).
    Returns the number applied (``None`` when nothing was changed).
    """
    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0 and "NUMBA_NUM_THREADS" not in os.environ:
            # numba's pool starts with every core unless told, and with the OpenMP runtime it shares
            # with torch that raises torch's thread count too, in the middle of a fit
            if "numba" not in sys.modules:
                os.environ["NUMBA_NUM_THREADS"] = env  # sizes the pool when numba is imported
            else:  # imported already (by scanpy): start its pool now, then give torch its count back
                try:
                    from numba.np.ufunc import parallel

                    parallel._launch_threads()
                except Exception:  # pragma: no cover - numba internals
                    pass
                import torch

                torch.set_num_threads(int(env))
            _numba_threads(int(env))
        return None
    n = int(n)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(n)  # sizes numba's pool when it is imported
    _numba_threads(n)
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    return n


def _numba_threads(n: int) -> None:
    numba = sys.modules.get("numba")
    if numba is None:
        return
    try:
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # pragma: no cover - a numba without a threading layer
        pass


# ---------------------------------------------------------------------------------- progress


#: Seconds between refreshes of a progress bar that writes to a file or pipe (a log,
#: R's console, CI) instead of a terminal, where every refresh is a new chunk of text.
OFF_TERMINAL_REFRESH = 10.0


def progress_bar(iterable=None, **tqdm_options):
    """A :class:`tqdm.auto.tqdm` bar; off a terminal (and outside notebooks) it
    refreshes at most every :data:`OFF_TERMINAL_REFRESH` seconds unless
    ``mininterval`` is given."""
    from tqdm.auto import tqdm

    stream = tqdm_options.get("file") or sys.stderr
    on_terminal = getattr(stream, "isatty", lambda: False)()
    if not on_terminal and "notebook" not in tqdm.__module__:
        tqdm_options.setdefault("mininterval", OFF_TERMINAL_REFRESH)
    return tqdm(iterable, **tqdm_options)


def epoch_bar(max_epochs: int, desc: str = "training", disable: bool = False, **tqdm_options):
    """An iterator over epochs ``1..max_epochs`` with a progress bar that shows the
    epochs run, time and speed, but no ETA: early stopping usually ends training well
    before the budget, so a bar towards the budget would promise too much. ``tqdm_options``
    go to :class:`tqdm.tqdm` (``file``, ``mininterval``, ...)."""
    fmt = "{desc}: epoch {n_fmt} (budget " + str(int(max_epochs)) + ") [{elapsed}, {rate_fmt}{postfix}]"
    return progress_bar(iter(range(1, int(max_epochs) + 1)), total=None, desc=desc, disable=disable, leave=False,
                        unit="epoch", bar_format=fmt, **tqdm_options)


# ---------------------------------------------------------------------------------- atomic writes

#: Temporaries and set-aside old versions are named ``.NAME.amedl-tmp-HOST-PID-XXXX``
#: (``amedl-old`` for old versions) beside their target: a later write to the same
#: target removes those whose process on this host has ended (and restores an old
#: version whose replacement never arrived).
_TAG = re.compile(r"\.amedl-(tmp|old)-([0-9a-f]{8})-(\d+)-")
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes to ``path`` left beside it (temporaries of
    processes on this host that have ended); an old version that was set aside
    and never replaced is put back. Returns what was removed or restored."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    head, host, done = f".{path.name}.amedl-", _host(), []
    try:
        entries = [p for p in path.parent.iterdir() if p.name.startswith(head)]
    except OSError:
        return []
    for p in sorted(entries, key=lambda p: p.name):
        m = _TAG.match(p.name, len(path.name) + 1)
        if not m or m.group(2) != host or _alive(int(m.group(3))):
            continue
        if m.group(1) == "old" and not os.path.lexists(path):
            os.replace(p, path)  # the replacement never arrived: the old version comes back
        else:
            _remove(p)
        done.append(p)
    return done


def target_path(path: str | os.PathLike) -> Path:
    """Where a write to ``path`` lands: an absolute path, through a symbolic link to its target."""
    path = Path(os.path.expanduser(os.fspath(path)))
    return Path(os.path.realpath(path)) if path.is_symlink() else path.absolute()


class Staging:
    """Files and folders written beside their targets and committed together: all or none.

    :meth:`add` returns a temporary path for a target (missing parent folders
    are created; stale temporaries of interrupted writes to it are cleaned);
    write the content there. :meth:`commit` moves every temporary into place
    in the order added; if one move fails, those already made are undone. A
    new file or folder gets the permissions of the user's umask (``0o666`` /
    ``0o777`` masked); a file that is replaced keeps its permissions.
    :meth:`discard` (also at the end of a ``with`` block) removes what was not
    committed. An existing folder target is replaced whole: check what it
    holds before adding it (:mod:`amedl.modelfile` does so for model folders).
    """

    def __init__(self):
        self._items: list[tuple[Path, Path, bool]] = []

    def add(self, path: str | os.PathLike, *, directory: bool = False) -> Path:
        """A temporary beside ``path`` (same suffix; a folder with ``directory=True``)."""
        target = target_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        prefix = f".{target.name}.amedl-tmp-{_host()}-{os.getpid()}-"
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix or ".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
        self._items.append((target, tmp, directory))
        return tmp

    def commit(self) -> None:
        """Move every temporary into place (all or none)."""
        done: list[tuple[Path, Path | None]] = []
        try:
            for i, (target, tmp, directory) in enumerate(self._items):
                old = target.stat() if target.exists() and not directory else None
                mode = stat.S_IMODE(old.st_mode) if old else (0o777 if directory else 0o666) & ~_umask()
                os.chmod(tmp, mode)
                last = i == len(self._items) - 1
                backup = None
                if os.path.lexists(target) and (directory or not last):
                    backup = Path(f"{target.parent}/.{target.name}.amedl-old-{_host()}-{os.getpid()}-{i}")
                    _remove(backup)
                    os.replace(target, backup)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, target)
                    raise
                done.append((target, backup))
        except BaseException:
            for target, backup in reversed(done):
                if backup is not None:
                    aside = Path(f"{target.parent}/.{target.name}.amedl-tmp-{_host()}-{os.getpid()}-undo")
                    os.replace(target, aside)
                    os.replace(backup, target)
                    _remove(aside)
                else:
                    _remove(target)
            raise
        for _, backup in done:
            if backup is not None:
                _remove(backup)
        self._items = []

    def discard(self) -> None:
        """Remove the temporaries that were not committed."""
        for _, tmp, _ in self._items:
            _remove(tmp)
        self._items = []

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Write a file (or, with ``directory=True``, a folder) atomically.

    Yields a temporary path beside ``path`` (same folder, so the final rename
    is atomic); write the content there. When the block ends without an
    error, the temporary replaces ``path`` (an existing folder is swapped out
    and removed); a new file or folder gets the permissions of the user's
    umask, a replaced file keeps its own. On an error the temporary is
    removed and ``path`` is left as it was. Missing parent folders are
    created. See :class:`Staging` for several targets committed together.

    Examples
    --------
    >>> with atomic_path("out/table.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    with Staging() as stage:
        yield stage.add(path, directory=directory)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """``open(path, mode)`` for writing, atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
