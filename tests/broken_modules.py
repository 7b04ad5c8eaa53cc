"""Modules that turn non-finite on request, and an optimizer that skips
non-finite steps: shared by the trace tests and the multi-process worker."""

import torch
from torch import nn


class DivideBy(nn.Module):
    """``x / divisor``, the divisor a buffer a test sets to 0."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("divisor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.divisor


class SkipNonfiniteSGD(torch.optim.SGD):
    """SGD that leaves the weights alone when a gradient holds NaN/Inf, as
    trainers that skip such steps do."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"]]
        if all(torch.isfinite(g).all() for g in grads if g is not None):
            super().step()
        return loss
