"""The in-node player's data as a ComfyUI UI output: the engine's preview payload (``ptalk_models.preview``) plus the
media files the player loads through ComfyUI's ``/view``, written into ComfyUI's temp folder (``type: "temp"``,
emptied by ComfyUI at start-up) and nowhere else.

A node returns ``io.NodeOutput(..., ui=landmark_preview(...))``; ComfyUI sends the dict to the frontend in its
``executed`` message (and keeps it in ``/history``), where ``web/landmark_player.js`` reads ``ui[UI_KEY][0]``.
The key is the pack's own, so the frontend's built-in previews (``images``, ``audio``, ``text``) ignore it.

A preview must never cost the user their result: when it cannot be built, the node logs a warning and returns
no UI output (:func:`_safely`).
"""
from __future__ import annotations

import functools
import os
import uuid

import numpy as np

from ...ptalk_models import preview as engine
from ...ptalk_models.media import write_flac
from .errors import log

#: the key of the pack's UI output (``{UI_KEY: [payload]}``)
UI_KEY = "ptalk_preview"
#: longer side (px) of the backdrop image a landmark node writes for the player
BACKDROP_MAX_SIDE = 768
BACKDROP_QUALITY = 88


def _safely(fn):
    """Run a preview builder; on any exception log a warning naming the node and return None (no UI output)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the preview is optional, the node's result is not
            log.warning("%s: no preview for the player (%s: %s)", kwargs.get("node") or "PortraitTalk",
                        type(e).__name__, e)
            return None
    return wrapper


def _temp_name(suffix: str) -> tuple[str, str]:
    """``(file name, full path)`` of a new file in ComfyUI's temp folder."""
    import folder_paths

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    name = f"ptalk_preview_{uuid.uuid4().hex[:16]}{suffix}"
    return name, os.path.join(folder, name)


def write_temp_audio(mono: np.ndarray, rate: int) -> dict:
    """Float32 mono samples at ``rate`` Hz (``ptalk_models.preview.preview_audio``) as a FLAC file in ComfyUI's temp
    folder. Returns the ``{"filename", "subfolder", "type": "temp"}`` entry ``/view`` serves, plus ``"duration"``
    (s) and ``"sample_rate"`` (Hz)."""
    name, path = _temp_name(".flac")
    write_flac(path, mono, rate)
    return {"filename": name, "subfolder": "", "type": "temp", "duration": len(mono) / float(rate),
            "sample_rate": int(rate)}


def write_temp_image(frame: np.ndarray) -> dict:
    """uint8 RGB ``[H, W, 3]``, scaled to :data:`BACKDROP_MAX_SIDE` px at most, as a JPEG in ComfyUI's temp folder;
    returns its ``{"filename", "subfolder", "type": "temp", "width", "height"}`` entry."""
    from PIL import Image

    small = engine.backdrop_image(frame, BACKDROP_MAX_SIDE)
    name, path = _temp_name(".jpg")
    Image.fromarray(small).save(path, format="JPEG", quality=BACKDROP_QUALITY)
    return {"filename": name, "subfolder": "", "type": "temp", "width": int(small.shape[1]),
            "height": int(small.shape[0])}


@_safely
def landmark_preview(lm, *, node: str, audio: tuple | None = None, image: np.ndarray | None = None,
                     backdrop_input: str | None = None) -> dict | None:
    """The UI output of a node that outputs landmarks: ``{UI_KEY: [payload]}`` (``ptalk_models.preview.
    landmark_payload``) with

    * ``audio``: ``(waveform float [C, N], Hz)`` of the speech -> its mono copy at most 24 kHz
      (``ptalk_models.preview.preview_audio``) as a temp FLAC the player plays in sync, and the loudness curve
      of the lip-sync strip computed on that copy;
    * ``image``: uint8 RGB ``[H, W, 3]`` the landmarks were detected on -> a temp JPEG the player draws under
      the mesh;
    * ``backdrop_input``: without an image, the name of the node input whose upstream node's preview image the
      player draws (e.g. Audio → Landmarks' ``reference``, from Face Landmarks).

    None (and a logged warning) when the preview cannot be built.
    """
    mono, rate = engine.preview_audio(*audio) if audio is not None else (None, None)
    payload = engine.landmark_payload(lm, mono, rate, node=node)  # loudness of what the player plays
    payload["audio"] = write_temp_audio(mono, rate) if mono is not None else None
    payload["image"] = write_temp_image(image) if image is not None else None
    payload["backdrop_input"] = backdrop_input if image is None else None
    return {UI_KEY: [payload]}


@_safely
def report_preview(report: dict, *, node: str) -> dict | None:
    """The UI output of an ADFD report's per-frame curves (``ptalk_models.preview.report_curves``):
    ``{UI_KEY: [payload]}``, or None (and a logged warning) when it cannot be built."""
    return {UI_KEY: [engine.report_curves(report, node=node)]}
