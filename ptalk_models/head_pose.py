"""Head pose between two views of a face: the 3-D similarity transform of the landmarks speech does not move.

Used to remove head motion from landmark sequences (:mod:`ptalk_models.mouth_motion`) and to carry a face's
pose onto another one (:mod:`ptalk_models.dubbing`).
"""
from __future__ import annotations

import numpy as np

#: Upper-face points that do not move with speech (eye corners, nose bridge, forehead, temples): the head
#: pose of a frame is the similarity transform of these points from the rest face to that frame.
STABLE_POINTS = (33, 133, 263, 362,             # eye corners
                 168, 6, 197, 195,             # nose bridge
                 10, 151, 9, 8,                # forehead
                 127, 356, 162, 389, 21, 251)  # upper face oval (temples)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares 3D similarity (Umeyama 1991) mapping point set ``src`` ``[K, 3]`` onto ``dst`` ``[K, 3]``.

    Returns ``(s, R, t)`` with ``dst ~= s * src @ R.T + t`` (R a proper rotation ``[3, 3]``)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[-1] = -1.0
    R = U @ np.diag(d) @ Vt
    var = (a ** 2).sum() / len(src)
    s = float((S * d).sum() / max(var, 1e-12))
    return s, R, md - s * ms @ R.T
