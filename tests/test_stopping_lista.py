from __future__ import annotations

import math

import pytest
import torch

from lightning_automl.data import SparseRecoveryDataModule
from lightning_automl.stopping import (
    LISTA,
    analytic_weight,
    fista,
    ista,
    lasso_objective,
    lipschitz_constant,
    nmse_db,
    soft_threshold,
    support_selected_soft_threshold,
)

LAM = 0.1


def problem(
    m: int = 20, n: int = 40, batch: int = 8, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Measurements ``y`` (batch, m) of 10%-sparse signals and a column-normalised ``A`` (m, n)."""
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(m, n, generator=generator, dtype=dtype)
    A = A / A.norm(dim=0)
    support = torch.rand(batch, n, generator=generator, dtype=dtype) < 0.1
    x_star = torch.randn(batch, n, generator=generator, dtype=dtype) * support
    y = x_star @ A.T + 0.01 * torch.randn(batch, m, generator=generator, dtype=dtype)
    return y, A


def test_soft_threshold_values():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0])
    assert soft_threshold(x, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    rows = torch.tensor([[2.0, -2.0], [2.0, -2.0]])
    per_row = soft_threshold(rows, torch.tensor([[0.5], [3.0]]))  # theta broadcast per row
    assert per_row.tolist() == [[1.5, -1.5], [0.0, 0.0]]


def test_lipschitz_constant_is_the_largest_eigenvalue_of_the_gram_matrix():
    _, A = problem()
    assert math.isclose(lipschitz_constant(A), torch.linalg.eigvalsh(A.T @ A).max().item())


@pytest.mark.parametrize("tied", [True, False])
def test_lista_at_initialisation_computes_ista_exactly(tied):
    y, A = problem(dtype=torch.float32)
    lista = LISTA(A, num_layers=12, lam=LAM, tied=tied)
    with torch.no_grad():
        steps = lista.forward_steps(y)
    assert torch.equal(steps, ista(y, A, LAM, num_iters=12))
    assert torch.equal(lista(y), steps[-1])


def test_forward_steps_shape_and_parameters():
    y, A = problem(m=6, n=10, batch=3, dtype=torch.float32)
    assert LISTA(A, num_layers=4).forward_steps(y).shape == (4, 3, 10)
    assert LISTA(A, num_layers=4).W.shape == (4, 10, 6)
    assert LISTA(A, num_layers=4, tied=True).W.shape == (1, 10, 6)
    assert [name for name, _ in LISTA(A).named_buffers()] == ["A"]


def test_gradients_reach_every_layer():
    y, A = problem(dtype=torch.float32)
    lista = LISTA(A, num_layers=5)
    lista.forward_steps(y).square().sum().backward()
    assert lista.W.grad is not None and lista.theta.grad is not None
    assert (lista.W.grad.flatten(1).abs().sum(1) > 0).all()  # every W_t
    assert (lista.theta.grad != 0).all()  # every theta_t
    assert lista.A.grad is None


def test_ista_objective_never_increases():
    y, A = problem()
    objective = lasso_objective(y, A, ista(y, A, LAM, num_iters=200), LAM)  # (200, B)
    assert (objective.diff(dim=0) <= 1e-12).all()


def test_fista_is_faster_and_both_reach_the_lasso_solution():
    y, A = problem()
    for num_iters in (10, 30, 100):
        fista_objective = lasso_objective(y, A, fista(y, A, LAM, num_iters)[-1], LAM)
        ista_objective = lasso_objective(y, A, ista(y, A, LAM, num_iters)[-1], LAM)
        assert fista_objective.mean() < ista_objective.mean()
    x_fista = fista(y, A, LAM, num_iters=2000)[-1]
    x_ista = ista(y, A, LAM, num_iters=20000)[-1]
    torch.testing.assert_close(x_ista, x_fista, atol=1e-5, rtol=0)
    # optimality of the LASSO: A^T (y - A x) = lam sign(x) on the support, |.| <= lam elsewhere
    correlation = (y - x_fista @ A.T) @ A  # (B, n)
    support = x_fista != 0
    torch.testing.assert_close(correlation[support], LAM * x_fista[support].sign())
    assert (correlation[~support].abs() <= LAM + 1e-9).all()


def test_nmse_db():
    target = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    assert nmse_db(torch.zeros_like(target), target) == 0.0
    assert math.isclose(nmse_db(0.9 * target, target), -20.0)
    with pytest.raises(ValueError, match="same shape"):
        nmse_db(target[0], target)
    with pytest.raises(ValueError, match="target must not be all zeros"):
        nmse_db(target, torch.zeros_like(target))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"A": torch.ones(3)}, r"A must be a 2-D floating-point tensor, got a tensor of shape"),
        ({"A": torch.ones(2, 3, dtype=torch.int64)}, "A must be a 2-D floating-point tensor"),
        ({"A": torch.zeros(2, 3)}, "A must be finite and nonzero"),
        ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
        ({"num_layers": 2.0}, "num_layers must be a positive integer, got 2.0"),
        ({"lam": -0.1}, "lam must be a finite non-negative number, got -0.1"),
        ({"lam": float("nan")}, "lam must be a finite non-negative number, got nan"),
        ({"tied": 1}, "tied must be True or False, got 1"),
        ({"init": "alista"}, "init must be 'ista' or 'analytic', got 'alista'"),
        ({"threshold_decay": 0.0}, r"threshold_decay must be in \(0, 1\], got 0.0"),
        ({"threshold_decay": 1.5}, r"threshold_decay must be in \(0, 1\], got 1.5"),
        ({"tied": True, "threshold_decay": 0.9}, "a tied LISTA has one threshold"),
        ({"support_per_layer": -0.1}, r"support_per_layer must be in \[0, 1\], got -0.1"),
        ({"support_max": 2.0}, r"support_max must be in \[0, 1\], got 2.0"),
    ],
)
def test_lista_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        LISTA(**{"A": torch.eye(3), **arguments})


@pytest.mark.parametrize("solver", [ista, fista])
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"y": torch.ones(2, 4)}, r"y must be a torch.float32 tensor of shape \(B, 3\)"),
        ({"y": torch.ones(2, 3, dtype=torch.float64)}, "y must be a torch.float32 tensor"),
        ({"lam": True}, "lam must be a finite non-negative number, got True"),
        ({"num_iters": 0}, "num_iters must be a positive integer, got 0"),
        ({"step": 0.0}, "step must be a finite positive number, got 0.0"),
        ({"step": math.inf}, "step must be a finite positive number, got inf"),
    ],
)
def test_solver_bad_arguments(solver, arguments, message):
    defaults = {"y": torch.ones(2, 3), "A": torch.eye(3), "lam": 0.1, "num_iters": 5}
    with pytest.raises(ValueError, match=f"^{message}"):
        solver(**{**defaults, **arguments})


def test_trained_lista_beats_ista_with_as_many_iterations():
    data = SparseRecoveryDataModule(m=20, n=40, num_train=200 * 64, num_val=1, num_test=1000)
    data.setup()
    lista = LISTA(data.A, num_layers=5, lam=LAM)
    optimizer = torch.optim.Adam(lista.parameters(), lr=3e-3)
    for y, x_star in data.train_dataloader():  # 200 steps
        loss = (lista(y) - x_star).square().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    y, x_star = data.datasets["test"].tensors
    with torch.no_grad():
        lista_nmse = nmse_db(lista(y), x_star)
    ista_nmse = nmse_db(ista(y, data.A, LAM, num_iters=5)[-1], x_star)
    print(f"NMSE after 5 iterations: LISTA {lista_nmse:.2f} dB, ISTA {ista_nmse:.2f} dB")
    assert lista_nmse < ista_nmse - 3


def test_support_selection_keeps_the_largest_entries_of_each_sample_unchanged():
    v = torch.tensor([[3.0, -0.5, 0.2, -2.0], [0.1, 0.3, -4.0, 1.0]])
    theta = torch.tensor(0.4)
    assert torch.equal(support_selected_soft_threshold(v, theta, 0), soft_threshold(v, theta))
    kept_two = support_selected_soft_threshold(v, theta, 2)
    assert torch.allclose(kept_two, torch.tensor([[3.0, -0.1, 0.0, -2.0], [0.0, 0.0, -4.0, 1.0]]))
    assert torch.equal(support_selected_soft_threshold(v, theta, 4), v)


def test_analytic_weight_has_unit_gain_and_least_frobenius_cross_talk():
    _, A = problem()
    W = analytic_weight(A)  # (n, m)
    assert W.shape == (A.shape[1], A.shape[0])
    assert torch.allclose(torch.diagonal(W @ A), torch.ones(A.shape[1], dtype=A.dtype))
    # any change of row i that keeps its gain a_i^T w_i = 1 has more cross-talk ||A^T w_i||
    generator = torch.Generator().manual_seed(1)
    for i in range(A.shape[1]):
        a_i = A[:, i]
        delta = torch.randn(A.shape[0], generator=generator, dtype=A.dtype)
        delta -= (delta @ a_i) / (a_i @ a_i) * a_i
        assert (A.T @ (W[i] + 1e-3 * delta)).norm() > (A.T @ W[i]).norm()


def test_analytic_initialisation_and_support_schedule():
    _, A = problem()  # n = 40
    lista = LISTA(
        A, num_layers=5, lam=0.4, init="analytic", threshold_decay=0.5,
        support_per_layer=0.05, support_max=0.12,
    )  # fmt: skip
    assert torch.equal(lista.W[3], analytic_weight(A))
    assert torch.allclose(lista.theta, 0.4 * 0.5 ** torch.arange(5, dtype=A.dtype))
    assert lista.num_kept == [2, 4, 4, 4, 4]  # floor(min(0.05 (t + 1), 0.12) * 40)


def test_untrained_analytic_lista_with_support_selection_beats_ista():
    data = SparseRecoveryDataModule(m=100, n=200, num_train=1, num_val=1, num_test=500)
    data.setup()
    y, x_star = data.datasets["test"].tensors
    cpss = LISTA(
        data.A, num_layers=10, lam=0.4, init="analytic", threshold_decay=0.8,
        support_per_layer=0.012, support_max=0.13,
    )  # fmt: skip
    with torch.no_grad():
        cpss_nmse = nmse_db(cpss(y), x_star)
    ista_nmse = nmse_db(ista(y, data.A, LAM, num_iters=10)[-1], x_star)
    print(f"NMSE after 10 layers: analytic LISTA-CPSS {cpss_nmse:.2f} dB, ISTA {ista_nmse:.2f} dB")
    assert cpss_nmse < ista_nmse - 10
