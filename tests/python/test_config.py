"""Every setting is checked when it is given, with the valid range in the message (issue 16)."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import amedl
from amedl.config import RULES, AMEDLConfig, make_config
from amedl.errors import AMEDLConfigError

SMALL = dict(n_top_genes=60, hidden=(16,), n_latent=3, adversary_hidden=(16,))


def test_every_field_has_a_rule():
    """A new AMEDLConfig field needs a rule in amedl.config.RULES (type, range, choices)."""
    missing = [f.name for f in dataclasses.fields(AMEDLConfig) if f.name not in RULES]
    assert not missing, f"add a rule to amedl.config.RULES for: {missing}"


@pytest.mark.parametrize(
    "setting, value, says",
    [
        ("n_latent", 0, "n_latent must be a whole number >= 1, got 0"),  # was: an empty latent, exit 0
        ("batch_size", 0, "batch_size must be a whole number >= 2"),  # was: ZeroDivisionError
        ("n_top_genes", 0, "n_top_genes must be a whole number >= 2 (or None: every expressed gene)"),
        ("max_epochs", 0, "max_epochs must be a whole number >= 1"),  # was: untrained latents, exit 0
        ("max_epochs", -1, "max_epochs must be a whole number >= 1"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
        ("hidden", (), "hidden must be 1 or more whole numbers"),
        ("hidden", (64, 0), "hidden must be 1 or more whole numbers, each >= 1, got (64, 0)"),
        ("scaling", "log", "scaling must be one of 'zscore', 'minmax'"),
        ("likelihood", "poisson", "likelihood must be one of 'mse', 'nb'"),
        ("validation_fraction", 1.0, "validation_fraction must be a finite number in [0, 1)"),
        ("fe_ema_decay", 1.5, "fe_ema_decay must be a finite number in (0, 1)"),
        ("fe_encoder_weight_decay", -0.1, "fe_encoder_weight_decay must be a finite number >= 0"),
        ("patience", 0, "patience must be a whole number >= 1 (or None: no early stopping)"),
        ("restore_best", 1, "restore_best must be True or False"),
        ("n_latent", True, "n_latent must be a whole number"),
        ("n_latent", 2.5, "n_latent must be a whole number"),
        ("n_latent", "8", "n_latent must be a whole number"),
        ("device", "CUDA", "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ("threads", 0, "threads must be a whole number >= 1"),
        ("fe_adv_weight", -1.0, "fe_adv_weight must be a finite number >= 0"),
    ],
)
def test_invalid_settings_are_refused_with_the_valid_range(setting, value, says):
    with pytest.raises(AMEDLConfigError, match=re.escape("setting " + says)):
        make_config(**{setting: value})


def test_loose_values_are_coerced():
    c = make_config(n_latent=8.0, lr=1, hidden=[32, np.int64(16)], batch_size=np.int32(64), adversary_hidden=64)
    assert (c.n_latent, c.lr, c.hidden, c.batch_size, c.adversary_hidden) == (8, 1.0, (32, 16), 64, (64,))
    assert type(c.n_latent) is int and type(c.lr) is float and type(c.batch_size) is int
    assert AMEDLConfig.from_dict(c.to_dict()) == c
    assert make_config("paper") == AMEDLConfig.from_dict(make_config("paper").to_dict())


def test_a_field_without_a_rule_is_still_type_checked():
    Extended = dataclasses.make_dataclass("Extended", [("extra_weight", float, 1.0), ("extra_sizes", "tuple[int, ...]", (1,))],
                                          bases=(AMEDLConfig,))
    assert Extended(extra_weight=2).extra_weight == 2.0
    with pytest.raises(AMEDLConfigError, match="extra_weight must be a finite number, got 'heavy'"):
        Extended(extra_weight="heavy")
    with pytest.raises(AMEDLConfigError, match="extra_sizes must be a sequence of whole numbers"):
        Extended(extra_sizes=("a",))


def test_unknown_settings_suggest_the_right_name_briefly():
    with pytest.raises(AMEDLConfigError, match=r"'n_lattent' \(did you mean 'n_latent'\?\)") as err:
        make_config(n_lattent=3)
    assert len(str(err.value)) < 200  # not the list of every setting
    with pytest.raises(AMEDLConfigError, match="unknown preset 'fast'"):
        make_config("fast")


def test_settings_are_checked_before_any_work(sim):
    """AMEDL() refuses a bad setting before it validates or preprocesses the data:
    the same error comes even for an input that is not an AnnData."""
    with pytest.raises(AMEDLConfigError, match="n_latent"):
        amedl.AMEDL("not an AnnData", "batch", n_latent=0)
    with pytest.raises(AMEDLConfigError, match="batch_size"):
        amedl.AMEDL(sim, "batch", batch_size=0, **SMALL)


def test_fit_refuses_a_zero_epoch_budget_and_bad_seeds(sim):
    m = amedl.AMEDL(sim, "batch", **SMALL)
    for bad in (0, -1, 1.5):
        with pytest.raises(AMEDLConfigError, match="max_epochs must be a whole number >= 1"):
            m.fit(max_epochs=bad, progress=False)
    with pytest.raises(AMEDLConfigError, match="seed must be a whole number >= 0"):
        m.fit(seed=-3, max_epochs=1, progress=False)
    with pytest.raises(AMEDLConfigError, match="kinds is empty"):
        m.fit(max_epochs=1, progress=False, kinds=())
    assert not m.is_trained


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_that_does_not_exist_is_refused_at_once(sim):
    """Was: accepted, then an AssertionError deep in training."""
    with pytest.raises(AMEDLConfigError, match=r"device 'cuda:7': PyTorch sees no CUDA GPU"):
        amedl.AMEDL(sim, "batch", device="cuda:7", **SMALL)
    with pytest.raises(AMEDLConfigError, match="not a device PyTorch knows"):
        amedl.AMEDL(sim, "batch", device="gpu", **SMALL)


def test_threads_are_applied_to_torch_and_numba():
    """threads= sets torch's and numba's threads before preprocessing; without it numba
    follows OMP_NUM_THREADS (numba ignores that variable: it used every core)."""
    pytest.importorskip("numba")
    code = (
        "import os; os.environ['OMP_NUM_THREADS'] = '1'\n"
        "import amedl, numba, torch\n"
        "a = amedl.datasets.simulate(n_cells=120, n_genes=80, n_batches=2, n_cell_types=2, seed=0)\n"
        "small = dict(n_top_genes=40, hidden=(8,), n_latent=2, adversary_hidden=(8,))\n"
        "amedl.AMEDL(a, 'batch', **small); print(numba.get_num_threads())\n"
        "amedl.AMEDL(a, 'batch', threads=2, **small); print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "2", "2"]


def test_omp_num_threads_still_holds_after_a_fit():
    """Was: with OMP_NUM_THREADS=1 (and NUMBA_NUM_THREADS unset) torch used every core after the first fit:
    numba's pool, started during preprocessing with every core, raised the OpenMP count torch shares."""
    pytest.importorskip("numba")
    code = "; ".join([
        "import amedl, torch",
        "a = amedl.datasets.simulate(n_cells=120, n_genes=80, n_batches=2, n_cell_types=2, seed=0)",
        "small = dict(n_top_genes=40, hidden=(8,), n_latent=2, adversary_hidden=(8,))",
        "print(torch.get_num_threads())",
        "amedl.AMEDL(a, 'batch', **small).fit(max_epochs=1, progress=False)",
        "print(torch.get_num_threads())",
    ])
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"]
