from __future__ import annotations

import torch

from veil.python_backend.pgd import PGDConfig, label_margin, label_preserving_pgd, project


def linear_score(z: torch.Tensor) -> torch.Tensor:
    """Score = margin between the top two logits: 'risk' grows with confidence."""
    top2 = z.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def test_projection_keeps_label_and_box():
    z = torch.tensor([[3.0, 1.0, 0.0]])
    label = z.argmax(1)
    eps = torch.full_like(z, 0.5)
    delta = project(z, torch.tensor([[-5.0, 5.0, 0.2]]), label=label, eps=eps, margin=torch.tensor([0.1]))
    x = z + delta
    assert int(x.argmax(1)) == 0
    assert float(x[0, 0] - x[0, 1]) >= 0.1 - 1e-6
    assert bool((delta.abs() <= 0.5 + 1e-6).all())


def test_label_wins_over_box():
    z = torch.tensor([[1.0, 0.99]])
    delta = project(
        z,
        torch.tensor([[-1.0, 1.0]]),
        label=z.argmax(1),
        eps=torch.full_like(z, 2.0),
        margin=label_margin(z, z.argmax(1), 0.05),
    )
    assert int((z + delta).argmax(1)) == 0


def test_reaches_target_in_few_steps_and_lands_on_level_set():
    z = torch.tensor([[6.0, 0.0], [0.0, 9.0], [2.0, 1.5]])
    target = torch.full((3,), 1.0)
    res = label_preserving_pgd(z, score_fn=linear_score, target=target, eps=torch.full_like(z, 20.0))
    assert res.converged.all()
    assert (res.score < 1.0).all()
    assert torch.equal((z + res.delta).argmax(1), z.argmax(1))
    # Rows that started above the target end just below it (minimal change), not far below.
    assert (res.score[:2] > 1.0 - 0.01).all()
    assert res.steps[:2].max() <= 3
    # The row already below target is untouched.
    assert res.steps[2] == 0 and torch.equal(res.delta[2], torch.zeros(2))


def test_budget_exhaustion_returns_best_label_preserving_point():
    z = torch.tensor([[10.0, 0.0]])
    res = label_preserving_pgd(
        z,
        score_fn=linear_score,
        target=torch.tensor([1.0]),
        eps=torch.full_like(z, 1.0),
        config=PGDConfig(max_steps=4),
    )
    assert not res.converged.any()
    assert float(res.score[0]) < 10.0  # moved towards the target
    assert int((z + res.delta).argmax(1)) == 0
    assert float(res.delta.abs().max()) <= 1.0 + 1e-5


def test_onto_mode_moves_both_ways():
    z = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    res = label_preserving_pgd(
        z, score_fn=linear_score, target=torch.full((2,), 2.0), eps=torch.full_like(z, 10.0), mode="onto"
    )
    assert res.converged.all()
    assert torch.allclose(res.score, torch.full((2,), 2.0), atol=2e-3)
