"""Veil's defense core: logits -> risk -> delta -> probabilities, in plain torch.

Nothing here imports Triton; ``veil.python_backend.triton`` holds the thin python-backend adapters.
"""
