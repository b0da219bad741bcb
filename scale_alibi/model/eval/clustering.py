"""Unsupervised read-outs: k-means with k = the number of classes, scored by the best one-to-one
matching of clusters to classes (Hungarian algorithm), on the raw features or after UMAP."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

UMAP_COMPONENTS = 2  # also the scatter plot's plane


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray, n_classes: int) -> tuple[float, np.ndarray]:
    """(accuracy, predicted class per sample) under the cluster -> class matching that maximises
    the number of samples whose cluster maps to their class (clusters without a match: -1)."""
    n_clusters = int(max(clusters.max() + 1, n_classes))
    counts = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(n_clusters, -1)
    mapping[rows] = cols
    predicted = mapping[clusters]
    return float((predicted == labels).mean()), predicted


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster index (N,) of k-means with k clusters (k-means++, 10 restarts)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x.astype(np.float64))


def umap_embed(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP of the features onto UMAP_COMPONENTS dimensions (cosine metric, 15 neighbours)."""
    import umap

    reducer = umap.UMAP(n_components=UMAP_COMPONENTS, n_neighbors=min(15, len(x) - 1),
                        metric="cosine", random_state=seed)
    return reducer.fit_transform(x).astype(np.float32)
