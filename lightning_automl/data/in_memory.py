"""A base for datamodules whose splits are tensors held in memory."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_automl.core.validation import check_non_negative_int, check_positive_int
from lightning_automl.data.sampling import EpochSeededRandomSampler

__all__ = ["InMemoryDataModule"]


class InMemoryDataModule(LightningDataModule):
    """Train / val / test loaders over the ``TensorDataset``s that ``setup`` puts in ``datasets``.

    The train loader shuffles with an `EpochSeededRandomSampler` (epoch ``e`` uses seed
    ``seed + e``, so a resumed run sees the same batches); the predict loader serves the test
    set. A subclass fills ``self.datasets`` with ``"train"``, ``"val"`` and ``"test"`` in
    ``setup``, once, whatever the stage.

    Args:
        batch_size: Samples per batch in every loader.
        num_workers: Worker processes per loader (0 loads in the main process).
        seed: Seed of the train loader's shuffling (and of the subclass's sampling).
    """

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_non_negative_int("num_workers", num_workers)
        check_non_negative_int("seed", seed)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, TensorDataset] = {}

    @property
    def split_sizes(self) -> dict[str, int]:
        """Samples per split, ``{"train": ..., "val": ..., "test": ...}`` (after `setup`)."""
        return {split: len(self._dataset(split)) for split in ("train", "val", "test")}

    def train_dataloader(self) -> DataLoader:
        train = self._dataset("train")
        return self._loader(train, sampler=EpochSeededRandomSampler(train, self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"))

    def _dataset(self, split: str) -> TensorDataset:
        if not self.datasets:
            raise RuntimeError(f"call {type(self).__name__}.setup() before using its {split} split")
        return self.datasets[split]

    def _loader(self, dataset: TensorDataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
