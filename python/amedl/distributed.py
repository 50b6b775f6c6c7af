"""Data-parallel training on ``torch.distributed`` (DistributedDataParallel).

Every rank (one process, started by ``torchrun``) holds the same model and
trains on its own shard of the training cells; DDP averages the gradients
after each backward pass, so the weights stay identical on every rank. The
pieces:

- :func:`init_from_env` joins the process group that ``torchrun`` describes in
  the environment (``gloo`` on CPUs, ``nccl`` on GPUs);
- :class:`ShardedLoader` gives each rank, every epoch, a fresh shard of the
  training cells, stratified by batch (every batch is represented on every
  rank) and of equal size on every rank (DDP needs the same number of steps);
- :func:`wrap_plan` routes a training plan's modules through DDP: the FE
  adversary and autoencoder are two DDP modules (two optimisers, alternating
  steps), the RE network one; no unused-parameter search;
- :func:`reduce_sums` / :func:`reduce_means` make the epoch's training and
  validation losses those of all ranks, the same bits everywhere, so early
  stopping decides identically on every rank;
- :func:`launch` starts ``N`` local ranks through torchrun's own launcher
  (``amedl fit ... --nproc N``).

Only rank 0 reports progress and writes outputs.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

#: The environment variables torchrun sets for every worker.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Set by :func:`launch` for its ranks: the folder where each rank leaves its error
#: message for the launcher, which reports the failure once.
_MESSAGES_VAR = "AMEDL_RANK_MESSAGES"


def launched() -> bool:
    """Whether this process is a worker of a multi-process ``torchrun`` launch."""
    return all(v in os.environ for v in _LAUNCH_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    if active():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    if active():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


def init_from_env(backend: str | None = None) -> str | None:
    """Join the process group described by torchrun's environment variables.

    ``backend`` defaults to ``nccl`` when CUDA is available (each rank then uses
    GPU ``LOCAL_RANK``) and ``gloo`` otherwise. Does nothing outside a
    multi-process launch or when the group exists already. Returns the backend
    used, or ``None``.
    """
    if not launched():
        return None
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_backend()
    global _LAUNCHER
    _LAUNCHER = os.getppid()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    return backend


#: The process that started this rank (its parent when the group was joined), or None.
_LAUNCHER: int | None = None


def orphaned() -> bool:
    """Whether this rank's launcher has gone (e.g. killed with SIGKILL, which it cannot pass on):
    the rank was re-parented. Such a rank must not go on to write outputs."""
    return _LAUNCHER is not None and os.getppid() != _LAUNCHER


def check_launcher() -> None:
    """Stop every rank together when any rank's launcher has gone (a collective: every rank
    calls it, once per epoch); an AMEDLError, so that nothing is written."""
    if not active():
        return
    import torch

    if all_reduce_sum(torch.tensor([float(orphaned())], dtype=torch.float64)).item() > 0:
        _launcher_gone()


def check_launcher_here() -> None:
    """:func:`check_launcher` for this rank alone (rank 0, before it writes the outputs)."""
    if orphaned():
        _launcher_gone()


def _launcher_gone():
    from .errors import AMEDLError

    raise AMEDLError("the process that launched the ranks has gone (killed?); the ranks stop without writing")


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------ sharding


def stratified_shard(rows: np.ndarray, codes: np.ndarray, rank: int, world: int, rng: np.random.Generator,
                     equal: bool = True) -> np.ndarray:
    """This rank's share of ``rows`` (sorted): the cells of each batch are shuffled
    and dealt in turn to the ranks, so every batch with at least ``world`` cells is
    on every rank. With ``equal`` every rank gets ``len(rows) // world`` cells (at
    most ``world - 1`` cells, different ones each call, are left out)."""
    rows = np.asarray(rows, dtype=np.int64)
    c = codes[rows]
    dealt = np.concatenate([rng.permutation(rows[c == b]) for b in np.unique(c)]) if len(rows) else rows
    mine = dealt[rank::world]
    if equal:
        mine = mine[: len(rows) // world]
    return np.sort(mine)


class ShardedLoader:
    """A loader (anything with ``rows``, ``batch_size`` and ``drop_last``, such as
    :class:`~amedl.data.CSRLoader`) that reads only this rank's shard of its rows.

    The shard is dealt again every epoch (the same on every rank for a seed), so
    over epochs every cell is seen, and every rank runs the same number of steps.
    The minibatch per rank is the loader's minibatch divided by the number of
    ranks: one step of all ranks together sees as many cells as one step of a
    single process, so the optimisation is that of a single process.
    """

    def __init__(self, loader, codes: np.ndarray, seed: int, *, train: bool = True):
        self.loader, self.codes, self.train = loader, np.asarray(codes), train
        self.rank, self.world = rank(), world_size()
        self.all_rows = np.asarray(loader.rows, dtype=np.int64).copy()
        self.seed, self.epoch = int(seed), 0
        if train:
            per_rank = len(self.all_rows) // self.world
            loader.batch_size = max(2, min(per_rank, -(-loader.batch_size // self.world)))
            loader.drop_last = per_rank % loader.batch_size == 1
        self._deal()

    def _deal(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch, 104_729])
        self.loader.rows = stratified_shard(self.all_rows, self.codes, self.rank, self.world, rng, equal=self.train)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.train and self.epoch > 0:
            self._deal()
        self.epoch += 1
        return iter(self.loader)


def check_shardable(n_train: int, n_val: int) -> None:
    """Refuse data too small to give every rank training and validation cells."""
    from .errors import AMEDLConfigError

    world = world_size()
    if n_train < 2 * world or n_val < world:
        raise AMEDLConfigError(
            f"{n_train} training and {n_val} validation cells are too few for {world} processes "
            f"(each needs at least 2 training cells and 1 validation cell); use fewer processes"
        )


# ------------------------------------------------------------------------------ DDP


def _ddp_classes():
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    class Entry(nn.Module):
        """``module.<method>`` as a ``forward``, so that DDP can wrap a method other than forward."""

        def __init__(self, module: nn.Module, method: str):
            super().__init__()
            self.module, self.method = module, method

        def forward(self, *args, **kwargs):
            return getattr(self.module, self.method)(*args, **kwargs)

    class Synced:
        """A module whose ``method`` runs through DDP when it builds a graph for a
        training step (gradients then reach DDP's all-reduce); every other use
        (evaluation, inference, a step that freezes it, its other methods) goes to
        the module itself."""

        def __init__(self, module: nn.Module, method: str):
            self._module, self._method = module, method
            device = next(module.parameters()).device
            self._ddp = DistributedDataParallel(
                Entry(module, method), device_ids=None if device.type == "cpu" else [device],
                find_unused_parameters=False,
            )

        def _run(self, *args, **kwargs):
            m = self._module
            if torch.is_grad_enabled() and m.training and any(p.requires_grad for p in m.parameters()):
                return self._ddp(*args, **kwargs)
            return getattr(m, self._method)(*args, **kwargs)

        def __call__(self, *args, **kwargs):
            return self._run(*args, **kwargs) if self._method == "forward" else self._module(*args, **kwargs)

        def __getattr__(self, name):
            if name == self._method:
                return self._run
            return getattr(self._module, name)

    return Synced


#: The modules of the training plans that DDP wraps, and the method that opens each step's graph.
_ENTRIES = {"ae": "encode", "advs": "forward", "membership": "forward", "re": "forward"}


def wrap_plan(plan) -> None:
    """Route the plan's trainable modules through DistributedDataParallel (in place).

    Each module named in ``_ENTRIES`` (or each module of a list so named, such
    as the FE plan's adversaries) becomes its own DDP module (their parameters
    are disjoint): the adversaries' and the autoencoder's steps of the FE plan
    each all-reduce their own gradients. The optimisers keep the same
    parameter tensors.
    """
    from torch import nn

    Synced = _ddp_classes()
    for attr, method in _ENTRIES.items():
        module = getattr(plan, attr, None)
        if isinstance(module, nn.Module):
            setattr(plan, attr, Synced(module, method))
        elif isinstance(module, list) and module and all(isinstance(m, nn.Module) for m in module):
            setattr(plan, attr, [Synced(m, method) for m in module])


# ------------------------------------------------------------------------------ reductions


def all_reduce_sum(t):
    """``t`` summed over all ranks, in place (unchanged when not distributed)."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_first(t):
    """Rank 0's ``t`` on every rank, in place (unchanged when not distributed)."""
    if active():
        import torch.distributed as dist

        dist.broadcast(t, src=0)
    return t


def _agreed(values: Sequence[float], op: str) -> list[float]:
    import torch
    import torch.distributed as dist

    backend = dist.get_backend()
    t = all_reduce_sum(torch.tensor(list(values), dtype=torch.float64, device="cuda" if backend == "nccl" else "cpu"))
    if op == "mean":
        t /= dist.get_world_size()
    broadcast_from_first(t)  # the same bits on every rank, whatever the reduction's order
    return t.cpu().tolist()


def reduce_sums(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    """``sums`` and count ``n`` summed over all ranks (unchanged when not distributed)."""
    if not active():
        return sums, n
    keys = list(sums)
    total = _agreed([float(n), *(sums[k] for k in keys)], "sum")
    return dict(zip(keys, total[1:])), int(round(total[0]))


def reduce_means(means: dict[str, float]) -> dict[str, float]:
    """Per-rank means averaged over ranks (every rank runs the same number of steps)."""
    if not active() or not means:
        return means
    keys = list(means)
    return dict(zip(keys, _agreed([means[k] for k in keys], "mean")))


def gather(value) -> list:
    """``value`` of every rank, in rank order (``[value]`` when not distributed)."""
    if not active():
        return [value]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


# ------------------------------------------------------------------------------ launching


def report_to_launcher(message: str) -> bool:
    """In a rank started by :func:`launch`: leave ``message`` (the rank's one-line
    error) for the launcher, which reports the failure once, and return ``True``;
    elsewhere (one process, or ranks started by ``torchrun`` directly) ``False``."""
    folder = os.environ.get(_MESSAGES_VAR)
    if not folder or not launched():
        return False
    if orphaned():  # no launcher reads it any more: its folder is left to whoever is last
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return False
    try:
        with open(os.path.join(folder, f"rank{int(os.environ['RANK'])}.txt"), "w") as f:
            f.write(message)
    except OSError:
        return False
    return True


def _failure_message(first: int, failure, folder: str, nproc: int) -> str:
    """What the launcher says when rank ``first`` failed first: its own message, or how it died."""
    messages = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            messages[name] = f.read().strip()
    message = messages.get(f"rank{first}.txt")
    if message:  # the same on every rank that left one (an error in the data): said once, without a rank
        return message if len(set(messages.values())) == 1 else f"{message} (rank {first} of {nproc})"
    code = getattr(failure, "exitcode", None)
    if isinstance(code, int) and code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = "; out of memory? try fewer processes or --backed" if name == "SIGKILL" else ""
        return f"rank {first} of {nproc} was killed by {name}{hint}; nothing was written"
    return f"rank {first} of {nproc} failed (exit status {code}) without a message; rerun with --debug"


def launch(argv: Sequence[str], nproc: int, module: str = "amedl.cli", *, quiet: bool = True) -> int:
    """Run ``python -m module argv`` in ``nproc`` processes on this machine with
    torchrun's launcher (``torch.distributed.run``, standalone rendezvous).

    Returns 0 when every rank succeeded. Otherwise the ranks print nothing
    themselves and the launcher raises once: :class:`~amedl.errors.AMEDLError`
    with the message of the rank that failed first (or how it died), or
    :class:`KeyboardInterrupt` when the launch was interrupted (Ctrl-C, SIGTERM).
    ``quiet``: without the launcher's own log lines about the ranks.
    """
    import tempfile

    from ._utils import whole_number
    from .errors import AMEDLError

    nproc = whole_number("the number of processes", nproc, 1)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--module", module, *argv]
    )
    if quiet:  # torchrun's loggers set their own levels when created
        import logging

        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="amedl-ranks-") as folder:
        before = os.environ.get(_MESSAGES_VAR)
        os.environ[_MESSAGES_VAR] = folder  # the ranks inherit it
        try:
            run(args)
        except SignalException:  # torchrun's own handlers catch Ctrl-C / SIGTERM and stop the ranks
            raise KeyboardInterrupt from None
        except ChildFailedError as exc:
            if not exc.failures:
                raise AMEDLError(f"the launch of {nproc} processes failed; rerun with --debug") from None
            first, failure = exc.get_first_failure()  # the earliest, not the ranks stopped because of it
            raise AMEDLError(_failure_message(first, failure, folder, nproc)) from None
        finally:
            if before is None:
                os.environ.pop(_MESSAGES_VAR, None)
            else:
                os.environ[_MESSAGES_VAR] = before
    return 0
