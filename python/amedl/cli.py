"""The ``amedl`` command: ``fit``, ``embed``, ``benchmark``, ``demo`` (every command's arguments are here).

Every setting, input and output path is checked before any work starts, and
before the numerical libraries are imported (``amedl --version`` and argument
or file errors answer in about a second). A user's error ends the command
with exit status 1 (2 for a usage error) and one line ``amedl: <what to
fix>``; ``--debug`` adds the traceback. Outputs are written beside their
targets and moved into place at the end (``fit``: the output and the model
folder together, both or neither).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import signal
import threading
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .config import ADAPT_STEPS
from .errors import AMEDLError, AMEDLInputError, AMEDLPathError
from .io._formats import FORMATS_TEXT, SUFFIXES


#: Set by a SIGTERM or Ctrl-C (see _terminate_as_interrupt).
_TERMINATED = threading.Event()

_MAX_MESSAGE = 900
#: Libraries whose INFO/WARNING logging is hidden unless --verbose.
_NOISY_LOGGERS = ("scib_metrics", "jax", "jax._src", "absl", "numba", "anndata", "scanpy", "scvi", "lightning",
                  "lightning.pytorch", "pytorch_lightning", "harmonypy", "h5py", "matplotlib", "PIL", "rpy2")


class UsageError(Exception):
    """A command line that argparse cannot parse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _whole(low: int):
    """An argparse type: a whole number >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {value}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


# ------------------------------------------------------------------------------ checks before work


def _probe_writable(folder: Path, what: str) -> None:
    """Fail now, not after training, if nothing can be created in ``folder`` (its nearest existing ancestor)."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise AMEDLPathError(f"cannot write {what}: {existing} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".amedl-probe-", dir=existing)
    except OSError as exc:
        raise AMEDLPathError(f"cannot write {what}: {existing} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)


def _check_output(path: str) -> Path:
    """An output file path: a known suffix, not a folder, in a writable place."""
    out = Path(os.path.expanduser(path))
    if out.suffix.lower() not in SUFFIXES:
        raise AMEDLPathError(f"cannot write {path}: unknown suffix {out.suffix!r}; the output must be {FORMATS_TEXT}")
    if out.is_dir():
        raise AMEDLPathError(f"--out {path} is a folder; give a file name such as {out / ('result' + out.suffix)}")
    _probe_writable(out.parent, path)
    return out


def _check_input(path: str, columns: dict, layer: str | None = None) -> dict | None:
    """The input exists, is readable, has a known suffix and (``.h5ad``, without reading it whole) the columns."""
    from . import io

    info = io.peek(path)
    io.check_columns(info, path, columns, layer)
    return info


def _check_model_dir(path: str | None, overwrite: bool, out: Path | None) -> None:
    if not path:
        return
    from . import modelfile

    folder = Path(os.path.expanduser(path)).absolute()
    modelfile.check_target(folder, overwrite, flag="--overwrite")
    if out is not None:
        _check_out_apart(out, path, "--model-dir")
    _probe_writable(folder.parent, f"the model folder {path}")


def _check_out_apart(out: Path, folder: str, flag: str) -> None:
    """The output file is neither the model folder ``folder`` (given as ``flag``) nor inside it."""
    where, o = Path(os.path.expanduser(folder)).resolve(), out.resolve()
    if o == where:
        raise AMEDLPathError(f"--out {out} and {flag} {folder} are the same path; the output file and the model "
                             "folder must be apart")
    if where in o.parents:
        raise AMEDLPathError(f"--out {out} is inside {flag} {folder}; put the output elsewhere")


def _settings(args) -> dict:
    """The engine settings given on the command line, checked now (amedl.config's rules)."""
    from .config import make_config

    names = ("n_latent", "n_top_genes", "device", "threads")
    settings = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    make_config(args.preset, **settings)
    if settings.get("device") not in (None, "auto", "cpu"):
        from ._utils import resolve_device

        resolve_device(settings["device"])  # a GPU that is not there is an error now, not after preprocessing
    return settings


def _r_options(args) -> dict:
    """``--object-name`` / ``--assay`` as :func:`amedl.io.read`'s keywords; an error for an input they cannot apply to."""
    given = {k: v for k, v in (("object_name", args.object_name), ("assay", args.assay)) if v is not None}
    suffix = Path(args.input).suffix.lower()
    if given and suffix == ".h5ad":
        flags = " and ".join(f"--{k.replace('_', '-')}" for k in given)
        raise AMEDLInputError(f"{flags} choose{'s' if len(given) == 1 else ''} what to read from an R file "
                              f"(.rds / .rda / .RData); {args.input} is an .h5ad: drop {flags}")
    return given


def _read(path: str, **kwargs):
    from . import io

    adata = io.read(path, **kwargs)
    _stop_if_terminated()  # R (through rpy2) swallows a Ctrl-C that lands in its callbacks
    return adata


def _require_columns(adata, path: str, columns: dict, layer: str | None = None) -> None:
    """The columns' check for inputs :func:`amedl.io.peek` cannot look into (R files)."""
    from . import io

    io.check_columns({"obs_columns": list(adata.obs.columns), "layers": list(adata.layers)}, path, columns, layer)


# ------------------------------------------------------------------------------ commands


def cmd_fit(args) -> int:
    from . import distributed

    columns = {"--batch-key": args.batch_key, "--label-key": args.label_key}
    if args.backed and Path(args.input).suffix.lower() != ".h5ad":
        raise AMEDLInputError(f"--backed reads an .h5ad file from disk; {args.input} is not one "
                              "(convert it with amedl.io.read(...).write_h5ad(...), or drop --backed)")
    info = _check_input(args.input, columns, args.layer)
    if args.backed and info is None:
        raise AMEDLInputError(f"--backed reads .h5ad files in anndata's current layout; {args.input} has an old one. "
                              "Drop --backed, or rewrite the file with a current anndata: "
                              "python -c \"import anndata as ad; ad.read_h5ad('old.h5ad').write_h5ad('new.h5ad')\"")
    _r_options(args)
    settings = _settings(args)
    out = _check_output(args.out)
    if args.backed and out.suffix.lower() != ".h5ad":
        raise AMEDLPathError(f"with --backed the output is the input .h5ad plus the latents; --out {args.out} must end in .h5ad")
    _check_model_dir(args.model_dir, args.overwrite, out)
    if args.nproc > 1 and not distributed.launched():  # this process only launches the ranks
        return distributed.launch(_without_nproc(args.argv), args.nproc, quiet=not args.verbose)
    if distributed.launched():
        distributed.init_from_env()
    try:
        return _fit(args, columns, settings, out)
    finally:
        distributed.shutdown()


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line without ``--nproc N`` (what each rank runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _fit(args, columns: dict, settings: dict, out: Path) -> int:
    from . import distributed

    if args.backed:
        from .ondisk import fit_backed_command

        return fit_backed_command(args, settings, out, _say)

    t0 = time.perf_counter()
    adata = _read(args.input, **_r_options(args))
    _require_columns(adata, args.input, columns, args.layer)
    from .data.validate import validate_adata

    validate_adata(adata, args.batch_key, args.layer)  # the data's errors before torch and scanpy are loaded
    _say(f"read {args.input}: {adata.n_obs} cells × {adata.n_vars} genes")
    from . import io, tl
    from ._utils import Staging
    from .model import AMEDL

    model = AMEDL(adata, args.batch_key, layer=args.layer, preset=args.preset, **settings)
    model.fit(seed=args.seed, max_epochs=args.epochs, progress=not args.quiet)
    if distributed.rank() != 0:  # rank 0 writes the outputs
        return 0
    rec = tl.add_latents(adata, model)
    if args.model_dir:  # where the model is, for the R package's AMEDLModel() / AMEDLCounterfactual()
        rec["model_dir"] = str(Path(os.path.expanduser(args.model_dir)).resolve())
    for line in model.training_summary():
        _say(line)
    if args.label_key:  # a report only: a label column the silhouettes cannot use must not cost the fit
        from .metrics import silhouette_report

        for line in silhouette_report({k: adata.obsm[f"X_amedl_{k}"] for k in ("fe", "re")},
                                      adata.obs[args.batch_key].astype(str), adata.obs[args.label_key].astype(str),
                                      args.label_key):
            _say(line)
    with Staging() as stage:  # the model and the output are moved into place together, at the end
        if args.model_dir:
            model.save(args.model_dir, overwrite=args.overwrite, staging=stage)
        io.write(adata, stage.add(out))
        _stop_if_terminated()
        distributed.check_launcher_here()
    if args.model_dir:
        _say(f"model saved to {args.model_dir}")
    _say(f"wrote {args.out} (obsm X_amedl_fe, X_amedl_re; uns amedl) in {time.perf_counter() - t0:.1f}s total")
    return 0


def _check_adapt_flags(args) -> None:
    """``amedl embed``'s adaptation flags: each only with the flag it serves, and the
    adapted model never in MODEL_DIR."""
    if args.adapted_model_dir and not args.adapt:
        raise AMEDLInputError("--adapted-model-dir saves the model adapted to the input's new batches: add --adapt")
    if args.adapt_steps is not None and not args.adapt:
        raise AMEDLInputError("--adapt-steps sets the steps of --adapt: add --adapt, or drop --adapt-steps")
    if args.overwrite and not args.adapted_model_dir:
        raise AMEDLInputError("--overwrite replaces the model in --adapted-model-dir (MODEL_DIR is never changed): "
                              "add --adapted-model-dir, or drop --overwrite")
    if args.adapted_model_dir:
        reference = Path(os.path.expanduser(args.model_dir)).resolve()
        target = Path(os.path.expanduser(args.adapted_model_dir)).resolve()
        if target == reference:
            raise AMEDLPathError(f"--adapted-model-dir {args.adapted_model_dir} is MODEL_DIR itself, which amedl embed "
                                 "never changes: save the adapted model in another folder")


def _check_adapt_batch_column(args, batch_key: str, columns: list) -> None:
    """``--adapt`` needs each input cell's batch, in the model's batch column."""
    if batch_key not in columns:
        raise AMEDLInputError(f"--adapt learns the random effects of the input's new batches, but {args.input} has no "
                              f"{batch_key!r} column (the model's batch key)")


def _check_embed_layer(args, layer: str | None, layers: list) -> None:
    """The counts layer that ``amedl embed`` reads (``--layer``, else the model's) is one of the input's."""
    if layer is not None and layer not in layers:
        which = f"--layer {layer!r}" if args.layer is not None else f"the model's counts layer {layer!r} (amedl fit --layer)"
        raise AMEDLInputError(f"{which} is not a layer of {args.input} (its layers: {', '.join(map(str, layers)) or 'none'}); "
                              "name the layer holding the raw counts with --layer, or --layer X for the matrix X")


def cmd_embed(args) -> int:
    from . import modelfile

    meta = modelfile.read_meta(os.path.expanduser(args.model_dir))
    modelfile.verify_weights(os.path.expanduser(args.model_dir), meta)
    use_x = args.layer == "X"  # the counts are in X, whatever layer the model was fitted on
    layer = None if use_x else args.layer if args.layer is not None else meta.get("layer") or None
    info = _check_input(args.input, {}, None)
    if info:
        _check_embed_layer(args, layer, info["layers"])
        if args.adapt:
            _check_adapt_batch_column(args, meta["batch_key"], info["obs_columns"])
    read_options = _r_options(args)
    genes = meta["preprocessing"]["genes"]
    if info and info.get("var_names") is not None:
        from .data.preprocess import check_model_genes

        check_model_genes(genes, info["var_names"], where=f"the genes of {args.input}", in_file=True)
    from .config import make_config

    make_config(**{k: v for k, v in {"device": args.device, "threads": args.threads}.items() if v is not None})
    out = _check_output(args.out)
    _check_adapt_flags(args)
    _check_out_apart(out, args.model_dir, "MODEL_DIR")
    if args.adapted_model_dir:
        _check_out_apart(out, args.adapted_model_dir, "--adapted-model-dir")
        modelfile.check_target(os.path.expanduser(args.adapted_model_dir), args.overwrite, flag="--overwrite")

    from . import io, tl
    from ._utils import Staging
    from .model import AMEDL

    t0 = time.perf_counter()
    model = AMEDL.load(args.model_dir, device=args.device or "auto", threads=args.threads)
    adata = _read(args.input, **read_options)
    _check_embed_layer(args, layer, list(adata.layers))
    _say(f"read {args.input}: {adata.n_obs} cells × {adata.n_vars} genes")
    if args.adapt:
        _check_adapt_batch_column(args, model.batch_key, list(adata.obs.columns))
    kinds = [k for k in ("fe", "re") if k in model.modules]
    if "re" in kinds and model.batch_key not in adata.obs.columns:
        kinds.remove("re")
        stale = "; the input's X_amedl_re, from another fit, is removed" if "X_amedl_re" in adata.obsm else ""
        _say(f"no {model.batch_key!r} column in the cell metadata: writing the FE latent only "
             f"(the RE latent needs each cell's batch){stale}")
    read = "X" if layer is None else layer  # where this input's counts are; the model keeps its own layer
    if args.adapt:
        new = model.new_batches(adata)
        if new:
            t1 = time.perf_counter()
            model.adapt(adata, layer=read, steps=args.adapt_steps or ADAPT_STEPS, progress=not args.quiet)
            _say(f"adapted {len(new)} new batch(es) ({', '.join(new[:5])}{' ...' if len(new) > 5 else ''}) "
                 f"in {time.perf_counter() - t1:.1f}s, the model's weights frozen")
        else:
            _say("--adapt: every batch of the input is known to the model; nothing to adapt")
    rec = tl.add_latents(adata, model, kinds=kinds, layer=read)
    saved = args.adapted_model_dir if args.adapted_model_dir and args.adapt else None
    rec["model_dir"] = str(Path(os.path.expanduser(saved or args.model_dir)).resolve())
    with Staging() as stage:
        io.write(adata, stage.add(out))
        if args.adapted_model_dir:
            model.save(args.adapted_model_dir, overwrite=args.overwrite, staging=stage)
        _stop_if_terminated()
    used = f"model {saved}, adapted from {args.model_dir}" if saved else f"model {args.model_dir}"
    _say(f"wrote {args.out} (obsm {', '.join(f'X_amedl_{k}' for k in kinds)}; {used}, "
         f"written by amedl {meta.get('amedl_version', '?')}) in {time.perf_counter() - t0:.1f}s")
    return 0


def _threads_in_use() -> int:
    import torch

    return torch.get_num_threads()


def _benchmark_command_line(args) -> str:
    """The command that reproduces this benchmark (recorded in its summary)."""
    parts = ["amedl", "benchmark", args.input, "--batch-key", args.batch_key, "--label-key", args.label_key,
             "--out-dir", args.out_dir]
    if args.methods:
        parts += ["--methods", *args.methods]
    parts += ["--folds", str(args.folds), "--seed", *(str(s) for s in args.seed)]
    for flag, value, default in (("--object-name", args.object_name, None), ("--assay", args.assay, None),
                                 ("--epochs", args.epochs, None), ("--layer", args.layer, None),
                                 ("--preset", args.preset, "default"), ("--max-cells", args.max_cells, 10_000)):
        if value != default:
            parts += [flag, str(value)]
    # results are bit-identical for a fixed seed *and* thread count: always record the threads it ran with
    parts += ["--threads", str(args.threads or _threads_in_use())]
    return " ".join(shlex.quote(str(p)) for p in parts + (["--no-scib"] if args.no_scib else []))


def cmd_benchmark(args) -> int:
    out_dir = Path(os.path.expanduser(args.out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise AMEDLPathError(f"--out-dir {args.out_dir} is a file, not a folder")
    _probe_writable(out_dir, f"--out-dir {args.out_dir}")
    args.interrupted = lambda: _benchmark_interrupted(out_dir)
    settings = _settings(args)
    info = _check_input(args.input, {"--batch-key": args.batch_key, "--label-key": args.label_key}, args.layer)
    read_options = _r_options(args)
    from .benchmark import check_seeds, resolve_methods, run_benchmark

    check_seeds(args.seed, "--seed")
    if info and info.get("n_obs") and args.folds > info["n_obs"]:
        raise AMEDLInputError(f"--folds {args.folds} is more than the number of cells of {args.input} ({info['n_obs']})")
    try:
        resolve_methods(args.methods)
    except ValueError as exc:
        raise AMEDLInputError(str(exc)) from None
    if not getattr(args, "verbose", False):
        _quiet_scib()
    adata = _read(args.input, **read_options)
    _require_columns(adata, args.input, {"--batch-key": args.batch_key, "--label-key": args.label_key})
    run_benchmark(
        adata, args.batch_key, args.label_key, out_dir, methods=args.methods, folds=args.folds, seed=args.seed,
        progress=not args.quiet, scib=not args.no_scib, max_epochs=args.epochs, layer=args.layer,
        preset=args.preset, max_cells=args.max_cells, title=f"amedl benchmark: {Path(args.input).name}",
        command=_benchmark_command_line(args), model_kwargs=settings or None,
    )
    print(Path(out_dir, "summary.md").read_text())
    return 0


def cmd_demo(args) -> int:
    out_dir = Path(os.path.expanduser(args.out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise AMEDLPathError(f"--out-dir {args.out_dir} is a file, not a folder")
    _probe_writable(out_dir, f"--out-dir {args.out_dir}")
    from ._utils import apply_threads
    from .demo import run_demo

    apply_threads(args.threads)
    run_demo(out_dir=args.out_dir, seed=args.seed, progress=not args.quiet)
    return 0


def _say(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(msg, flush=True)


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``amedl`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the logging and warnings of the libraries amedl uses")
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=_whole(1), default=None,
                         help="CPU threads of torch, numba and BLAS for the whole run (default: the libraries' own; "
                              "results are bit-identical for a fixed seed and thread count)")

    r_input = argparse.ArgumentParser(add_help=False)
    r_input.add_argument("--object-name", metavar="NAME", help="R input: the object to read from an .rda / .RData file holding several")
    r_input.add_argument("--assay", metavar="NAME", help="R input: the Seurat assay to read (default: the object's default assay)")

    p = _Parser(prog="amedl", parents=[common],
                description="aMEDL: fixed- and random-effects latents for single-cell RNA-seq")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("fit", parents=[common, threads, r_input], help="fit aMEDL and write both latents")
    f.add_argument("input", help=f"{FORMATS_TEXT} (raw counts)")
    f.add_argument("--batch-key", required=True, help="cell metadata column naming the batch")
    f.add_argument("--out", required=True, help=f"output ({FORMATS_TEXT}) with obsm X_amedl_fe / X_amedl_re; "
                                                "it may be the input")
    f.add_argument("--label-key", help="cell-type column: also print batch and label silhouettes")
    f.add_argument("--layer", help="layer holding raw counts (default, or X: the matrix X)")
    f.add_argument("--model-dir", help="save the fitted model to this folder (new, empty, or an amedl model "
                                       "folder with --overwrite)")
    f.add_argument("--overwrite", action="store_true", help="replace the amedl model already in --model-dir")
    f.add_argument("--epochs", "--max-epochs", dest="epochs", type=_whole(1),
                   help="epoch budget (default: from the number of cells; early stopping usually ends sooner)")
    f.add_argument("--seed", type=_whole(0), default=0)
    f.add_argument("--preset", default="default", choices=["default", "paper"])
    f.add_argument("--n-latent", type=_whole(1))
    f.add_argument("--n-top-genes", type=_whole(2))
    f.add_argument("--device", help="'auto' (default: a GPU when PyTorch sees one), 'cpu', 'cuda', 'cuda:N', 'mps'")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--nproc", type=_whole(1), default=1,
                   help="train data-parallel in this many processes on this machine (torchrun; gloo on CPUs, "
                        "nccl on GPUs); for several machines run 'torchrun ... -m amedl.cli fit ...' instead")
    f.add_argument("--backed", action="store_true",
                   help="train out of core: read the .h5ad input from disk in blocks of cells instead of into memory")
    f.set_defaults(func=cmd_fit)

    e = sub.add_parser("embed", parents=[common, threads, r_input], help="latents of new cells from a saved model")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder saved by amedl fit --model-dir")
    e.add_argument("input", help=f"{FORMATS_TEXT} (raw counts; the model's genes by name)")
    e.add_argument("--out", required=True, help=f"output ({FORMATS_TEXT}) with obsm X_amedl_fe (and X_amedl_re "
                                                "when the input has the model's batch column)")
    e.add_argument("--layer", help="layer holding raw counts, or X for the matrix X (default: the layer the model "
                                   "was fitted on)")
    e.add_argument("--adapt", action="store_true",
                   help="learn random effects for the input's batches that the model has not seen (the model's "
                        "weights frozen; without it they get the batch-membership predictor's mixture)")
    e.add_argument("--adapt-steps", type=_whole(1), default=None,
                   help=f"adaptation steps, with --adapt (default {ADAPT_STEPS})")
    e.add_argument("--adapted-model-dir", help="also save the adapted model here (MODEL_DIR is never changed)")
    e.add_argument("--overwrite", action="store_true", help="replace the amedl model in --adapted-model-dir")
    e.add_argument("--device", help="'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    e.set_defaults(func=cmd_embed)

    b = sub.add_parser("benchmark", parents=[common, threads, r_input],
                       help="compare PCA, AE, aMEDL FE/RE, Harmony and scVI on held-out cells")
    b.add_argument("input", help=f"{FORMATS_TEXT} (raw counts in X or --layer)")
    b.add_argument("--batch-key", required=True, help="obs column with the batch")
    b.add_argument("--label-key", required=True, help="obs column with the cell type")
    b.add_argument("--out-dir", required=True, help="folder for results.csv, summary.md, umap.png, report.html")
    b.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default all available): PCA AE aMEDL-FE aMEDL-RE Harmony scVI; "
                        "aliases pca ae fe re harmony scvi")
    b.add_argument("--folds", type=_whole(1), default=5,
                   help="k-fold cross-validation stratified on batch x label (1: fit and score on all cells)")
    b.add_argument("--seed", type=_whole(0), nargs="+", default=[0],
                   help="random seed; several (e.g. --seed 0 1 2) repeat the whole cross-validation once per seed "
                        "and add a per-seed table")
    b.add_argument("--epochs", "--max-epochs", dest="epochs", type=_whole(1), default=None,
                   help="epoch budget per network and for scVI (default: each model's own)")
    b.add_argument("--preset", default="default", choices=["default", "paper"], help="amedl preset")
    b.add_argument("--layer", default=None, help="layer holding raw counts (default, or X: the matrix X)")
    b.add_argument("--max-cells", type=_whole(2), default=10_000,
                   help="score a seeded subsample of at most this many held-out cells per fold")
    b.add_argument("--no-scib", action="store_true", help="skip the scIB metrics")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("demo", parents=[common, threads], help="run aMEDL on simulated data and write a report")
    d.add_argument("--out-dir", default="amedl-demo")
    d.add_argument("--seed", type=_whole(0), default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


# ------------------------------------------------------------------------------ running


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if verbose:
        return
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # the libraries' deprecation notes ...
    warnings.filterwarnings("default", module=r"amedl(\.|$)")  # ... but amedl's own warnings are shown

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr, flush=True)

    warnings.showwarning = show


def _quiet_scib() -> None:
    """scib-metrics sets its own logging level on import: turn its INFO lines off."""
    try:
        import scib_metrics
    except ImportError:
        return
    scib_metrics.settings.verbosity = logging.WARNING


def _one_line(msg: str) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= _MAX_MESSAGE else msg[: _MAX_MESSAGE - 3] + "..."


def _message(exc: BaseException) -> tuple[str, int]:
    """The ``amedl:`` line and exit status of an error."""
    if isinstance(exc, UsageError):
        return str(exc), 2
    if isinstance(exc, AMEDLError):
        return str(exc), 1
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename2 or exc.filename  # (a copy names its source first)
        return (f"no space left on the device{f' writing {where}' if where else ''}; nothing was written. Free space, "
                "or write the output (and --model-dir) to another disk"), 1
    if isinstance(exc, OSError):  # files: not found, permission, disk full, ...
        text = str(exc) if not exc.strerror else f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        return text, 1
    if isinstance(exc, ImportError):
        return f"{exc} (a package amedl needs for this is missing)", 1
    if isinstance(exc, MemoryError):
        return "out of memory; try a machine with more memory, or fewer cells or genes (--n-top-genes)", 1
    return (f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and "
            "please report it"), 1


def _benchmark_interrupted(out_dir: Path) -> str:
    """What a stopped ``amedl benchmark`` left: the previous outputs untouched, and its finished folds."""
    from .benchmark import PARTIAL

    partial = out_dir / PARTIAL
    return (f"interrupted; the outputs in {out_dir} are those of the previous run, if any"
            + (f"; the folds finished so far are in {partial}" if partial.exists() else ""))


def main(argv: list[str] | None = None) -> int:
    """Run ``amedl`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    args = None
    try:
        args = build_parser().parse_args(argv)
        debug = getattr(args, "debug", False)
        args.verbose = getattr(args, "verbose", False)
        if args.version:
            from . import __version__

            print(__version__)
            return 0
        args.argv = argv
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        if args.func is not cmd_embed and getattr(args, "layer", None) == "X":
            args.layer = None  # fit and benchmark read X unless told a layer; embed's default is the model's layer
        os.environ.setdefault("MPLBACKEND", "Agg")  # figures are only written to files here
        if getattr(args, "threads", None):
            from ._utils import thread_environment

            thread_environment(args.threads)  # before numpy, torch and numba are imported
        with warnings.catch_warnings(), _terminate_as_interrupt():
            _quiet_libraries(args.verbose)
            return args.func(args)
    except SystemExit:
        raise
    except BaseException as exc:  # every error ends in one line; --debug adds the traceback
        if isinstance(exc, KeyboardInterrupt) or _TERMINATED.is_set():  # R may turn Ctrl-C into its own error
            msg, status = getattr(args, "interrupted", lambda: "interrupted; nothing was written")(), 130
        else:
            msg, status = _message(exc)
        if debug:
            import traceback

            traceback.print_exc()
        from .distributed import report_to_launcher

        if not report_to_launcher(_one_line(msg)):  # a rank of --nproc: its launcher says it, once
            print(f"amedl: {_one_line(msg)}", file=sys.stderr, flush=True)
        return status


@contextlib.contextmanager
def _terminate_as_interrupt():
    """``kill`` (SIGTERM) unwinds like Ctrl-C, so that temporaries are removed; both are
    remembered, so that one swallowed where it lands is raised at the next check."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    _TERMINATED.clear()
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    old_hook = sys.unraisablehook

    def hook(unraisable):
        # Ctrl-C swallowed where it landed (R's callbacks, through rpy2, which also gives
        # SIGINT back to Python's default handler when R starts): remembered, no traceback
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _TERMINATED.set()
        else:
            old_hook(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    _TERMINATED.set()  # remembered: the exception can be swallowed where it lands (a finaliser, R's callbacks)
    raise KeyboardInterrupt


def _stop_if_terminated() -> None:
    """Raise the interruption of a SIGTERM that arrived earlier and was lost, before
    anything is committed."""
    if _TERMINATED.is_set():
        raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
