"""The ``amedl`` command: fit, benchmark, demo."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

RDS_SUFFIXES = (".rds", ".rda", ".rdata")


def _read(path: Path):
    if path.suffix.lower() == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path)
    if path.suffix.lower() in RDS_SUFFIXES:
        from . import io

        return io.read(path)
    raise SystemExit(f"amedl: cannot read {path}: use a .h5ad file or an .rds/.rda holding a Seurat or SingleCellExperiment object")


def _write(adata, path: Path) -> None:
    if path.suffix.lower() == ".h5ad":
        from . import io

        io.write(adata, path)
    elif path.suffix.lower() == ".rds":
        from . import io

        io.write(adata, path)
    else:
        raise SystemExit(f"amedl: cannot write {path}: use .h5ad or .rds")


def cmd_fit(args) -> int:
    from .data import AMEDLInputError
    from .model import AMEDL

    src, out = Path(args.input), Path(args.out)
    if not src.exists():
        raise SystemExit(f"amedl: input file {src} does not exist")
    if out.suffix.lower() not in (".h5ad", ".rds"):
        raise SystemExit(f"amedl: --out must end in .h5ad or .rds, got {out}")
    t0 = time.perf_counter()
    adata = _read(src)
    print(f"read {src}: {adata.n_obs} cells × {adata.n_vars} genes")
    settings = {}
    if args.n_latent is not None:
        settings["n_latent"] = args.n_latent
    if args.n_top_genes is not None:
        settings["n_top_genes"] = args.n_top_genes
    try:
        model = AMEDL(adata, args.batch_key, layer=args.layer, preset=args.preset, **settings)
        model.fit(seed=args.seed, max_epochs=args.epochs, progress=not args.quiet)
    except AMEDLInputError as exc:
        raise SystemExit(f"amedl: {exc}") from None
    adata.obsm["X_amedl_fe"] = model.latent(kind="fe")
    adata.obsm["X_amedl_re"] = model.latent(kind="re")
    adata.uns["amedl"] = {
        "batch_key": args.batch_key,
        "seed": args.seed,
        "preset": args.preset,
        "epochs": {k: v["epochs_run"] for k, v in model.train_info.items()},
    }
    for kind, info in model.train_info.items():
        print(
            f"{kind.upper()}: {info['epochs_run']} epochs (best {info['best_epoch']}, "
            f"{'early stop' if info['stopped_early'] else 'budget'}) in {info['seconds']:.1f}s"
        )
    if args.label_key:
        from sklearn.metrics import silhouette_score

        if args.label_key not in adata.obs:
            raise SystemExit(f"amedl: --label-key {args.label_key!r} is not a column of the input's cell metadata")
        for kind in ("fe", "re"):
            z = adata.obsm[f"X_amedl_{kind}"]
            sb = silhouette_score(z, adata.obs[args.batch_key].astype(str))
            sl = silhouette_score(z, adata.obs[args.label_key].astype(str))
            print(f"{kind.upper()} latent: batch ASW {sb:+.3f}, {args.label_key} ASW {sl:+.3f}")
    if args.model_dir:
        model.save(args.model_dir, overwrite=True)
        print(f"model saved to {args.model_dir}")
    _write(adata, out)
    print(f"wrote {out} (obsm X_amedl_fe, X_amedl_re) in {time.perf_counter() - t0:.1f}s total")
    return 0


def cmd_benchmark(args) -> int:
    from .benchmark import benchmark_command

    return benchmark_command(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out_dir, seed=args.seed, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amedl", description="aMEDL: fixed- and random-effects latents for single-cell RNA-seq")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    f = sub.add_parser("fit", help="fit aMEDL and write both latents")
    f.add_argument("input", help=".h5ad, or .rds/.rda holding a Seurat or SingleCellExperiment object (raw counts)")
    f.add_argument("--batch-key", required=True, help="cell metadata column naming the batch")
    f.add_argument("--out", required=True, help="output .h5ad or .rds with obsm X_amedl_fe / X_amedl_re")
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

    b = sub.add_parser("benchmark", help="compare PCA, AE, aMEDL FE/RE (and Harmony/scVI if installed)")
    from .benchmark import add_benchmark_arguments

    add_benchmark_arguments(b)
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
