"""Orders of regions from scores and features: numpy in, indices out (label first).

- :func:`by_score`: highest score first (ties keep the partition's order);
- :func:`k_center_greedy`: each pick is the region farthest from those picked so far
  (the core-set rule of Sener & Savarese, ICLR 2018): coverage of the feature space;
- :func:`typical_order`: TypiClust (Hacohen et al., ICML 2022): k-means clusters, the
  largest first, and from each its most *typical* region (densest: the smallest mean
  distance to its nearest neighbours), round after round;
- :func:`round_robin`: any score mixed with diversity: the clusters take turns, each
  giving its best region left, so that a budget does not go to one land cover.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial.distance import cdist


def by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep their order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine geometry: pooled activations differ mostly in
    scale between bright and dark regions)."""
    x = np.asarray(features, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def k_center_greedy(features: np.ndarray, picks: int) -> np.ndarray:
    """An order of all rows: the first ``picks`` by the k-centre greedy rule (the first is
    the row nearest the mean, so the order needs no seed), the rest by their distance to
    those, farthest first. Each pick costs one pass over the rows (O(n d))."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    picks = max(1, min(int(picks), n))
    first = int(np.argmin(((x - x.mean(0)) ** 2).sum(1)))
    order = [first]
    nearest = ((x - x[first]) ** 2).sum(1)
    nearest[first] = -1.0
    for _ in range(picks - 1):
        nxt = int(np.argmax(nearest))
        order.append(nxt)
        nearest = np.minimum(nearest, ((x - x[nxt]) ** 2).sum(1))
        nearest[order] = -1.0
    rest = np.setdiff1d(np.arange(n), order)
    rest = rest[np.argsort(-nearest[rest], kind="stable")]
    return np.concatenate([np.asarray(order, dtype=np.int64), rest])


def kmeans(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels of the rows (k-means with k-means++ seeding; k capped at the number
    of distinct rows). Empty clusters are dropped and the labels renumbered 0..k'-1."""
    x = np.asarray(features, dtype=np.float64)
    k = max(1, min(int(k), len(np.unique(x, axis=0))))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    _, labels = kmeans2(x, k, minit="++", seed=np.random.default_rng(seed), iter=20)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def typicality(features: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """1 / (mean distance to the ``neighbours`` nearest other rows): high where the
    feature space is dense. A single row is maximally typical."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        return np.full(len(x), np.inf)
    k = max(1, min(int(neighbours), len(x) - 1))
    mean = np.empty(len(x))
    for start in range(0, len(x), 2048):  # rows in blocks: memory stays O(2048 n)
        d = cdist(x[start:start + 2048], x)
        d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf
        mean[start:start + len(d)] = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
    return 1.0 / np.maximum(mean, 1e-12)


def round_robin(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """An order of all rows: clusters take turns (the largest first, ties by label),
    each giving its highest-scoring row left."""
    labels = np.asarray(labels)
    queues = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        queues.append(members[by_score(np.asarray(scores)[members])])
    queues.sort(key=lambda q: (-len(q), int(labels[q[0]])))
    order = []
    for turn in range(max(len(q) for q in queues)):
        order.extend(int(q[turn]) for q in queues if turn < len(q))
    return np.asarray(order, dtype=np.int64)


def typical_order(features: np.ndarray, clusters: int, neighbours: int = 20,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, labels, typicality)``: TypiClust's choice extended to a whole order.
    Typicality is measured within each region's cluster."""
    x = np.asarray(features, dtype=np.float64)
    labels = kmeans(x, clusters, seed)
    typical = np.empty(len(x))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        typical[members] = typicality(x[members], neighbours)
    return round_robin(labels, typical), labels, typical
