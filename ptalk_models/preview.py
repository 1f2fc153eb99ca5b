"""Compact preview data of a landmark sequence or of per-frame metric curves, for the in-node player
(``web/landmark_player.js``).

No ComfyUI import: this module builds JSON-ready dicts; ``nodes/glue/preview.py`` adds the media files (the
speech, the backdrop image) that ComfyUI's ``/view`` serves and hands the dict to ComfyUI as the node's UI output.

Payload of a landmark sequence (:func:`landmark_payload`, ``kind == "landmarks"``)
----------------------------------------------------------------------------------
``frames``, ``fps``      T and frames per second (0.0 for a still or an unordered batch).
``image_size``           ``[width, height]`` px of the frames the landmarks refer to.
``box``                  ``[x0, y0, side]`` px: the square preview window on the image, the union of the x, y of
                         every landmark of every frame plus :data:`BOX_MARGIN` of its longer side on each side.
``levels``               quantisation levels per coordinate (:data:`POINT_LEVELS`): a point's x in px is
                         ``x0 + q / (levels - 1) * side`` (y likewise), so the error is at most
                         ``side / (levels - 1) / 2`` px (:func:`quantisation_step`).
``points``               :func:`encode_points` of the ``[T, 478, 2]`` quantised x, y (base64 text).
``present``              ``None`` when every frame has a face, else base64 of ``numpy.packbits`` of the ``[T]`` flags.
``curves``               per-frame curves for the lip-sync strip: ``mouth`` (inner-lip opening,
                         :func:`ptalk_models.landmarks.inner_lip_aperture`, × inter-ocular distance) and, with
                         audio, ``loudness`` (:func:`ptalk_models.audio.rms_dbfs`, dBFS); each a
                         :func:`curve_entry`.
``topology``             what the player draws, once per payload: ``edges`` (the 1322 face-mesh tessellation edges,
                         :func:`ptalk_models.topology.tesselation_edges`, as :func:`encode_u16`) and ``contours``
                         (name -> list of ordered landmark-index polylines: lips, eyes, irises, brows, face oval).
``duration``             seconds of the speech (``None`` without audio; else T / fps covers it).

``nodes/glue/preview.py`` adds ``audio`` (the speech's temp FLAC entry), ``image`` (the backdrop's temp JPEG entry)
and ``backdrop_input`` (the node input whose upstream node's image the player draws when the node has none).

Encoding
--------
Quantised points (uint16 ``[T, N, 2]``, values < ``levels``) are laid out point-major (``[N * 2, T]``: one
coordinate's trajectory after another), differenced along time (first value kept), zigzag-mapped to unsigned
(``0, -1, 1, -2 … -> 0, 1, 2, 3 …``), split into a low-byte and a high-byte plane and compressed with zlib
(RFC 1950, what the browser's ``DecompressionStream("deflate")`` reads), then base64. A talking face moves a
little from frame to frame, so most deltas are 0 or ±1 and compress well (:func:`payload_size`): a real
10-minute Audio → Landmarks sequence (15000 frames at 25 fps, tests/test_preview.py) is 2.3 MB of JSON, 2.3 MB
of it the points, built in about 4 s on a 2-core CPU.

Payload of per-frame curves (:func:`curves_payload`, ``kind == "curves"``): ``frames``, ``fps`` and ``lanes``, each
``{"label", "unit", "lo", "hi", "series": [curve_entry, ...]}`` (series of one lane share its value range).
"""
from __future__ import annotations

import base64
import math
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import landmarks as L
from .audio import rms_dbfs
from .errors import InputError

FORMAT = "ptalk-preview"
VERSION = 1
#: quantisation levels per coordinate of a landmark (8 bits): over the preview window (about 1.3 face heights)
#: one level is ~0.5 % of the face height, under one screen pixel in the player's 160-px face view
POINT_LEVELS = 256
#: margin around the landmarks' bounding box, as a fraction of its longer side, on each side
BOX_MARGIN = 0.12
#: the most levels :func:`encode_points` takes (a delta then fits 15 bits before the zigzag)
MAX_LEVELS = 16384
#: levels of a quantised curve value; the byte CURVE_MISSING marks a missing value (NaN, excluded frame)
CURVE_LEVELS = 255
CURVE_MISSING = 255
#: value range of the lip-sync strip's curves: inner-lip opening (× inter-ocular) and loudness (dBFS)
MOUTH_RANGE = (0.0, 0.6)
LOUDNESS_RANGE = (-60.0, 0.0)
ZLIB_LEVEL = 6
_CHUNK = 2048  # frames quantised at a time
#: the player's copy of the speech: mono, at most this rate (Hz; speech needs 8 kHz of bandwidth)
AUDIO_RATE = 24000

