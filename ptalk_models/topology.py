"""Face-mesh topology (triangles, edges, region connection sets) of MediaPipe's 478-point face landmarks.

Everything here is read from the installed ``mediapipe`` package
(``mediapipe.tasks.python.vision.face_landmarker.FaceLandmarksConnections``), not typed in:

* ``FACE_LANDMARKS_TESSELATION`` lists the 852 triangles of the 468-point canonical face mesh as 2556
  directed edges, three consecutive edges per triangle (a->b, b->c, c->a). :func:`face_mesh_triangles`
  regroups them into ``int32 [852, 3]`` vertex-index triples.
* That mesh has exactly four holes, bounded by the face oval (outer boundary), the inner-lip contour and
  the two eye openings. :func:`hole_triangles` closes the mouth and eye holes with a strip between their
  upper and lower contours (``landmarks.LIPS_INNER_UPPER/LOWER`` and the eye contours), so a warp can
  carry what is inside the mouth or the eye (teeth, eyeball) with the surrounding lips/lids.

All functions are cached; mediapipe is imported lazily on first call (it takes ~0.4 s).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import landmarks as L


def _connections():
    try:
        from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections
    except Exception as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ptalk_models.topology needs mediapipe (>=0.10.21) for the face-mesh connection sets; "
            "install it with `pip install mediapipe`") from e
    return FaceLandmarksConnections


def _edges(name: str) -> np.ndarray:
    conns = getattr(_connections(), name)
    return np.array([(c.start, c.end) for c in conns], dtype=np.int32).reshape(-1, 2)


@lru_cache(maxsize=None)
def face_mesh_triangles() -> np.ndarray:
    """The 852 triangles of MediaPipe's canonical face mesh, ``int32 [852, 3]`` landmark indices (0..467).

    Source: ``FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION`` (three consecutive directed edges per
    triangle). Raises RuntimeError if the installed mediapipe lists the edges in another layout.
    """
    e = _edges("FACE_LANDMARKS_TESSELATION")
    if len(e) % 3:
        raise RuntimeError(f"unexpected FACE_LANDMARKS_TESSELATION length {len(e)} (not a multiple of 3)")
    e3 = e.reshape(-1, 3, 2)
    closed = (e3[:, 0, 1] == e3[:, 1, 0]) & (e3[:, 1, 1] == e3[:, 2, 0]) & (e3[:, 2, 1] == e3[:, 0, 0])
    if not closed.all():
        raise RuntimeError("FACE_LANDMARKS_TESSELATION is not laid out as consecutive edge triples in this "
                           "mediapipe version; cannot rebuild the triangles")
    tris = e3[:, :, 0].copy()
    tris.setflags(write=False)
    return tris


@lru_cache(maxsize=None)
def tesselation_edges() -> np.ndarray:
    """Unique undirected edges of the face-mesh tesselation, ``int32 [E, 2]`` (E = 1322 for MediaPipe's mesh)."""
    e = np.sort(_edges("FACE_LANDMARKS_TESSELATION"), axis=1)
    out = np.unique(e, axis=0).astype(np.int32)
    out.setflags(write=False)
    return out


# Region name -> MediaPipe connection-set attribute.
REGION_CONNECTIONS = {
    "face_oval": "FACE_LANDMARKS_FACE_OVAL",
    "lips": "FACE_LANDMARKS_LIPS",
    "right_eye": "FACE_LANDMARKS_RIGHT_EYE",
    "left_eye": "FACE_LANDMARKS_LEFT_EYE",
    "right_eyebrow": "FACE_LANDMARKS_RIGHT_EYEBROW",
    "left_eyebrow": "FACE_LANDMARKS_LEFT_EYEBROW",
    "right_iris": "FACE_LANDMARKS_RIGHT_IRIS",
    "left_iris": "FACE_LANDMARKS_LEFT_IRIS",
    "nose": "FACE_LANDMARKS_NOSE",
}


@lru_cache(maxsize=None)
def region_edges(region: str) -> np.ndarray:
    """MediaPipe's connection set for one face region, ``int32 [E, 2]`` landmark-index pairs.

    ``region`` is one of :data:`REGION_CONNECTIONS` (``"face_oval"``, ``"lips"``, ``"right_eye"``,
    ``"left_eye"``, ``"right_eyebrow"``, ``"left_eyebrow"``, ``"right_iris"``, ``"left_iris"``, ``"nose"``;
    left/right are the subject's). Raises ValueError for an unknown region.
    """
    if region not in REGION_CONNECTIONS:
        raise ValueError(f"unknown face region {region!r}; choose one of {sorted(REGION_CONNECTIONS)}")
    out = _edges(REGION_CONNECTIONS[region])
    out.setflags(write=False)
    return out


def strip_triangles(upper, lower) -> list[tuple[int, int, int]]:
    """Triangulate the band between two open polylines of equal length (vertex indices), quad by quad.

    Triangles with a repeated vertex (where the polylines share an end point) are dropped.
    """
    if len(upper) != len(lower):
        raise ValueError(f"strip_triangles: polylines differ in length ({len(upper)} vs {len(lower)})")
    tris = []
    for i in range(len(upper) - 1):
        a, b, c, d = upper[i], upper[i + 1], lower[i + 1], lower[i]
        for t in ((a, b, c), (a, c, d)):
            if len(set(t)) == 3:
                tris.append(t)
    return tris


def eye_halves(contour: list[int]) -> tuple[list[int], list[int]]:
    """(upper lid, lower lid) of an eye contour, each corner to corner (9 landmark indices, same direction).

    ``contour`` is :data:`ptalk_models.landmarks.RIGHT_EYE` or ``LEFT_EYE``: 16 points, a corner, 7 upper-lid
    points, the other corner, 7 lower-lid points. Element k of both lists lies at about the same position
    along the eye, so ``zip`` pairs each upper-lid point with the lower-lid point below it.
    """
    upper = contour[:9]
    lower = [contour[0]] + contour[9:][::-1] + [contour[8]]
    return upper, lower


@lru_cache(maxsize=None)
def hole_triangles() -> dict[str, np.ndarray]:
    """Triangles closing the mouth and eye holes of the face mesh, ``{"mouth"|"right_eye"|"left_eye": int32 [K, 3]}``.

    Each hole is closed by a strip between its upper and lower contour (corner to corner), so when the
    lips or lids part the strip stretches and when they close it collapses to a line.
    """
    out = {"mouth": np.array(strip_triangles(L.LIPS_INNER_UPPER, L.LIPS_INNER_LOWER), np.int32)}
    for name, contour in (("right_eye", L.RIGHT_EYE), ("left_eye", L.LEFT_EYE)):
        up, lo = eye_halves(contour)
        out[name] = np.array(strip_triangles(up, lo), np.int32)
    for v in out.values():
        v.setflags(write=False)
    return out
