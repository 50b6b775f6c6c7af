"""Speed and memory of aMEDL training and inference at 10^4-10^6 cells.

Run (not a test):

    .venv/bin/python benchmarks/speed.py --sizes 10000,100000,1000000 --out docs/performance.json

Options: ``--device cuda`` (default ``auto``: CUDA when available) measures on
a GPU, ``--max-epochs N`` caps the epochs, ``--long-epochs N`` adds a run
without early stopping for comparison.

Each size runs in its own subprocess so that its peak resident memory is its
own. Printed per network (FE, RE, AE): cells per second per training epoch,
the model's FLOPs per cell per training step, achieved GFLOP/s and its ratio to
this machine's dense float32 matmul rate (measured first), epochs and wall time
to early-stopping convergence, latent-inference cells per second, peak RSS and
the size of the CSR input. The JSON also records each network's last validation
reconstruction loss (``final_val_recon``, the history's ``val_recon``) and which
loss that is (``recon_loss``: ``"nb"``, the mean negative binomial negative
log-likelihood per gene of the FE network's count decoder, or ``"mse"``, the mean
squared error on the scaled input).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def matmul_gflops(device: str = "cpu", repeats: int = 10) -> float:
    """Best dense float32 matmul rate of ``device`` (torch's default threads and
    float32 precision: no TF32, as in training)."""
    import torch

    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resolve(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _dense_flops(dims) -> int:
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def flops_per_cell(kind: str, n_genes: int, n_batches: int, cfg) -> dict:
    """Matmul FLOPs per cell: forward pass and one training step (backward ≈ 2× forward)."""
    enc = [n_genes, *cfg.hidden, cfg.n_latent]
    ae_fwd = 2 * _dense_flops(enc)  # encoder + tied decoder
    if kind == "ae":
        return {"forward": _dense_flops(enc), "train": 3 * ae_fwd}
    if kind == "fe":
        adv_in = sum(cfg.hidden) + cfg.n_latent if cfg.adversary_input == "all" else cfg.n_latent
        adv = _dense_flops([adv_in, *cfg.adversary_hidden, n_batches])
        # adversary step: forward+backward of the adversary; AE step: AE fwd+bwd and adversary fwd+input-grad
        return {"forward": _dense_flops(enc), "train": 3 * ae_fwd + 3 * adv + 3 * adv}
    re_fwd = 2 * _dense_flops(enc) + _dense_flops([cfg.n_latent, cfg.classifier_hidden, n_batches])
    return {"forward": _dense_flops([n_genes, *cfg.hidden]) + 2 * cfg.hidden[-1] * cfg.n_latent, "train": 3 * re_fwd}


def recon_loss(kind: str, config, networks) -> str:
    """Which reconstruction loss the history's ``val_recon`` of ``kind`` is: ``"nb"`` (mean
    negative binomial negative log-likelihood per gene, when the network decodes raw
    counts) or ``"mse"`` (mean squared error on the scaled model input)."""
    return "nb" if networks[kind].needs_counts(config) else "mse"


SIM = dict(n_cell_types=10, library_size=1000, gene_mean_sd=3.0)


def simulate_to(path: Path, n_cells: int, n_genes: int, n_batches: int, seed: int) -> None:
    """Simulate once and cache as .h5ad, so the measuring process holds only what it reads."""
    import amedl

    adata = amedl.datasets.simulate(
        n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, seed=seed, n_jobs=min(8, os.cpu_count() or 1), **SIM
    )
    adata.write_h5ad(path)


def quality(z, adata, max_cells: int = 10_000) -> dict:
    """Batch and cell-type silhouettes of a latent on a seeded subsample (as the paper scores large data)."""
    from sklearn import config_context

    from amedl import metrics

    with config_context(working_memory=64):  # bounded temporaries: the peak RSS should be the model's
        return {
            "batch_asw": metrics.silhouette_batch(z, adata.obs["batch"], max_cells=max_cells, seed=0),
            "label_asw": metrics.silhouette_label(z, adata.obs["cell_type"], max_cells=max_cells, seed=0),
        }


def run_size(path: Path, seed: int, kinds: list[str], max_epochs: int | None, device: str,
             long_epochs: int | None = None, long_max_cells: int = 100_000) -> dict:
    import anndata as ad
    import torch

    import amedl
    from amedl.train import NETWORKS

    t0 = time.perf_counter()
    adata = ad.read_h5ad(path)
    sim_s = time.perf_counter() - t0
    n_cells, n_genes, n_batches = adata.n_obs, adata.n_vars, adata.obs["batch"].nunique()
    X = adata.X
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    rss_after_sim = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t0 = time.perf_counter()
    model = amedl.AMEDL(adata, "batch", n_top_genes=None, device=device)
    prep_s = time.perf_counter() - t0
    rss_after_prep = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  {n_cells:,} cells: read {sim_s:.0f}s, preprocessed {prep_s:.0f}s, peak RSS {rss_after_prep / 2**30:.2f} GiB",
          file=sys.stderr, flush=True)
    row = {
        "n_cells": n_cells, "n_genes": n_genes, "n_batches": n_batches, "nnz_fraction": X.nnz / (X.shape[0] * X.shape[1]),
        "csr_bytes": csr_bytes, "read_s": sim_s, "preprocess_s": prep_s, "torch_threads": torch.get_num_threads(),
        "device": device,
        "kinds": {},
    }
    for kind in kinds:
        model.fit(seed=seed, kinds=[kind], progress=False, max_epochs=max_epochs)
        info = model.train_info[kind]
        hist = model.history[kind]
        n_train = info["n_train"]
        epoch_s = info["seconds"] / info["epochs_run"]
        fl = flops_per_cell(kind, n_genes, n_batches, model.config)
        t0 = time.perf_counter()
        z = model.latent(kind=kind)
        infer_s = time.perf_counter() - t0
        peak_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        row["kinds"][kind] = {
            "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"], "stopped_early": info["stopped_early"],
            "fit_s": info["seconds"], "epoch_s": epoch_s, "train_cells_per_s": n_train / epoch_s,
            "flops_per_cell_train": fl["train"], "achieved_gflops": fl["train"] * n_train / epoch_s / 1e9,
            "inference_cells_per_s": n_cells / infer_s, "final_val_recon": float(hist["val_recon"].iloc[-1]),
            "recon_loss": recon_loss(kind, model.config, NETWORKS),
            "peak_rss_after_fit_bytes": peak_fit,
            **quality(z, adata),
        }
        del z
        del model.modules[kind]
        k = row["kinds"][kind]
        print(f"  {kind.upper()}: {k['epochs_run']} epochs, {k['epoch_s']:.2f} s/epoch, fit {k['fit_s']:.0f}s, "
              f"val recon ({k['recon_loss']}) {k['final_val_recon']:.3f}, batch ASW {k['batch_asw']:+.3f}",
              file=sys.stderr, flush=True)
        if long_epochs and kind != "ae" and n_cells <= long_max_cells:
            # the same fit without early stopping, for a much larger budget: how far is the default from converged?
            saved = model.config.patience, model.config.re_patience
            model.config.patience = model.config.re_patience = None
            model.fit(seed=seed, kinds=[kind], progress=False, max_epochs=long_epochs)
            model.config.patience, model.config.re_patience = saved
            long = quality(model.latent(kind=kind), adata)
            k.update({f"long_{m}": v for m, v in long.items()}, long_epochs=long_epochs,
                     long_fit_s=model.train_info[kind]["seconds"], long_best_epoch=model.train_info[kind]["best_epoch"])
            del model.modules[kind]
            print(f"  {kind.upper()} long run: {long_epochs} epochs, batch ASW {long['batch_asw']:+.3f}", file=sys.stderr, flush=True)
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    row["rss_after_read_bytes"] = rss_after_sim
    row["rss_after_preprocess_bytes"] = rss_after_prep
    return row


def _fmt_table(rate: float, rows: list[dict], device: str, name: str) -> str:
    threads = f", {rows[0]['torch_threads']} threads" if rows and device == "cpu" else ""
    long = any("long_batch_asw" in k for r in rows for k in r["kinds"].values())
    gpu = any("peak_gpu_bytes" in r for r in rows)
    head = ("| cells | net | epochs (best) | s/epoch | µs/cell/epoch | train cells/s | MFLOP/cell/step | GFLOP/s | % of matmul "
            "| fit s | infer cells/s | batch ASW | label ASW |" + (" long-run batch ASW (epochs) |" if long else "")
            + " peak RSS GiB |" + (" peak GPU GiB |" if gpu else "") + " CSR GiB |")
    lines = [f"Device: {device} ({name}). Dense float32 matmul (torch{threads}): {rate:.1f} GFLOP/s", "", head,
             "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        for kind, k in r["kinds"].items():
            cells = [
                f"{r['n_cells']:,}", kind.upper(), f"{k['epochs_run']} ({k['best_epoch']})", f"{k['epoch_s']:.2f}",
                f"{1e6 * k['epoch_s'] / r['n_cells']:.1f}", f"{k['train_cells_per_s']:,.0f}",
                f"{k['flops_per_cell_train'] / 1e6:.1f}", f"{k['achieved_gflops']:.1f}",
                f"{100 * k['achieved_gflops'] / rate:.0f}%", f"{k['fit_s']:.0f}", f"{k['inference_cells_per_s']:,.0f}",
                f"{k['batch_asw']:+.3f}", f"{k['label_asw']:+.3f}",
            ]
            if long:
                cells.append(f"{k['long_batch_asw']:+.3f} ({k['long_epochs']})" if "long_batch_asw" in k else "")
            cells.append(f"{r['peak_rss_bytes'] / 2**30:.2f}")
            if gpu:
                cells.append(f"{r.get('peak_gpu_bytes', 0) / 2**30:.2f}")
            cells.append(f"{r['csr_bytes'] / 2**30:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="comma-separated cell counts")
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--kinds", default="fe,re,ae")
    p.add_argument("--max-epochs", type=int, help="cap epochs (default: the preset's budget and early stopping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--long-epochs", type=int, help="also fit each network this many epochs without early stopping "
                   "and report its silhouettes (how close the default budget is to convergence); FE and RE only")
    p.add_argument("--long-max-cells", type=int, default=100_000, help="skip the long runs above this many cells")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--cache", default="/tmp/amedl-speed-data", help="folder for the simulated .h5ad files")
    p.add_argument("--one-size", help=argparse.SUPPRESS)
    p.add_argument("--simulate-only", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.simulate_only:
        n = int(args.simulate_only.split(":")[0])
        simulate_to(Path(args.simulate_only.split(":", 1)[1]), n, args.genes, args.batches, args.seed)
        return 0
    if args.one_size:
        row = run_size(Path(args.one_size), args.seed, args.kinds.split(","), args.max_epochs, args.device, args.long_epochs,
                       args.long_max_cells)
        print("RESULT " + json.dumps(row))
        return 0

    device = resolve(args.device)
    name = device_name(device)
    rate = matmul_gflops(device)
    print(f"device {device} ({name}); matmul rate: {rate:.1f} GFLOP/s", flush=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cache = Path(args.cache) / f"sim_{n}x{args.genes}_b{args.batches}_s{args.seed}.h5ad"
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--simulate-only", f"{n}:{cache}", "--genes", str(args.genes),
                            "--batches", str(args.batches), "--seed", str(args.seed)], check=True)
            print(f"simulated {n:,} cells in {time.perf_counter() - t0:.0f}s -> {cache}", flush=True)
        cmd = [sys.executable, __file__, "--one-size", str(cache), "--kinds", args.kinds, "--seed", str(args.seed),
               "--device", device]
        if args.max_epochs:
            cmd += ["--max-epochs", str(args.max_epochs)]
        if args.long_epochs:
            cmd += ["--long-epochs", str(args.long_epochs), "--long-max-cells", str(args.long_max_cells)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            return out.returncode
        row = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{n:,} cells done in {row['wall_s']:.0f}s", flush=True)
        table = _fmt_table(rate, rows, device, name)
        if args.out:  # after every size, so that a long run keeps what it has measured
            from amedl._utils import atomic_path

            with atomic_path(args.out) as tmp:
                tmp.write_text(json.dumps({"device": device, "device_name": name, "matmul_gflops": rate, "rows": rows,
                                           "table": table}, indent=1))
    print(_fmt_table(rate, rows, device, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