#: the polylines the player highlights (closed unless the name says open): from ptalk_models.landmarks
CONTOURS = {
    "lips": [L.LIPS_OUTER],
    "mouth": [L.LIPS_INNER],  # filled: the mouth opening
    "eyes": [L.RIGHT_EYE, L.LEFT_EYE],
    "irises": [L.RIGHT_IRIS[1:], L.LEFT_IRIS[1:]],
    "brows_open": [L.RIGHT_EYEBROW, L.LEFT_EYEBROW],
    "oval": [L.FACE_OVAL],
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


# ------------------------------------------------------------------------------------------------ points
def preview_box(points: np.ndarray, present: np.ndarray | None = None, margin: float = BOX_MARGIN,
                scale: Sequence[float] = (1.0, 1.0)) -> tuple:
    """The square preview window ``(x0, y0, side)`` in px around float ``[T, N, 2+]`` points (x, y used) times
    ``scale`` (``(width, height)`` for normalised landmarks, ``(1, 1)`` for pixels): the bounding box of the points
    of the frames with a face (all frames when none has one), its longer side plus ``margin`` of it on each side,
    centred on the box. ``side`` is at least 1 px."""
    pts = np.asarray(points)[..., :2]
    if present is not None and np.any(present) and not np.all(present):
        pts = pts[np.asarray(present, bool)]
    k = np.asarray(scale, np.float64)
    lo = pts.min(axis=(0, 1)).astype(np.float64) * k
    hi = pts.max(axis=(0, 1)).astype(np.float64) * k
    side = max(float((hi - lo).max()) * (1.0 + 2.0 * margin), 1.0)
    cx, cy = (lo + hi) / 2.0
    return (float(cx - side / 2.0), float(cy - side / 2.0), float(side))


def quantisation_step(box: Sequence[float], levels: int = POINT_LEVELS) -> float:
    """Pixels per quantisation level of a preview window ``(x0, y0, side)``; the largest error of a quantised
    coordinate is half of it (plus float32 rounding, below 1e-3 px for images up to 16384 px)."""
    return float(box[2]) / (int(levels) - 1)


def quantise_points(points_px: np.ndarray, box: Sequence[float], levels: int = POINT_LEVELS) -> np.ndarray:
    """Float ``[T, N, 2]`` pixel points -> uint16 ``[T, N, 2]`` in ``[0, levels - 1]``: ``round((p - corner) /
    step)`` with the window's corner ``(x0, y0)`` and :func:`quantisation_step` (points outside the window are
    clipped to it; :func:`preview_box` keeps every point inside). ``levels`` is at most 16384."""
    if not 2 <= int(levels) <= MAX_LEVELS:
        raise ValueError(f"levels must be in [2, {MAX_LEVELS}], got {levels}")
    x0, y0, _ = box
    q = np.asarray(points_px, np.float32) - np.array([x0, y0], np.float32)
    q *= np.float32(1.0 / quantisation_step(box, levels))
    q += np.float32(0.5)
    np.floor(q, out=q)
    np.clip(q, 0, int(levels) - 1, out=q)
    return q.astype(np.uint16)


def dequantise_points(q: np.ndarray, box: Sequence[float], levels: int = POINT_LEVELS) -> np.ndarray:
    """uint16 ``[T, N, 2]`` levels -> float32 ``[T, N, 2]`` pixel points (the inverse of :func:`quantise_points`
    up to half a :func:`quantisation_step`)."""
    x0, y0, _ = box
    return (np.asarray(q, np.float64) * quantisation_step(box, levels) + (x0, y0)).astype(np.float32)


def encode_points(q: np.ndarray) -> str:
    """Quantised uint16 ``[T, N, 2]`` points (values < 16384) -> base64 text (see the module docstring:
    point-major time deltas, zigzag, two byte planes, zlib)."""
    q = np.asarray(q)
    if q.ndim != 3 or q.shape[2] != 2:
        raise ValueError(f"encode_points expects [T, N, 2] levels, got {q.shape}")
    if q.size and int(q.max()) >= MAX_LEVELS:
        raise ValueError(f"encode_points expects levels below {MAX_LEVELS}, got {int(q.max())}")
    t = q.shape[0]
    a = np.ascontiguousarray(q.reshape(t, -1).T).astype(np.int16)     # [N * 2, T]
    d = np.empty_like(a)
    d[:, :1] = a[:, :1]
    np.subtract(a[:, 1:], a[:, :-1], out=d[:, 1:])
    z = ((d << 1) ^ (d >> 15)).view(np.uint16)                        # zigzag: |d| < 16384
    planes = np.empty(2 * z.size, np.uint8)
    planes[:z.size] = (z & 0xFF).ravel()
    planes[z.size:] = (z >> 8).ravel()
    return _b64(zlib.compress(planes, ZLIB_LEVEL))


def decode_points(text: str, frames: int, n_points: int = L.NUM_LANDMARKS) -> np.ndarray:
    """The inverse of :func:`encode_points`: uint16 ``[frames, n_points, 2]``. Raises ValueError when the data
    does not hold ``frames × n_points × 2`` values."""
    raw = np.frombuffer(zlib.decompress(_unb64(text)), np.uint8)
    n = int(frames) * int(n_points) * 2
    if raw.size != 2 * n:
        raise ValueError(f"point data holds {raw.size // 2} values, expected {n} ({frames} frames x {n_points} x 2)")
    z = raw[:n].astype(np.int32) | (raw[n:].astype(np.int32) << 8)
    d = (z >> 1) ^ -(z & 1)
    a = np.cumsum(d.reshape(int(n_points) * 2, int(frames)), axis=1)
    return a.T.reshape(int(frames), int(n_points), 2).astype(np.uint16)


def encode_u16(values) -> str:
    """Non-negative integers (< 65536) -> base64 of zlib of their little-endian uint16 bytes."""
    return _b64(zlib.compress(np.asarray(values, "<u2").tobytes(), ZLIB_LEVEL))


def decode_u16(text: str) -> np.ndarray:
    """The inverse of :func:`encode_u16` (flat uint16 array)."""
    return np.frombuffer(zlib.decompress(_unb64(text)), "<u2").copy()


# ------------------------------------------------------------------------------------------------ curves
def curve_entry(name: str, values, lo: float, hi: float, label: str = "", unit: str = "") -> dict:
    """A per-frame curve quantised to one byte a frame: ``{"name", "label", "unit", "lo", "hi", "data"}`` where
    ``data`` is base64 of zlib of uint8 ``round((clip(v, lo, hi) - lo) / (hi - lo) * 254)`` and
    :data:`CURVE_MISSING` (255) for a missing value (None, NaN, ±inf). Error at most ``(hi - lo) / 508`` inside
    ``[lo, hi]``. Raises ValueError unless ``hi > lo``."""
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        raise ValueError(f"curve {name!r}: hi ({hi}) must exceed lo ({lo})")
    v = np.array([np.nan if x is None else x for x in np.asarray(values, object).ravel()], np.float64)
    ok = np.isfinite(v)
    q = np.full(v.shape, CURVE_MISSING, np.uint8)
    q[ok] = np.floor((np.clip(v[ok], lo, hi) - lo) / (hi - lo) * (CURVE_LEVELS - 1) + 0.5).astype(np.uint8)
    return {"name": name, "label": label or name, "unit": unit, "lo": lo, "hi": hi,
            "data": _b64(zlib.compress(q.tobytes(), ZLIB_LEVEL))}


def decode_curve(entry: Mapping) -> np.ndarray:
    """The float64 values of a :func:`curve_entry` (NaN where missing)."""
    q = np.frombuffer(zlib.decompress(_unb64(entry["data"])), np.uint8)
    out = entry["lo"] + q.astype(np.float64) / (CURVE_LEVELS - 1) * (entry["hi"] - entry["lo"])
    out[q == CURVE_MISSING] = np.nan
    return out


def _mono(waveform) -> np.ndarray:
    w = np.asarray(waveform, np.float32)
    return w if w.ndim == 1 else w.reshape(-1, w.shape[-1]).mean(axis=0)


def preview_audio(waveform, sample_rate: float) -> tuple[np.ndarray, int]:
    """The player's copy of the speech: float ``[C, N]`` (or ``[N]``) at ``sample_rate`` Hz -> (float32 mono ``[M]``,
    rate), mixed down and, above :data:`AUDIO_RATE`, resampled to it with soxr (``M = round(N * rate /
    sample_rate)``: the same duration within one sample)."""
    mono = _mono(waveform)
    sr = int(round(float(sample_rate)))
    if sr <= AUDIO_RATE:
        return np.ascontiguousarray(mono, np.float32), sr
    import soxr

    return soxr.resample(mono, sr, AUDIO_RATE, quality="HQ").astype(np.float32), AUDIO_RATE


def loudness_curve(waveform, sample_rate: float, fps: float, n_frames: int) -> np.ndarray:
    """Loudness of the speech per video frame, float32 ``[n_frames]`` dBFS: :func:`ptalk_models.audio.rms_dbfs`
    of the mono mix-down of float ``[C, N]`` (or ``[N]``) samples at ``sample_rate`` Hz."""
    return rms_dbfs(_mono(waveform), float(sample_rate), float(fps), int(n_frames))


# ------------------------------------------------------------------------------------------------ payloads
def topology_entry() -> dict:
    """What the player draws, once per payload: ``{"edges": encode_u16 of the [1322, 2] tessellation edges,
    "contours": {name: [[landmark index, ...], ...]}}`` (needs mediapipe for the tessellation)."""
    from .topology import tesselation_edges

    return {"edges": encode_u16(tesselation_edges().ravel()),
            "contours": {k: [list(map(int, c)) for c in v] for k, v in CONTOURS.items()}}


def landmark_payload(lm: L.FaceLandmarks, waveform=None, sample_rate: float | None = None,
                     levels: int = POINT_LEVELS, node: str = "") -> dict:
    """The JSON-ready preview of a landmark sequence (see the module docstring), without the media file
    entries (``audio``, ``image``, which the caller adds).

    Args:
        lm: the sequence (T >= 1 frames of 478 points).
        waveform, sample_rate: optional speech (float ``[C, N]`` or ``[N]`` in [-1, 1], Hz) for the loudness
            curve; it needs ``lm.fps > 0``.
        levels: quantisation levels per coordinate (:data:`POINT_LEVELS`).
        node: the node's name, shown by the player.

    Raises:
        InputError: ``lm`` is not a FaceLandmarks with frames (argument ``"lm"``), or audio without a frame rate
            (argument ``"waveform"``).
    """
    if not isinstance(lm, L.FaceLandmarks) or len(lm) == 0:
        raise InputError("lm", f"expected a FaceLandmarks sequence with at least one frame, got "
                               f"{type(lm).__name__}")
    box = tuple(round(v, 3) for v in preview_box(lm.points, lm.present, scale=lm.image_size))
    q = np.empty((len(lm), lm.points.shape[1], 2), np.uint16)
    for s in range(0, len(lm), _CHUNK):  # a chunk of frames at a time: no float copy of the whole sequence
        q[s:s + _CHUNK] = quantise_points(lm.pixels(slice(s, s + _CHUNK)), box, levels)
    curves = [curve_entry("mouth", L.inner_lip_aperture(lm), *MOUTH_RANGE, label="mouth opening",
                          unit="× inter-ocular")]
    duration = None
    if waveform is not None:
        if lm.fps <= 0:
            raise InputError("waveform", "a loudness curve needs the landmarks' frame rate (fps is 0)")
        curves.append(curve_entry("loudness", loudness_curve(waveform, sample_rate, lm.fps, len(lm)),
                                  *LOUDNESS_RANGE, label="loudness", unit="dBFS"))
        duration = float(np.asarray(waveform).shape[-1]) / float(sample_rate)
    present = None if lm.present.all() else _b64(np.packbits(lm.present.astype(np.uint8)).tobytes())
    return {"format": FORMAT, "version": VERSION, "kind": "landmarks", "node": node,
            "frames": len(lm), "fps": float(lm.fps), "image_size": [lm.width, lm.height],
            "box": list(box), "levels": int(levels), "n_points": int(q.shape[1]),
            "points": encode_points(q), "present": present, "curves": curves, "topology": topology_entry(),
            "duration": duration}


def payload_points(payload: Mapping) -> np.ndarray:
    """The float32 ``[T, N, 2]`` pixel points a :func:`landmark_payload` carries (decoded and dequantised)."""
    q = decode_points(payload["points"], payload["frames"], payload["n_points"])
    return dequantise_points(q, payload["box"], payload["levels"])


def _finite_range(values: Iterable[np.ndarray]) -> tuple[float, float]:
    v = np.concatenate([np.asarray(x, np.float64).ravel() for x in values] or [np.zeros(0)])
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        pad = max(abs(hi) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def curves_payload(lanes: Sequence[Mapping], fps: float = 0.0, node: str = "") -> dict:
    """The JSON-ready preview of per-frame curves (``kind == "curves"``), one lane per entry of ``lanes``:
    ``{"label": str, "unit": str, "series": {name: values [T] (None/NaN = missing)}, "range": (lo, hi) or
    None}``; a lane without a range spans its finite values. Lanes whose series are all missing are left out.
    ``frames`` is the longest series."""
    out, frames = [], 0
    for lane in lanes:
        series = {k: np.array([np.nan if x is None else x for x in np.asarray(v, object).ravel()], np.float64)
                  for k, v in lane["series"].items() if v is not None}
        series = {k: v for k, v in series.items() if np.isfinite(v).any()}
        if not series:
            continue
        lo, hi = lane.get("range") or _finite_range(series.values())
        frames = max(frames, *(len(v) for v in series.values()))
        out.append({"label": lane["label"], "unit": lane.get("unit", ""), "lo": float(lo), "hi": float(hi),
                    "series": [curve_entry(k, v, lo, hi, label=k) for k, v in series.items()]})
    return {"format": FORMAT, "version": VERSION, "kind": "curves", "node": node, "frames": int(frames),
            "fps": float(fps) if fps and math.isfinite(fps) else 0.0, "lanes": out}


def report_curves(report: Mapping, node: str = "") -> dict:
    """The :func:`curves_payload` of an ADFD report's per-frame curves (:func:`ptalk_models.metrics.evaluate`),
    the lanes of :func:`ptalk_models.plot.report_plot`: spatial term, motion term (0..1), mouth LMD (px),
    inner-lip aperture generated vs ground truth (× inter-ocular), and when present audio 200-4000 Hz energy (dB)
    and identity similarity (0..1)."""
    pf = report["per_frame"]
    lanes = [
        {"label": "spatial term", "unit": "", "series": {"spatial": pf.get("spatial")}},
        {"label": "motion term", "unit": "", "series": {"motion": pf.get("motion")}, "range": (0.0, 1.0)},
        {"label": "mouth LMD", "unit": "px", "series": {"mouth LMD": pf.get("mouth_lmd_px")}},
        {"label": "lip aperture", "unit": "× inter-ocular",
         "series": {"generated": pf.get("aperture_generated"), "ground truth": pf.get("aperture_ground_truth")}},
        {"label": "audio energy", "unit": "dB", "series": {"energy": pf.get("audio_energy_db")}},
        {"label": "identity", "unit": "", "series": {"identity": pf.get("identity")}, "range": (0.0, 1.0)},
    ]
    return curves_payload(lanes, fps=float(report.get("fps") or 0.0), node=node)


def payload_size(payload: Mapping) -> int:
    """Bytes of the payload as ComfyUI sends it (compact JSON, UTF-8)."""
    import json

    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


# ------------------------------------------------------------------------------------------------ backdrop
def backdrop_image(frame: np.ndarray, max_side: int = 768) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> the same picture with its longer side at most ``max_side`` px (OpenCV area
    interpolation; returned as is when already small enough), for the player's backdrop."""
    import cv2

    h, w = frame.shape[:2]
    s = max_side / max(h, w)
    if s >= 1.0:
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
