"""Input checks shared by the metrics: features and embeddings must be finite.

A NaN or an infinity in one feature row would otherwise surface as an obscure `LinAlgError` (FID), a NaN, or,
worse, a finite number that depends on whether a random subset happened to draw the bad row (KID).
"""

from __future__ import annotations

import numpy as np

__all__ = ["require_finite"]


def require_finite(metric: str, **sides: np.ndarray) -> None:
    """Raise a ValueError naming `metric`, each side (keyword name, e.g. ``reference=``, ``generated=``) with
    rows holding a NaN or an infinity, and how many of its rows do; do nothing when every value is finite."""
    problems = []
    for side, values in sides.items():
        array = np.asarray(values)
        if array.size == 0 or not np.issubdtype(array.dtype, np.number):
            continue
        finite = np.isfinite(array)
        bad = int((~finite.reshape(len(array), -1).all(axis=1)).sum()) if array.ndim else int(not finite)
        if bad:
            total = len(array) if array.ndim else 1
            problems.append(f"{bad} of {total} {side.replace('_', ' ')} rows")
    if problems:
        raise ValueError(
            f"{metric}: non-finite values (NaN or inf) in {' and '.join(problems)}; "
            "the features of those images are unusable (check the images and the feature extractor)"
        )
