from __future__ import annotations

import torch

from veil.python_backend.budgets import importance_budgets


def test_budgets_scale_mean_and_label_dimensions():
    logits = torch.tensor([[5.0, 2.0, 0.0, -1.0]])
    grad = torch.tensor([[1.0, -0.2, -0.4, -0.4]])
    eps = importance_budgets(grad, logits, scale=torch.tensor([2.0]))
    assert torch.allclose(eps.mean(1), torch.tensor([2.0]))
    # The runner-up (label-deciding) gets less than a non-competitor with more risk gradient.
    assert eps[0, 1] < eps[0, 2]
    assert (eps > 0).all()


def test_binary_budgets_are_equal():
    eps = importance_budgets(torch.tensor([[0.3, -0.3]]), torch.tensor([[2.0, 0.0]]), scale=torch.tensor([1.5]))
    assert torch.allclose(eps, torch.tensor([[1.5, 1.5]]))
