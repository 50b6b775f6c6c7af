"""The ``amedl`` command: ``fit``, ``benchmark``, ``demo`` (every command's arguments are here)."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

_FILES = ".h5ad, or .rds / .rda / .RData holding a Seurat object or a SingleCellExperiment"


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"amedl: {msg}")


def _read(path: str):
    """:func:`amedl.io.read`, with its errors as one clear line."""
    from . import io

    try:
        return io.read(path)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise _fail(str(exc)) from None


def _check_output(path: str) -> None:
    from .io import SUFFIXES

    if Path(path).suffix.lower() not in SUFFIXES:
        raise _fail(f"cannot write {path}: unknown suffix {Path(path).suffix!r}; the output must be {_FILES}")


def cmd_fit(args) -> int:
    from . import io, tl
    from .data import AMEDLInputError
    from .model import AMEDL

    _check_output(args.out)
    t0 = time.perf_counter()
    adata = _read(args.input)
    print(f"read {args.input}: {adata.n_obs} cells × {adata.n_vars} genes")
    if args.label_key and args.label_key not in adata.obs:
        raise _fail(f"--label-key {args.label_key!r} is not a column of the input's cell metadata")
    settings = {k: v for k, v in (("n_latent", args.n_latent), ("n_top_genes", args.n_top_genes)) if v is not None}
    try:
        model = AMEDL(adata, args.batch_key, layer=args.layer, preset=args.preset, **settings)
        model.fit(seed=args.seed, max_epochs=args.epochs, progress=not args.quiet)
    except AMEDLInputError as exc:
        raise _fail(str(exc)) from None
    tl.add_latents(adata, model)
    for kind, info in model.train_info.items():
        print(f"{kind.upper()}: {info['epochs_run']} epochs (best {info['best_epoch']}, "
              f"{'early stop' if info['stopped_early'] else 'budget'}) in {info['seconds']:.1f}s")
    if args.label_key:
        from .metrics import silhouette_batch, silhouette_label

        for kind in ("fe", "re"):
            z = adata.obsm[f"X_amedl_{kind}"]
            print(f"{kind.upper()} latent: batch ASW {silhouette_batch(z, adata.obs[args.batch_key].astype(str)):+.3f}, "
                  f"{args.label_key} ASW {silhouette_label(z, adata.obs[args.label_key].astype(str)):+.3f}")
    if args.model_dir:
        model.save(args.model_dir, overwrite=True)
        print(f"model saved to {args.model_dir}")
    io.write(adata, args.out)
    print(f"wrote {args.out} (obsm X_amedl_fe, X_amedl_re; uns amedl) in {time.perf_counter() - t0:.1f}s total")
    return 0


def _benchmark_command_line(args) -> str:
    """The command that reproduces this benchmark (recorded in its summary)."""
    parts = ["amedl", "benchmark", args.input, "--batch-key", args.batch_key, "--label-key", args.label_key,
             "--out-dir", args.out_dir]
    if args.methods:
        parts += ["--methods", *args.methods]
    parts += ["--folds", str(args.folds), "--seed", str(args.seed)]
    for flag, value, default in (("--epochs", args.epochs, None), ("--layer", args.layer, None),
                                 ("--preset", args.preset, "default"), ("--max-cells", args.max_cells, 10_000)):
        if value != default:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(str(p)) for p in parts + (["--no-scib"] if args.no_scib else []))


def cmd_benchmark(args) -> int:
    from .benchmark import run_benchmark, resolve_methods

    try:
        resolve_methods(args.methods)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    adata = _read(args.input)
    run_benchmark(
        adata, args.batch_key, args.label_key, args.out_dir, methods=args.methods, folds=args.folds, seed=args.seed,
        progress=not args.quiet, scib=not args.no_scib, max_epochs=args.epochs, layer=args.layer,
        preset=args.preset, max_cells=args.max_cells, title=f"amedl benchmark: {Path(args.input).name}",
        command=_benchmark_command_line(args),
    )
    print(Path(args.out_dir, "summary.md").read_text())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out_dir, seed=args.seed, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``amedl`` command."""
    p = argparse.ArgumentParser(prog="amedl", description="aMEDL: fixed- and random-effects latents for single-cell RNA-seq")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    f = sub.add_parser("fit", help="fit aMEDL and write both latents")
    f.add_argument("input", help=f"{_FILES} (raw counts)")
    f.add_argument("--batch-key", required=True, help="cell metadata column naming the batch")
    f.add_argument("--out", required=True, help=f"output ({_FILES}) with obsm X_amedl_fe / X_amedl_re")
    f.add_argument("--label-key", help="cell-type column: also print batch and label silhouettes")
    f.add_argument("--layer", help="layer holding raw counts (default: X)")
    f.add_argument("--model-dir", help="save the fitted model to this folder")
    f.add_argument("--epochs", type=int, help="epoch budget (default: from the number of cells)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--preset", default="default", choices=["default", "paper"])
    f.add_argument("--n-latent", type=int)
    f.add_argument("--n-top-genes", type=int)
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fit)

    b = sub.add_parser("benchmark", help="compare PCA, AE, aMEDL FE/RE, Harmony and scVI on held-out cells")
    b.add_argument("input", help=f"{_FILES} (raw counts in X or --layer)")
    b.add_argument("--batch-key", required=True, help="obs column with the batch")
    b.add_argument("--label-key", required=True, help="obs column with the cell type")
    b.add_argument("--out-dir", required=True, help="folder for results.csv, summary.md, umap.png, report.html")
    b.add_argument("--methods", nargs="+", default=None,
                   help="methods to run (default all available): PCA AE aMEDL-FE aMEDL-RE Harmony scVI; "
                        "aliases pca ae fe re harmony scvi")
    b.add_argument("--folds", type=int, default=5,
                   help="k-fold cross-validation stratified on batch x label (1: fit and score on all cells)")
    b.add_argument("--seed", type=int, default=0, help="random seed")
    b.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help="epoch budget per network and for scVI (default: each model's own)")
    b.add_argument("--preset", default="default", choices=["default", "paper"], help="amedl preset")
    b.add_argument("--layer", default=None, help="AnnData layer holding the raw counts")
    b.add_argument("--max-cells", type=int, default=10_000,
                   help="score a seeded subsample of at most this many held-out cells per fold")
    b.add_argument("--no-scib", action="store_true", help="skip the scIB metrics")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("demo", help="run aMEDL on simulated data and write a report")
    d.add_argument("--out-dir", default="amedl-demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
