"""Compare aMEDL settings on a shared dataset: batch/label silhouette, a logistic
batch probe, held-out adversary/classifier accuracy, epochs and time.

Used to choose the default preset (docs/tuning.md). Run, e.g.:

    .venv/bin/python benchmarks/tune.py cellbench '{"fe_adv_weight": 1.0}' --kinds fe,re,ae

(``{"max_epochs": 3}`` in the settings makes a quick check.)
"""
from __future__ import annotations

import argparse
import json
import warnings

from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score

import amedl
from amedl.baselines import pca_latent
from amedl.train import NETWORKS
from _shared import load_shared


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(amedl.datasets.SHARED))
    p.add_argument("settings", nargs="?", default="{}", help="JSON of AMEDLConfig overrides")
    p.add_argument("--kinds", default="fe,re,ae")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    adata, batch_key, label_key = load_shared(args.dataset)
    settings = json.loads(args.settings)
    kinds = args.kinds.split(",")
    m = amedl.AMEDL(adata, batch_key, **settings)
    m.fit(seed=args.seed, progress=False, kinds=kinds)
    batch = adata.obs[batch_key].astype(str).to_numpy()
    label = adata.obs[label_key].astype(str).to_numpy()
    train, val = m._split(args.seed)
    print(f"{args.dataset} {json.dumps(settings)}")
    for kind in ["pca", *kinds]:
        z = pca_latent(m) if kind == "pca" else m.latent(kind=kind)
        probe = LogisticRegression(max_iter=2000).fit(z[train], batch[train]).score(z[val], batch[val])
        line = (f"{kind:>4}: batch ASW {silhouette_score(z, batch):+.3f}  label ASW {silhouette_score(z, label):+.3f}  "
                f"batch probe {probe:.2f}")
        if kind in m.train_info:
            info = m.train_info[kind]
            best = m.history[kind].set_index("epoch").loc[info["best_epoch"]]
            # the validation reconstruction loss: NB negative log-likelihood per gene for a count decoder, else MSE
            loss = "NB NLL" if NETWORKS[kind].needs_counts(m.config) else "MSE"
            line += (f"  epochs {info['epochs_run']} (best {info['best_epoch']}) {info['seconds']:.0f}s  "
                     f"val recon ({loss}) {best['val_recon']:.3f}")
            if kind == "fe":
                line += f"  adversary acc {best['val_adv_acc']:.2f} (chance {info['chance_accuracy']:.2f})"
            if kind == "re":
                line += f"  classifier acc {best['val_cls_acc']:.2f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
