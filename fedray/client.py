"""ClientUpdate of Algorithm 1 (McMahan et al. 2017): E epochs of plain minibatch SGD from the
server's weights, and a fast path that trains many models at once on stacked parameters.

A "model axis" of size M runs through the fast path: M may be a round's clients, several learning
rates of one setting, or both. Each model m has its own list of minibatches (absolute indices into
the training set) and its own learning rate; the result equals training each model on its own.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models import Params, forward, skeleton

Schedule = list[np.ndarray]  # one model's minibatches, in order, as absolute example indices

_BATCH_STREAM = 0x5EED_0003


def client_batches(seed: int, round_: int, k: int, n_k: int, E: int, B: float) -> Schedule:
    """Positions 0..n_k-1 split into minibatches of size B (B=inf: one batch of all n_k), with a
    fresh shuffle for each of the E epochs derived from (seed, round, client) alone."""
    rng = np.random.default_rng([seed, _BATCH_STREAM, round_, k])
    size = n_k if math.isinf(B) else int(B)
    out: Schedule = []
    for _ in range(E):
        perm = rng.permutation(n_k)
        out.extend(perm[i : i + size] for i in range(0, n_k, size))
    return out


def client_update(
    model: str, w: Params, x: torch.Tensor, y: torch.Tensor, batches: Schedule, lr: float
) -> Params:
    """ClientUpdate(k, w): w <- w - lr * grad l(w; b) for each minibatch b, one client at a time.
    The reference every fast path is tested against, and the CNN's path on CPU."""
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    names = list(w)
    for b in batches:
        b = torch.as_tensor(b, device=x.device)
        loss = F.cross_entropy(forward(model, w, x[b]), y[b])
        grads = torch.autograd.grad(loss, [w[n] for n in names])
        with torch.no_grad():
            for n, g in zip(names, grads):
                w[n].sub_(lr * g)
    return {k: v.detach() for k, v in w.items()}


def train_models(
    model: str,
    w: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    schedules: Sequence[Schedule],
    lrs: Sequence[float],
    method: str = "auto",
) -> Params:
    """Train M = len(schedules) models from weights `w` (one dict, shared by all: the broadcast;
    or already stacked with a leading axis of M) and return them stacked, shape (M, ...).

    method: "stacked" (batched matmuls, hand-written backward: 2NN only), "split" (one model at
    a time, autograd for the convolutions and the dense layers by hand: CNN only), "sequential"
    (one model at a time, autograd throughout: the reference), or "auto": stacked for the 2NN,
    split for the CNN, the fastest on a 2-core CPU (vmap did not beat one model at a time for
    the CNN there)."""
    M = len(schedules)
    if len(lrs) != M:
        raise ValueError(f"{len(lrs)} learning rates for {M} schedules")
    if method == "auto":
        method = "stacked" if model == "2nn" else "split"
    first = next(iter(w.values()))
    is_stacked = first.dim() > 0 and _is_stacked(model, w)
    if method == "stacked":
        if model != "2nn":
            raise ValueError(f"method 'stacked' supports model 2nn only, got {model!r}")
        ws = w if is_stacked else {k: v.unsqueeze(0).expand(M, *v.shape) for k, v in w.items()}
        return _train_mlp_stacked(ws, x, y, schedules, lrs)
    if method in ("sequential", "split"):
        if method == "split" and model != "cnn":
            raise ValueError(f"method 'split' supports model cnn only, got {model!r}")
        update = client_update if method == "sequential" else lambda _, *a: _cnn_update(*a)
        outs = [
            update(model, {k: v[i] for k, v in w.items()} if is_stacked else w, x, y, s, lr)
            for i, (s, lr) in enumerate(zip(schedules, lrs))
        ]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
    raise ValueError(f"method: got {method!r}; allowed: auto | stacked | split | sequential")


def _is_stacked(model: str, w: Params) -> bool:
    name, p = next(iter(w.items()))
    return p.dim() == dict(skeleton(model).named_parameters())[name].dim() + 1


def _cnn_update(w: Params, x: torch.Tensor, y: torch.Tensor, batches: Schedule, lr: float) -> Params:
    """ClientUpdate for the CNN, equal to `client_update` up to float rounding. Autograd runs the
    convolutions, channels-last (oneDNN ran the one-channel first layer ~5x faster so on CPU);
    the two dense layers, 97% of the weights, are done by hand so that each update is one
    in-place addmm_ instead of autograd's gradient, lr*g and subtraction passes over the 6.4 MB
    3136x512 matrix. Together 1.3-1.45x faster per client on one CPU thread at B=10."""
    cl = torch.channels_last
    conv = {
        k: v.detach().clone(memory_format=cl if v.dim() == 4 else torch.contiguous_format).requires_grad_(True)
        for k, v in w.items()
        if k.startswith(("0.", "3."))
    }
    W7, b7, W9, b9 = (w[k].detach().clone() for k in ("7.weight", "7.bias", "9.weight", "9.bias"))
    params = list(conv.values())
    for b in batches:
        b = torch.as_tensor(b, device=x.device)
        xb, yb = x[b].contiguous(memory_format=cl), y[b]
        h = F.max_pool2d(F.relu(F.conv2d(xb, conv["0.weight"], conv["0.bias"], padding=2)), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, conv["3.weight"], conv["3.bias"], padding=2)), 2)
        h = h.contiguous().flatten(1)  # NCHW order, as nn.Flatten sees it
        with torch.no_grad():
            hd = h.detach()
            a1 = torch.addmm(b7, hd, W7.t()).relu_()
            # d(mean cross-entropy)/dlogits, already times lr: every gradient below inherits it.
            d2 = torch.softmax(torch.addmm(b9, a1, W9.t()), dim=1)
            d2[torch.arange(len(yb), device=x.device), yb] -= 1.0
            d2.mul_(lr / len(yb))
            d1 = (d2 @ W9).mul_(a1 > 0)
            dh = d1 @ W7  # before W7 moves
            W9.addmm_(d2.t(), a1, alpha=-1)
            b9.sub_(d2.sum(0))
            W7.addmm_(d1.t(), hd, alpha=-1)
            b7.sub_(d1.sum(0))
        grads = torch.autograd.grad(h, params, grad_outputs=dh)
        with torch.no_grad():
            torch._foreach_sub_(params, list(grads))
    out = {k: v.detach().contiguous() for k, v in conv.items()}
    out.update({"7.weight": W7, "7.bias": b7, "9.weight": W9, "9.bias": b9})
    return {k: out[k] for k in w}


