"""LISTA-stop (Chen et al., ICML 2020) against LISTA, ISTA and FISTA on sparse recovery.

The paper's protocol: one model is trained on measurements of mixed noise, every sample's SNR
drawn from 20, 30 and 40 dB (`SparseRecoveryDataModule`, A 250 x 500, x* Bernoulli(0.1) x
N(0, 1)), and tested at each SNR: ISTA and FISTA with 20 and 100 iterations (step 1/L, lambda
tuned on each SNR's validation split), LISTA (T = 20) trained the usual way on its last layer,
LISTA trained by Stage I, the oracle's best layer per sample of that network (a lower bound),
and LISTA-stop: the Stage I network with a stop policy trained by Stage II
(`StopPolicyCallback`), with its mean stop step. NMSE in dB on 3,000 test samples per SNR.

Both LISTAs are `LISTARecovery`'s default LISTA-CPSS (support selection, ALISTA's analytic
initial weights) with the same budget: 3 epochs of TRAIN_SAMPLES samples (4,500 Adam steps of
128), cosine-decayed; then 1 epoch of Stage II for the policy. The
temperatures ``beta`` and ``imitation_beta`` of Learning to Stop are in units of each sample's
noise energy ``||y - A x*||^2`` (`LISTARecovery`'s ``beta_unit``), its ``step_cost`` in units of
each sample's signal energy ``||A x*||^2`` (``step_cost_unit``): a layer is worth taking while
it lowers the sample's NMSE by more than ``step_cost``. One setting serves every SNR.

    python benchmarks/lista_stop.py            # the full run (see the docs for its time)
    python benchmarks/lista_stop.py --quick    # smoke run, small budget

Targets (issue 3), at every SNR: LISTA-stop's NMSE at or below plain LISTA's with a mean stop
step below 0.8 T; plain LISTA and LISTA-stop both below FISTA-100.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine

import matplotlib
import torch
from harness import Report, fit, format_table, parse_args, target
from lightning.pytorch import seed_everything
from torch import Tensor

from lightning_automl.data import SparseRecoveryDataModule
from lightning_automl.stopping import LISTARecovery, StopPolicyCallback, fista, ista, nmse_db

matplotlib.use("Agg")
from matplotlib import pyplot as plt

NAME = "lista_stop"
SNRS = (20.0, 30.0, 40.0)
LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.2, 0.3)
NUM_LAYERS = 20
STAGE_EPOCHS = (3, 1)  # Stage I (also plain LISTA's epochs), Stage II
TRAIN_SAMPLES = 192_000  # on 38,400 both LISTAs overfit after a few epochs
LISTA_SETTINGS = {
    "num_layers": NUM_LAYERS,
    "lr_decay_epochs": STAGE_EPOCHS[0],
    "step_cost_unit": "signal_energy",
}
STOPPING = {"beta": 0.3, "imitation_beta": 0.02, "step_cost": 3e-5}
TEST_SAMPLES = 3000


def tuned_baseline(solver, data: SparseRecoveryDataModule, iterations: int) -> dict[str, float]:
    """The test NMSE of ``solver`` after ``iterations``, with lambda picked on validation."""
    y_val, x_val = data.datasets["val"].tensors
    val = {lam: nmse_db(solver(y_val, data.A, lam, iterations)[-1], x_val) for lam in LAMBDAS}
    lam = min(val, key=val.__getitem__)
    y, x = data.datasets["test"].tensors
    return {"nmse_db": nmse_db(solver(y, data.A, lam, iterations)[-1], x), "lam": lam}


@torch.no_grad()
def evaluate(plain: LISTARecovery, staged: LISTARecovery, y: Tensor, x: Tensor) -> dict:
    steps = staged.forward_steps(y)  # (T, B, n)
    errors = (steps - x).pow(2).sum(dim=2)  # (T, B)
    best = steps[errors.argmin(dim=0), torch.arange(len(x))]
    estimate, stopped_at = staged.predict_adaptive(y)
    return {
        "lista": nmse_db(plain(y), x),
        "stage_one_lista": nmse_db(steps[-1], x),
        "oracle_best_layer": nmse_db(best, x),
        "lista_stop": nmse_db(estimate, x),
        "lista_stop_mean_step": (stopped_at + 1).float().mean().item(),
        "lista_stop_histogram": torch.bincount(stopped_at, minlength=NUM_LAYERS).tolist(),
        "stage_one_layers": [nmse_db(step, x) for step in steps],
        "lista_layers": [nmse_db(step, x) for step in plain.forward_steps(y)],
    }


def train(quick: bool) -> tuple[LISTARecovery, LISTARecovery]:
    """Plain LISTA and the LISTA-stop network with its policy, both trained on mixed SNRs."""
    sizes = (
        {"num_train": 1024, "num_val": 500}
        if quick
        else {"num_train": TRAIN_SAMPLES, "num_val": 1000}
    )
    data = SparseRecoveryDataModule(snr_db=SNRS, seed=0, batch_size=128, **sizes)
    stage_epochs = (1, 1) if quick else STAGE_EPOCHS
    settings = {**LISTA_SETTINGS, "lr_decay_epochs": stage_epochs[0]}
    seed_everything(0)
    plain = LISTARecovery(**settings)
    fit(plain, data, stage_epochs[0], [])
    seed_everything(0)
    staged = LISTARecovery(**settings)
    fit(staged, data, sum(stage_epochs), [StopPolicyCallback(stage_epochs, **STOPPING)])
    return plain.eval(), staged.eval()


def test_snr(snr_db: float, plain: LISTARecovery, staged: LISTARecovery, quick: bool) -> dict:
    """Every method at one SNR: the baselines tuned on its validation split, its test NMSE."""
    data = SparseRecoveryDataModule(
        snr_db=snr_db, num_train=1, num_val=500 if quick else 1000, num_test=TEST_SAMPLES, seed=0
    )
    data.setup()
    result = {
        f"{solver.__name__}_{iterations}": tuned_baseline(solver, data, iterations)
        for solver in (ista, fista)
        for iterations in (20, 100)
    }
    y, x = data.datasets["test"].tensors
    return {**result, **evaluate(plain, staged, y, x)}


def main() -> None:
    args = parse_args(NAME, __doc__.splitlines()[0])
    report = Report(NAME, args)
    plain, staged = train(args.quick)
    results = {f"snr_{snr:g}": test_snr(snr, plain, staged, args.quick) for snr in SNRS}
    targets = []
    for key, r in results.items():
        fista_100 = r["fista_100"]["nmse_db"]
        targets += [
            target(f"lista_stop_nmse_le_lista_{key}", r["lista_stop"], r["lista"], "<="),
            target(f"lista_stop_mean_step_lt_0.8T_{key}", r["lista_stop_mean_step"], 16.0, "<"),
            target(f"lista_nmse_lt_fista100_{key}", r["lista"], fista_100, "<"),
            target(f"lista_stop_nmse_lt_fista100_{key}", r["lista_stop"], fista_100, "<"),
        ]
    methods = [f"{s}_{i}" for s in ("ista", "fista") for i in (20, 100)]
    rows = [[m, *(results[k][m]["nmse_db"] for k in results)] for m in methods]
    for name in ("lista", "stage_one_lista", "oracle_best_layer", "lista_stop"):
        rows.append([name, *(results[k][name] for k in results)])
    rows.append(["lista_stop mean step", *(results[k]["lista_stop_mean_step"] for k in results)])
    table = format_table(["NMSE dB", *(f"SNR {snr:g}" for snr in SNRS)], rows)
    results["settings"] = {
        "lista": LISTA_SETTINGS,
        "stage_epochs": STAGE_EPOCHS,
        "train_samples": TRAIN_SAMPLES,
        "training_snrs_db": SNRS,
        "stopping": STOPPING,
        "units": "beta, imitation_beta: x noise energy; step_cost: x signal energy",
        "lambdas": LAMBDAS,
    }
    report.write(results, targets, table)

    figure, axes = plt.subplots(1, len(SNRS), figsize=(12, 3.8), sharey=False)
    for axis, snr in zip(axes, SNRS, strict=True):
        r = results[f"snr_{snr:g}"]
        layers = range(1, NUM_LAYERS + 1)
        axis.plot(layers, r["lista_layers"], "o-", ms=3, label="LISTA, layer t")
        axis.plot(layers, r["stage_one_layers"], "s-", ms=3, label="Stage I LISTA, layer t")
        axis.axhline(r["fista_100"]["nmse_db"], color="gray", ls="--", label="FISTA-100")
        axis.plot(r["lista_stop_mean_step"], r["lista_stop"], "r*", ms=12, label="LISTA-stop")
        axis.set(title=f"SNR {snr:g} dB", xlabel="layer / mean stop step", ylabel="NMSE (dB)")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(report.png, dpi=120)


if __name__ == "__main__":
    main()
