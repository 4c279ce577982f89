"""Is a win more than noise? A paired bootstrap over per-sample scores (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CHUNK = 1000  # resamples drawn at once: bounds memory at CHUNK x samples indices


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n: int = 10000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """(mean of a - b, low, high): the mean per-sample difference and its 95 % percentile interval
    over `n` resamples of the pairs (a[i], b[i]) drawn with replacement, seeded by `seed`. The
    samples must be paired: the same prompts, in the same order, scored for both."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty score lists (got {len(a)} and {len(b)})")
    if n < 1:
        raise ValueError(f"paired_bootstrap needs n >= 1 resamples (got {n})")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.concatenate([
        diff[rng.integers(0, len(diff), size=(min(CHUNK, n - start), len(diff)))].mean(axis=1)
        for start in range(0, n, CHUNK)
    ])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)
