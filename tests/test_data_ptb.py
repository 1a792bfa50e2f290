from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from shared_data import SHARED_DATA
from torch.utils.data import DataLoader

from lightning_automl.data import PTBDataModule, Vocabulary
from lightning_automl.data.ptb import EOS, BPTTBatches, batchify, read_words

PTB_DIR = SHARED_DATA / "ptb"
LINES = {"train": 42_068, "val": 3_370, "test": 3_761}
WORDS = {"train": 887_521, "val": 70_390, "test": 78_669}


@pytest.fixture(scope="module")
def ptb() -> PTBDataModule:
    """The real Penn Treebank, read once for the whole module."""
    if not PTB_DIR.is_dir():
        pytest.skip(f"shared dataset folder {PTB_DIR} is missing")
    datamodule = PTBDataModule(data_dir=str(PTB_DIR), batch_size=20, bptt=35, eval_batch_size=10)
    datamodule.setup("fit")
    return datamodule


def test_vocabulary(ptb):
    assert ptb.vocab_size == len(ptb.vocab) == 10_000
    assert "<unk>" in ptb.vocab and EOS in ptb.vocab
    assert ptb.vocab.itos[:3] == ["the", "<unk>", EOS]  # the most frequent words first


def test_streams_hold_every_token_in_contiguous_rows(ptb):
    for split, rows in [("train", 20), ("val", 10), ("test", 10)]:
        tokens = WORDS[split] + LINES[split]
        assert ptb.streams[split].shape == (rows, tokens // rows)
    words = read_words(PTB_DIR / "ptb.valid.txt")
    assert ptb.vocab.decode(ptb.streams["val"].flatten()) == words[: len(words) // 10 * 10]


def test_train_batches(ptb):
    loader = ptb.train_dataloader()
    columns = (WORDS["train"] + LINES["train"]) // 20
    assert len(loader) == math.ceil((columns - 1) / 35) == 1328
    batches = list(loader)
    assert len(batches) == 1328
    inputs, targets = batches[0]
    assert inputs.shape == targets.shape == (20, 35)
    assert inputs.dtype == targets.dtype == torch.int64
    assert batches[-1][0].shape == (20, (columns - 1) % 35)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_targets_are_the_inputs_shifted_by_one_token(ptb, split):
    loader = getattr(ptb, f"{split}_dataloader")()
    inputs, targets = (torch.cat(parts, dim=1) for parts in zip(*loader, strict=True))
    stream = ptb.streams[split]
    assert torch.equal(inputs, stream[:, :-1])
    assert torch.equal(targets, stream[:, 1:])


def test_eval_batch_size_for_val_and_test(ptb):
    for loader in (ptb.val_dataloader(), ptb.test_dataloader()):
        inputs, targets = next(iter(loader))
        assert inputs.shape == targets.shape == (10, 35)


def test_setup_again_reuses_the_data(ptb):
    vocab = ptb.vocab
    ptb.setup("test")
    assert ptb.vocab is vocab


def test_vocabulary_orders_by_count_then_first_appearance():
    vocab = Vocabulary.from_words(["b", "a", "c", "a", "c", "d"])
    assert vocab.itos == ["a", "c", "b", "d"]
    assert vocab.stoi == {"a": 0, "c": 1, "b": 2, "d": 3}
    ids = vocab.encode(["d", "a", "b"])
    assert ids.dtype == torch.int64 and ids.tolist() == [3, 0, 2]
    assert vocab.decode(ids) == ["d", "a", "b"]


def test_vocabulary_rejects_unknown_words_and_repeats():
    vocab = Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="2 distinct words are not in the vocabulary: 'x', 'y'"):
        vocab.encode(["a", "y", "x", "y"])
    with pytest.raises(ValueError, match="repeat"):
        Vocabulary(["a", "a"])


def test_batchify_drops_the_remainder():
    assert batchify(torch.arange(11), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_bptt_batches_on_a_small_stream():
    batches = BPTTBatches(torch.arange(16).view(2, 8), bptt=3)
    assert len(batches) == 3  # 7 input steps: 3 + 3 + 1
    assert [inputs.tolist() for inputs, _ in batches] == [
        [[0, 1, 2], [8, 9, 10]],
        [[3, 4, 5], [11, 12, 13]],
        [[6], [14]],
    ]
    assert batches.window(2)[1].tolist() == [[7], [15]]
    with pytest.raises(IndexError):
        batches.window(3)
    assert len(BPTTBatches(torch.zeros(2, 1, dtype=torch.int64), bptt=3)) == 0


def test_loader_workers_keep_the_window_order():
    batches = BPTTBatches(torch.arange(40).view(2, 20), bptt=3)
    in_process = [inputs for inputs, _ in DataLoader(batches, batch_size=None)]
    with_workers = [inputs for inputs, _ in DataLoader(batches, batch_size=None, num_workers=2)]
    assert len(with_workers) == len(in_process) == len(batches)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))


