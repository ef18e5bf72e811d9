"""scikit-learn's bundled 8x8 handwritten digits, split deterministically into train and test.

scikit-learn is imported only when the digits are loaded: importing it takes seconds, which
``import rramc.datasets`` (and the command line) should not pay when another data set is used.
"""

from __future__ import annotations

import numpy as np

TRAIN_SIZE = 1437  # of the 1797 samples; the remaining 360 are the test split
_SPLIT_SEED = 0
_MAX_PIXEL = 16.0


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) float32 in [0, 1] and labels (N,) int64 of ``split`` ("train" or "test")."""
    from sklearn.datasets import load_digits as _sklearn_load_digits  # slow import: only when needed

    bunch = _sklearn_load_digits()
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(bunch.target))
    chosen = order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:]
    images = (bunch.images[chosen] / _MAX_PIXEL).astype(np.float32)
    return images, bunch.target[chosen].astype(np.int64)
