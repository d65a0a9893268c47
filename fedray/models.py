"""The paper's two MNIST models (McMahan et al. 2017, section 3), as modules and as plain
parameter dicts, so that FedAvg can average, stack and ship weights without module objects."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]

# The paper's stated sizes; tests assert them.
PARAM_COUNTS = {"2nn": 199_210, "cnn": 1_663_370}


def build(name: str) -> nn.Module:
    if name == "2nn":
        # 784-200-200-10 with ReLU: 199,210 parameters.
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 200),
            nn.ReLU(),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, 10),
        )
    if name == "cnn":
        # Two 5x5 convolutions (32, 64 channels), each followed by 2x2 max pooling, a 512-unit
        # ReLU layer and a 10-way output: 1,663,370 parameters. 'Same' padding is what makes
        # the count come out exactly (64*7*7 inputs to the 512-unit layer).
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    raise ValueError(f"model: got {name!r}; allowed: 2nn | cnn")


def init_params(name: str, seed: int) -> Params:
    """w_0: PyTorch's default initialisation, drawn from a generator seeded by `seed` alone,
    without touching the global RNG (the same seed gives the same w_0 in every process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build(name)
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def count(params: Params) -> int:
    return sum(p.numel() for p in params.values())


def nbytes(params: Params) -> int:
    return sum(p.numel() * p.element_size() for p in params.values())


_SKELETONS: dict[tuple[str, str], nn.Module] = {}


def skeleton(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A module used only for its structure: parameters are always passed in explicitly."""
    key = (name, str(device))
    if key not in _SKELETONS:
        _SKELETONS[key] = build(name).to(device)
    return _SKELETONS[key]


def forward(name: str, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits of the model `name` with weights `params` on a batch x of shape (N, 1, 28, 28)."""
    return functional_call(skeleton(name, x.device), params, (x,))