def test_ddp_ranks_read_their_own_contiguous_rows(tmp_path):
    write_ptb(tmp_path, " ".join("abcdefghijklmnopqrstuvwxyz") + "\n", "a b c d\n", "e f g h\n")
    whole = PTBDataModule(data_dir=str(tmp_path), batch_size=2, eval_batch_size=1)
    whole.setup()
    train = whole.vocab.encode(read_words(tmp_path / "ptb.train.txt"))
    expected = batchify(train, 4)  # 2 rows for each of the 2 ranks
    for rank in (0, 1):
        datamodule = PTBDataModule(data_dir=str(tmp_path), batch_size=2, eval_batch_size=1)
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        datamodule.setup()
        assert torch.equal(datamodule.streams["train"], expected[2 * rank : 2 * rank + 2])
        assert datamodule.streams["val"].shape == (1, 2)  # 5 tokens, 2 rows of 2 in all


def write_ptb(folder, train: str, valid: str, test: str) -> None:
    for name, text in [("train", train), ("valid", valid), ("test", test)]:
        (folder / f"ptb.{name}.txt").write_text(text)


def test_small_corpus_end_to_end(tmp_path):
    write_ptb(tmp_path, " a b c \n d e \n a f \n", " a b \n", " f e d \n")
    datamodule = PTBDataModule(data_dir=str(tmp_path), batch_size=2, bptt=2, eval_batch_size=1)
    datamodule.setup()
    vocab = datamodule.vocab
    assert vocab.itos == [EOS, "a", "b", "c", "d", "e", "f"]
    # train: a b c <eos> d e <eos> a f <eos> -> rows [a b c <eos> d] and [e <eos> a f <eos>]
    (x0, y0), (x1, y1) = datamodule.train_dataloader()
    assert [vocab.decode(row) for row in x0] == [["a", "b"], ["e", EOS]]
    assert [vocab.decode(row) for row in y0] == [["b", "c"], [EOS, "a"]]
    assert [vocab.decode(row) for row in x1] == [["c", EOS], ["a", "f"]]
    assert [vocab.decode(row) for row in y1] == [[EOS, "d"], ["f", EOS]]
    test_inputs = [vocab.decode(row) for x, _ in datamodule.test_dataloader() for row in x]
    assert test_inputs == [["f", "e"], ["d"]]


def test_unknown_word_in_valid_is_an_error(tmp_path):
    write_ptb(tmp_path, " a b \n", " a z \n", " b \n")
    with pytest.raises(ValueError, match=r"ptb\.valid\.txt does not fit .*'z'"):
        PTBDataModule(data_dir=str(tmp_path)).setup()


def test_missing_files_error_names_files_and_folder(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" a \n")
    with pytest.raises(FileNotFoundError) as error:
        PTBDataModule(data_dir=str(tmp_path)).setup()
    message = str(error.value)
    assert "ptb.valid.txt" in message and "ptb.test.txt" in message
    assert "ptb.train.txt" not in message
    assert str(tmp_path.resolve()) in message and "download=True" in message


def test_vocab_size_before_setup_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="setup"):
        _ = PTBDataModule(data_dir=str(tmp_path)).vocab_size


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("data_dir", ""),
        ("batch_size", 0),
        ("batch_size", -1),
        ("bptt", 0),
        ("eval_batch_size", 0),
        ("download", None),
        ("num_workers", -1),
    ],
)
def test_bad_arguments(argument, value):
    with pytest.raises(ValueError, match=f"^{argument} must .* got {value!r}"):
        PTBDataModule(**{argument: value})
