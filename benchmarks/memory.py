"""Peak resident memory of one fit, stage by stage: read, ``AMEDL()``
(validation and preprocessing), then FE and RE training and their latents.

Run (not a test), on a dataset cached by ``speed.py``:

    .venv/bin/python benchmarks/memory.py /tmp/amedl-speed-data/sim_1000000x2000_b20_s0.h5ad --max-epochs 1

Memory does not depend on the number of epochs, so one epoch per network is
enough; issue 6 bounds the peak by twice the CSR input plus 1 GiB.
"""
from __future__ import annotations

import argparse
import resource
import warnings


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("h5ad", help="raw counts with obs['batch']")
    p.add_argument("--max-epochs", type=int, default=1)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    import anndata as ad

    import amedl

    adata = ad.read_h5ad(args.h5ad)
    X = adata.X
    csr = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**30
    print(f"{adata.n_obs:,} cells; CSR input {csr:.2f} GiB; bound 2 x CSR + 1 = {2 * csr + 1:.2f} GiB", flush=True)
    print(f"peak RSS after read: {peak_gib():.2f} GiB", flush=True)
    model = amedl.AMEDL(adata, "batch", n_top_genes=None, device="cpu")
    print(f"peak RSS after AMEDL(): {peak_gib():.2f} GiB", flush=True)
    for kind in ("fe", "re"):
        model.fit(seed=0, kinds=[kind], max_epochs=args.max_epochs, progress=False)
        print(f"peak RSS after fitting {kind.upper()}: {peak_gib():.2f} GiB", flush=True)
        z = model.latent(kind=kind)
        print(f"peak RSS after the {kind.upper()} latent: {peak_gib():.2f} GiB", flush=True)
        del z
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