def pad_schedules(
    schedules: Sequence[Schedule], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, wt) of shape (S, M, Bmax): step s of model m uses examples idx[s, m] with loss weights
    wt[s, m] = 1/|batch| (a mean over the real batch); padding has weight 0, so a model with fewer
    or smaller minibatches than the others takes exact no-op steps (zero gradient)."""
    M = len(schedules)
    S = max(len(s) for s in schedules)
    Bmax = max((len(b) for s in schedules for b in s), default=1)
    idx = np.zeros((S, M, Bmax), dtype=np.int64)
    wt = np.zeros((S, M, Bmax), dtype=np.float32)
    for m, sched in enumerate(schedules):
        for s, b in enumerate(sched):
            idx[s, m, : len(b)] = b
            wt[s, m, : len(b)] = 1.0 / len(b)
    return torch.from_numpy(idx).to(device), torch.from_numpy(wt).to(device)


@torch.no_grad()
def _train_mlp_stacked(
    w: Params, x: torch.Tensor, y: torch.Tensor, schedules: Sequence[Schedule], lrs: Sequence[float]
) -> Params:
    """The 2NN on M models at once: forward with baddbmm, softmax cross-entropy backward by hand.
    Autograd's graph bookkeeping costs more than the arithmetic at B=10, hence the manual pass."""
    device = x.device
    xf = x.reshape(x.shape[0], -1)
    # Transposed (M, in, out) layout so that every product is a plain bmm without copies.
    W = [w[f"{i}.weight"].transpose(1, 2).contiguous() for i in (1, 3, 5)]
    b = [w[f"{i}.bias"].clone(memory_format=torch.contiguous_format) for i in (1, 3, 5)]
    idx, wt = pad_schedules(schedules, device)
    # Scaling dL/dlogits by each model's lr scales every gradient below it by that lr, so the
    # updates are plain in-place subtractions.
    wt = wt * torch.tensor(list(lrs), dtype=wt.dtype, device=device).view(1, -1, 1)
    for s in range(idx.shape[0]):
        xb, yb, ws = xf[idx[s]], y[idx[s]], wt[s].unsqueeze(-1)
        z1 = torch.baddbmm(b[0].unsqueeze(1), xb, W[0])
        h1 = z1.relu_()
        z2 = torch.baddbmm(b[1].unsqueeze(1), h1, W[1])
        h2 = z2.relu_()
        z3 = torch.baddbmm(b[2].unsqueeze(1), h2, W[2])
        d3 = torch.softmax(z3, dim=-1)
        d3.scatter_add_(-1, yb.unsqueeze(-1), torch.full_like(ws, -1.0))
        d3.mul_(ws)
        d2 = torch.bmm(d3, W[2].transpose(1, 2)).mul_(h2 > 0)
        W[2].baddbmm_(h2.transpose(1, 2), d3, alpha=-1)
        b[2].sub_(d3.sum(1))
        d1 = torch.bmm(d2, W[1].transpose(1, 2)).mul_(h1 > 0)
        W[1].baddbmm_(h1.transpose(1, 2), d2, alpha=-1)
        b[1].sub_(d2.sum(1))
        W[0].baddbmm_(xb.transpose(1, 2), d1, alpha=-1)
        b[0].sub_(d1.sum(1))
    out: Params = {}
    for i, (Wi, bi) in zip((1, 3, 5), zip(W, b)):
        out[f"{i}.weight"] = Wi.transpose(1, 2).contiguous()
        out[f"{i}.bias"] = bi
    return out


@torch.no_grad()
def evaluate(
    model: str, w: Params, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of weights w on (x, y), in chunks to bound memory."""
    if model == "cnn":
        # oneDNN's channels-last convolutions ran the 10k-image evaluation ~1.7x faster on a
        # 2-core CPU, and small chunks stay in cache; the weights are tiny to convert.
        w = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in w.items()}
    chunk = chunk or (250 if model == "cnn" else 2000)
    correct, loss = 0, 0.0
    for i in range(0, len(y), chunk):
        xb = x[i : i + chunk]
        if model == "cnn":
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = forward(model, w, xb)
        loss += F.cross_entropy(logits, y[i : i + chunk], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + chunk]).sum().item()
    return correct / len(y), loss / len(y)
