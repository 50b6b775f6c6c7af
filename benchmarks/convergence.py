"""Is the default epoch budget enough? Default early stopping against shorter
patience and against a long run, on the shared real datasets.

For each dataset and network (FE, RE) it fits three settings with the same
seed and prints the batch and cell-type silhouettes (all cells), the epochs
run and the wall time:

- ``default``: the default preset (early stopping: patience 30 epochs for
  FE, ``re_patience`` 15 for RE);
- ``patience N`` (``--short-patience``, default 15): both networks stop after N;
- ``long``: the whole epoch budget without early stopping (``patience=None``,
  ``re_patience=None``; the best validation epoch is still kept), as the reference.

The default is good enough when its batch ASW is within ``--tolerance``
(0.02, issue 6) of the long run's. Run (not a test):

    .venv/bin/python benchmarks/convergence.py --out docs/convergence.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import amedl
from amedl.metrics import silhouette_batch, silhouette_label
from _shared import load_shared


def fit_and_score(adata, batch_key, label_key, kind, seed, **settings) -> dict:
    t0 = time.perf_counter()
    m = amedl.AMEDL(adata, batch_key, **settings)
    m.fit(seed=seed, kinds=[kind], progress=False)
    z = m.latent(kind=kind)
    info = m.train_info[kind]
    return {
        "epochs_run": info["epochs_run"],
        "best_epoch": info["best_epoch"],
        "epoch_budget": info["epoch_budget"],
        "steps_per_epoch": -(-info["n_train"] // m.config.batch_size),
        "fit_s": round(time.perf_counter() - t0, 1),
        "batch_asw": silhouette_batch(z, adata.obs[batch_key]),
        "label_asw": silhouette_label(z, adata.obs[label_key]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(sorted(amedl.datasets.SHARED)))
    p.add_argument("--kinds", default="fe,re")
    p.add_argument("--short-patience", type=int, default=15)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    settings = {
        "default": {},
        f"patience {args.short_patience}": {"patience": args.short_patience, "re_patience": args.short_patience},
        "long": {"patience": None, "re_patience": None},
    }
    rows = []
    for name in args.datasets.split(","):
        adata, batch_key, label_key = load_shared(name)
        for kind in args.kinds.split(","):
            for label, overrides in settings.items():
                r = fit_and_score(adata, batch_key, label_key, kind, args.seed, **overrides)
                rows.append({"dataset": name, "kind": kind, "setting": label, **r})
                print(f"{name} {kind.upper()} {label}: {r['epochs_run']} epochs (best {r['best_epoch']}), {r['fit_s']}s, "
                      f"batch ASW {r['batch_asw']:+.3f}, label ASW {r['label_asw']:+.3f}", file=sys.stderr, flush=True)

    lines = [
        "| dataset | net | setting | epochs (best) | steps/epoch | fit s | batch ASW | label ASW | batch ASW − long |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for r in rows:
        long = next(x for x in rows if x["dataset"] == r["dataset"] and x["kind"] == r["kind"] and x["setting"] == "long")
        diff = r["batch_asw"] - long["batch_asw"]
        lines.append(
            f"| {r['dataset']} | {r['kind'].upper()} | {r['setting']} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['steps_per_epoch']} | {r['fit_s']:.1f} | {r['batch_asw']:+.3f} | {r['label_asw']:+.3f} | {diff:+.3f} |"
        )
        if r["setting"] != "long":
            verdicts.append((r["setting"], abs(diff) <= args.tolerance))
    table = "\n".join(lines)
    print(table)
    for setting in settings:
        if setting != "long":
            ok = [v for s, v in verdicts if s == setting]
            print(f"{setting}: within {args.tolerance} of the long run in {sum(ok)} of {len(ok)} fits")
    if args.out:
        from amedl._utils import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"rows": rows, "table": table, "tolerance": args.tolerance}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
