from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.python_backend.defense import Defense, DefenseConfig

from .conftest import make_artifact
from .test_levelset_defense import draw_logits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("classes", [2, 4, 20])
@pytest.mark.parametrize("variant", ["veil", "levelset", "pgd"])
def test_cuda_and_cpu_agree(classes, variant):
    art = make_artifact(classes)
    z = draw_logits(256, classes, 6.0, 42)
    threat = np.linspace(0, 1, 256)
    config = DefenseConfig(variant=variant)
    cpu = Defense(art, config=config, device="cpu")(z, threat=threat)
    gpu = Defense(art, config=config, device="cuda")(z, threat=threat)
    assert (cpu.labels == gpu.labels).all()
    assert (cpu.perturbed == gpu.perturbed).mean() > 0.99  # rows on the threshold may differ
    same = cpu.perturbed == gpu.perturbed
    np.testing.assert_allclose(cpu.probabilities[same], gpu.probabilities[same], atol=1e-4)
