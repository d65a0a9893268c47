"""Client partitions of a labelled training set (McMahan et al. 2017, section 3).

Each partition is a pure function of the labels and an explicit `np.random.Generator`, returning
one array of example indices per client (K arrays; every example assigned exactly once).
"""

from __future__ import annotations

import numpy as np


def iid(labels: np.ndarray, K: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then split into K equal parts (MNIST: 100 clients x 600 examples)."""
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), K)]


def pathological_non_iid(
    labels: np.ndarray, K: int, rng: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Sort by label, cut into K*shards_per_client shards of equal size, deal each client
    `shards_per_client` random shards (MNIST: 200 shards of 300, so most clients see two digits)."""
    # A stable sort keeps the original order inside a digit, so the shards do not depend on
    # the sort algorithm.
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, K * shards_per_client)
    dealt = rng.permutation(K * shards_per_client).reshape(K, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def unbalanced(
    labels: np.ndarray, K: int, rng: np.random.Generator, sigma: float = 1.0, min_size: int = 10
) -> list[np.ndarray]:
    """IID labels but heavy-tailed client sizes (the paper's footnote 4 names no distribution;
    we use log-normal shares with `sigma`, as LEAF and FedProx do), same total n."""
    n = len(labels)
    if K * min_size > n:
        raise ValueError(f"K*min_size = {K * min_size} exceeds the {n} examples")
    shares = rng.lognormal(mean=0.0, sigma=sigma, size=K)
    spare = n - K * min_size
    sizes = min_size + np.floor(shares / shares.sum() * spare).astype(np.int64)
    # Hand the examples lost to flooring to the largest shares so the total stays exactly n.
    leftover = n - int(sizes.sum())
    sizes[np.argsort(-shares, kind="stable")[:leftover]] += 1
    bounds = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(rng.permutation(n), bounds)]


def dirichlet(
    labels: np.ndarray, K: int, rng: np.random.Generator, alpha: float = 0.5, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: each class is split over the clients in Dirichlet(alpha) proportions (Hsu et
    al. 2019). Redrawn, from the same generator, until every client has at least `min_size`."""
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(K)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(K, alpha))) * len(idx)).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(f"dirichlet(alpha={alpha}) left a client below {min_size} examples 1000 times")


PARTITIONS = {
    "iid": iid,
    "noniid": pathological_non_iid,
    "unbalanced": unbalanced,
    "dirichlet": dirichlet,
}


def make_partition(
    name: str, labels: np.ndarray, K: int, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """The partition of a run: its own random stream derived from the run's seed only."""
    rng = np.random.default_rng([seed, _PARTITION_STREAM])
    if name == "dirichlet":
        return dirichlet(labels, K, rng, alpha=alpha)
    return PARTITIONS[name](labels, K, rng)


# Distinct stream tags keep the partition, the client sampling and the minibatch order independent.
_PARTITION_STREAM = 0x5EED_0001
