"""Synthetic compressed sensing `y = A x* + noise`: the data of LISTA-stop (Chen et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_automl.core.validation import check_number, check_positive_int
from lightning_automl.data.in_memory import InMemoryDataModule

__all__ = ["SparseRecoveryDataModule", "sensing_matrix"]

SPLITS = ("train", "val", "test")


def spawn_generators(seed: int, count: int) -> list[torch.Generator]:
    """``count`` independent torch generators derived from ``seed`` by ``SeedSequence.spawn``."""
    return [
        torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0]))
        for child in np.random.SeedSequence(seed).spawn(count)
    ]


def sensing_matrix(m: int, n: int, seed: int) -> torch.Tensor:
    """The ``(m, n)`` Gaussian sensing matrix of ``seed``, every column scaled to unit norm.

    `SparseRecoveryDataModule` with the same ``m``, ``n`` and ``seed`` uses this matrix.
    """
    A = torch.randn(m, n, generator=spawn_generators(seed, 1)[0])
    return A / A.norm(dim=0)


class SparseRecoveryDataModule(InMemoryDataModule):
    """Measurements ``y`` of sparse signals ``x*``; batches are ``(y, x_star)``.

    The sensing matrix `A` (``(m, n)``) has Gaussian entries with every column rescaled to unit l2
    norm (the paper's `N(0, 1/m)` entries give columns of norm close to 1; here it is exact). It
    depends only on ``seed``, ``m`` and ``n``, and is available as ``A`` right after construction,
    so that a model (e.g. `LISTA`) can be built from it.

    Each signal has i.i.d. entries `x*_i = b_i g_i`, `b_i ~ Bernoulli(sparsity)`,
    `g_i ~ N(0, 1)`. The noise of a sample is `N(0, sigma^2 I_m)` with
    `sigma^2 = ||A x*||^2 / (m 10^(snr_db / 10))`, so that
    `10 log10(||A x*||^2 / E ||noise||^2) = snr_db` for every sample. With several ``snr_db``,
    each sample draws its own uniformly from them: the mixed-SNR data of the paper's LISTA-stop,
    where a noisier sample needs fewer steps.

    `A` and each split come from their own random generator, spawned from ``seed``
    (``numpy.random.SeedSequence``): a split is the same whatever the sizes of the other splits,
    and the test set is the same in every run with the same ``seed``, ``m``, ``n``,
    ``sparsity``, ``snr_db`` and ``num_test``. The loaders are those of `InMemoryDataModule`.

    Args:
        m: Measurements per sample (rows of `A`).
        n: Signal length (columns of `A`).
        sparsity: Probability that an entry of `x*` is nonzero, in (0, 1].
        snr_db: Signal-to-noise ratio of the measurements in dB (``inf``: no noise), or a
            sequence of them to draw one per sample.
        num_train: Training samples.
        num_val: Validation samples.
        num_test: Test samples.
        batch_size: Samples per batch in every loader.
        seed: Seed of `A`, of the splits and of the train loader's shuffling.
        num_workers: Worker processes per loader (0 loads in the main process).
    """

    def __init__(
        self,
        m: int = 250,
        n: int = 500,
        sparsity: float = 0.1,
        snr_db: float | Sequence[float] = 40.0,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 3000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        for name, value in [
            ("m", m),
            ("n", n),
            ("num_train", num_train),
            ("num_val", num_val),
            ("num_test", num_test),
        ]:
            check_positive_int(name, value)
        check_number("sparsity", sparsity, "a number in (0, 1]", lambda v: 0 < v <= 1)
        snrs = tuple(snr_db) if isinstance(snr_db, Sequence) else (snr_db,)
        if not snrs:
            raise ValueError("snr_db must be a number of dB or a non-empty sequence of them")
        for snr in snrs:
            check_number("snr_db", snr, "a number of dB or inf", lambda v: -math.inf < v)
        self.save_hyperparameters()
        self.m = m
        self.n = n
        self.sparsity = sparsity
        self.snrs_db = snrs
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        _, *split_generators = spawn_generators(seed, 1 + len(SPLITS))  # the first is A's
        self.generators = dict(zip(SPLITS, split_generators, strict=True))
        self.A = sensing_matrix(m, n, seed)  # (m, n)

    def setup(self, stage: str | None = None) -> None:
        """Draw the three splits; later calls (other stages) reuse them."""
        if not self.datasets:
            self.datasets = {split: self.sample(split) for split in SPLITS}

    def sample(self, split: str) -> TensorDataset:
        """Draw ``split`` (always the same samples): a dataset of ``(y, x_star)`` pairs."""
        generator = self.generators[split]
        num = self.sizes[split]
        support = torch.rand(num, self.n, generator=generator) < self.sparsity  # (N, n)
        x_star = torch.randn(num, self.n, generator=generator) * support  # (N, n)
        clean = x_star @ self.A.T  # (N, m)
        noise_std = clean.norm(dim=1, keepdim=True) / self.noise_scale(num, generator)
        y = clean + noise_std * torch.randn(num, self.m, generator=generator)  # (N, m)
        return TensorDataset(y, x_star)

    def noise_scale(self, num: int, generator: torch.Generator) -> torch.Tensor:
        """``sqrt(m 10^(snr_db / 10))`` of each of ``num`` samples, ``(num, 1)``.

        With one ``snr_db`` it draws nothing from ``generator``.
        """
        scales = torch.tensor([math.sqrt(self.m * 10 ** (snr / 10)) for snr in self.snrs_db])
        if len(scales) == 1:
            return scales.expand(num, 1)
        return scales[torch.randint(len(scales), (num, 1), generator=generator)]
