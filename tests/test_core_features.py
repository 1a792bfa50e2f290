"""Scale-free features of a training run (core/features.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_automl.core.features import (
    ExponentialMovingAverage,
    classification_summaries,
    classification_summary,
)


def test_classification_summary_of_known_predictions() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    target = torch.tensor([0, 0])
    loss, accuracy, margin, entropy = classification_summary(probs.log(), target).tolist()
    log_c = math.log(3)
    assert loss == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2 / log_c, rel=1e-5)
    assert accuracy == 0.5
    assert margin == pytest.approx(((0.7 - 0.2) + (0.3 - 0.6)) / 2, rel=1e-5)
    expected_entropy = -sum(p * math.log(p) for row in probs.tolist() for p in row) / 2 / log_c
    assert entropy == pytest.approx(expected_entropy, rel=1e-5)


def test_classification_summary_is_scale_free_in_the_number_of_classes() -> None:
    for classes in (2, 10, 100):
        uniform = classification_summary(torch.zeros(4, classes), torch.zeros(4, dtype=torch.long))
        torch.testing.assert_close(uniform[[0, 3]], torch.ones(2))  # loss and entropy of uniform


def test_summaries_of_several_batches_at_once_equal_one_by_one() -> None:
    torch.manual_seed(0)
    sizes = (5, 3, 8)  # batches of different sizes, as at the end of an epoch
    logits = [torch.randn(size, 4) for size in sizes]
    targets = [torch.randint(0, 4, (size,)) for size in sizes]
    pairs = zip(logits, targets, strict=True)
    expected = torch.stack([classification_summary(x, y) for x, y in pairs])
    torch.testing.assert_close(classification_summaries(logits, targets), expected)
    assert not torch.equal(expected[0], expected[1])


def test_moving_average_is_bias_corrected() -> None:
    average = ExponentialMovingAverage(0.9)
    assert average.value is None
    average.update(torch.tensor([2.0]))
    torch.testing.assert_close(average.value, torch.tensor([2.0]))  # not 0.2
    average.update(torch.tensor([4.0]))
    expected = (0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.9**2)
    torch.testing.assert_close(average.value, torch.tensor([expected]))
    restored = ExponentialMovingAverage(0.9)
    restored.load_state_dict(average.state_dict())
    torch.testing.assert_close(restored.value, average.value)
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
        ExponentialMovingAverage(1.0)


def test_moving_average_extends_by_many_observations_as_by_each_in_turn() -> None:
    torch.manual_seed(0)
    first, more = torch.randn(3), torch.randn(5, 3)
    one_by_one, at_once = ExponentialMovingAverage(0.8), ExponentialMovingAverage(0.8)
    for value in (first, *more):
        one_by_one.update(value)
    at_once.update(first)
    at_once.extend(more)
    torch.testing.assert_close(at_once.value, one_by_one.value)
    assert at_once.weight == pytest.approx(one_by_one.weight)
