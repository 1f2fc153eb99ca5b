"""Voice-activity detection (where the speech is) with Silero VAD, for keeping a dubbed mouth closed in silence.

Backend: the ``silero-vad`` package (https://github.com/snakers4/silero-vad, MIT), which ships its weights: its
ONNX model ``silero_vad/data/silero_vad.onnx`` run by **onnxruntime** on the CPU through the package's own
``OnnxWrapper`` (never the TorchScript ``.jit``), and its ``get_speech_timestamps`` (per 32 ms window speech
probability, hysteresis between ``threshold`` and ``threshold - 0.15``, short speech dropped, short pauses
bridged, padding). Nothing is downloaded. The audio is first down-mixed and resampled to 16 kHz with the pack's
:func:`ptalk_models.audio.prepare_audio` (soxr).

Units: segments in seconds from the start of the audio; per-frame masks are bool ``[n_frames]`` where video frame
``k`` covers ``[k / fps, (k + 1) / fps)`` (the pack's convention, :mod:`ptalk_models.audio`).
"""
from __future__ import annotations

import threading

import numpy as np

from .audio import TARGET_SR, prepare_audio
from .errors import InputError
from .telemetry import disable_telemetry

#: Silero's speech-probability threshold (its documented default): windows above it start speech, and speech
#: continues until the probability drops below ``threshold - 0.15``.
DEFAULT_THRESHOLD = 0.5
#: Speech shorter than this is dropped (a cough, a click, a breath that scored high), ms (Silero's default 250).
MIN_SPEECH_MS = 250
#: Pauses shorter than this stay speech (the mouth does not snap shut between words), ms.
MIN_SILENCE_MS = 200
#: Speech segments are widened by this much on both sides, ms: lips move slightly before the sound starts
#: (anticipatory coarticulation) and close after it ends.
SPEECH_PAD_MS = 80

_MODEL = None
_LOCK = threading.Lock()


def _silero():
    """The ``silero_vad`` module. Importing it sets torch's thread count to 1 (``torch.set_num_threads(1)`` in its
    ``model`` module); the caller's setting is restored."""
    import torch

    disable_telemetry()  # silero_vad imports onnxruntime
    n = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError as e:  # e.g. the pack updated without re-installing its requirements
        raise InputError("vad", f"voice-activity detection needs the silero-vad package ({e})",
                         "pip install -r requirements.txt in ComfyUI's Python, or turn close_in_silence off") from None
    finally:
        torch.set_num_threads(n)
    return silero_vad


def _model():
    """The process-wide Silero VAD ONNX model (``silero_vad.load_silero_vad(onnx=True)``: onnxruntime, CPU
    execution provider, one thread)."""
    global _MODEL
    if _MODEL is None:
        try:
            _MODEL = _silero().load_silero_vad(onnx=True)
        except ImportError as e:  # onnxruntime missing
            raise InputError("vad", f"voice-activity detection needs onnxruntime ({e})",
                             "pip install -r requirements.txt in ComfyUI's Python, or turn close_in_silence off") from None
    return _MODEL


def speech_segments(waveform, sample_rate, threshold: float = DEFAULT_THRESHOLD) -> list[tuple[float, float]]:
    """Speech segments of an audio track, ``[(start_s, end_s), ...]`` in seconds, ascending, non-overlapping.

    Args:
        waveform: float ``[samples]`` or ``[channels, samples]`` in [-1, 1] (channels averaged).
        sample_rate: Hz (any; resampled to 16 kHz).
        threshold: Silero speech probability in (0, 1) above which a 32 ms window is speech
            (:data:`DEFAULT_THRESHOLD`); higher = stricter (less noise taken for speech, quiet speech missed).

    :data:`MIN_SPEECH_MS`, :data:`MIN_SILENCE_MS` and :data:`SPEECH_PAD_MS` are passed to Silero's
    ``get_speech_timestamps``. Empty list for silence, noise without speech, or audio shorter than one window.

    Raises:
        InputError: ``argument="threshold"`` outside (0, 1); ``"waveform"`` / ``"sample_rate"`` for audio
            :func:`ptalk_models.audio.prepare_audio` rejects; ``"vad"`` when silero-vad or onnxruntime is not
            installed.
    """
    th = float(threshold)
    if not np.isfinite(th) or not 0.0 < th < 1.0:
        raise InputError("threshold", f"the voice-activity threshold must lie in (0, 1), got {threshold!r};",
                         "use 0.5 (Silero's default)")
    mono = prepare_audio(waveform, sample_rate).samples
    if len(mono) < 512:
        return []
    import torch

    model = _model()
    with _LOCK:  # the wrapper keeps recurrent state between windows
        ts = _silero().get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(mono, np.float32)), model, threshold=th,
                                   sampling_rate=TARGET_SR, min_speech_duration_ms=MIN_SPEECH_MS,
                                   min_silence_duration_ms=MIN_SILENCE_MS, speech_pad_ms=SPEECH_PAD_MS)
    return [(d["start"] / TARGET_SR, d["end"] / TARGET_SR) for d in ts]


def segments_to_frames(segments, fps: float, n_frames: int) -> np.ndarray:
    """Per-video-frame speech mask, bool ``[n_frames]``: frame ``k`` (``[k / fps, (k + 1) / fps)``) is True when
    it overlaps a segment ``(start_s, end_s)``. Raises ValueError for fps <= 0 or n_frames < 0."""
    fps, n = float(fps), int(n_frames)
    if not np.isfinite(fps) or fps <= 0 or n < 0:
        raise ValueError(f"need fps > 0 and n_frames >= 0, got {fps}, {n}")
    mask = np.zeros(n, bool)
    for a, b in segments:
        lo, hi = int(np.floor(a * fps)), int(np.ceil(b * fps))
        mask[max(lo, 0):max(min(hi, n), 0)] = True
    return mask


def speech_frames(waveform, sample_rate, fps: float, n_frames: int,
                  threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """:func:`speech_segments` as a per-video-frame mask, bool ``[n_frames]`` (:func:`segments_to_frames`).
    Raises as :func:`speech_segments`."""
    return segments_to_frames(speech_segments(waveform, sample_rate, threshold), fps, n_frames)


__all__ = ["DEFAULT_THRESHOLD", "MIN_SPEECH_MS", "MIN_SILENCE_MS", "SPEECH_PAD_MS", "speech_segments",
           "segments_to_frames", "speech_frames"]
