"""Training of the tiny models the certification tests build themselves (seconds on one core)."""

from __future__ import annotations

import torch
from torch import nn


def train_adam(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    """Adam (lr 1e-2) on shuffled mini-batches of 64, drawing from torch's global RNG: the caller seeds it
    (inside `torch.random.fork_rng`, so its own stream is untouched). Returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
