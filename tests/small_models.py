"""Small models the tests share: training of the tiny ones the certification tests build themselves (seconds on
one core), and a wrapper counting the examples a model's forward passes carry."""

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


class CountingModel(nn.Module):
    """The model, counting the examples its forward passes carry (a query count; a deepcopy counts on its own)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.examples = model, 0

    def forward(self, x):
        self.examples += len(x)
        return self.model(x)
