"""aMEDL on real data with real batch effects (the shared datasets).

On CellBench (5 batches, two technologies) and the Symphony PBMCs (three 10x
chemistries) the FE latent must hide the batch better than PCA and the plain
autoencoder on the same preprocessing, and the RE latent must show it more.
"""
from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import silhouette_score

import amedl
from amedl.baselines import pca_latent
from amedl.datasets import SHARED


@pytest.fixture(scope="module", params=["cellbench", "symphony"])
def fitted(request, data_dir):
    fname, batch_key, label_key = SHARED[request.param]
    adata = ad.read_h5ad(data_dir / fname)
    model = amedl.AMEDL(adata, batch_key)
    model.fit(seed=0, progress=False, kinds=("fe", "re", "ae"))
    batch = adata.obs[batch_key].astype(str).to_numpy()
    latents = {"pca": pca_latent(model), **{k: model.latent(kind=k) for k in ("ae", "fe", "re")}}
    asw = {k: silhouette_score(z, batch) for k, z in latents.items()}
    return request.param, model, asw


def test_fe_hides_batch_better_than_baselines(fitted):
    name, _, asw = fitted
    assert asw["fe"] < asw["pca"], (name, asw)
    assert asw["fe"] < asw["ae"], (name, asw)


def test_re_shows_batch_more_than_baselines(fitted):
    name, _, asw = fitted
    assert asw["re"] > asw["pca"] + 0.1, (name, asw)
    assert asw["re"] > asw["ae"] + 0.1, (name, asw)


def test_adversary_near_chance_and_classifier_far_above(fitted):
    name, model, _ = fitted
    chance = model.train_info["fe"]["chance_accuracy"]
    fe_best = model.history["fe"].set_index("epoch").loc[model.train_info["fe"]["best_epoch"]]
    re_best = model.history["re"].set_index("epoch").loc[model.train_info["re"]["best_epoch"]]
    # held-out cells: the adversary ends close to chance, the cooperative classifier far above it
    assert fe_best["val_adv_acc"] < chance + 0.15, (name, chance, fe_best["val_adv_acc"])
    assert re_best["val_cls_acc"] > chance + 0.4, (name, chance, re_best["val_cls_acc"])
    assert re_best["val_cls_acc"] > fe_best["val_adv_acc"] + 0.3
