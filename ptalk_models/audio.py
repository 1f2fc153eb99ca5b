"""Audio preparation and per-video-frame audio features for the Audio -> Landmarks engine.

Everything here works on plain numpy arrays (no ComfyUI import):

* :func:`prepare_audio` / :func:`to_mono_16k` -- down-mix to mono and resample to 16 kHz with **soxr**
  (libsoxr, "HQ" quality), the input rate of pocketsphinx's en-us acoustic model. Non-finite samples
  (NaN/Inf) are replaced by 0 (treated as silence) and counted so the caller can warn.
* :func:`n_video_frames` -- the one frame-count rule of the pack: ``T = max(1, round_half_up(duration * fps))``.
* :func:`frame_centres` -- the time stamp (seconds) of the centre of each video frame, ``(k + 0.5) / fps``.
* :func:`rms_dbfs` and :func:`band_log_energy` -- loudness and 200-4000 Hz band energy per video frame,
  from Hann windows centred on the video frames. :func:`band_log_energy` is also the audio side of the
  lip-sync proxy (aperture vs. speech-band energy cross-correlation) used by the tests and by the
  ADFD/sync-proxy metric, so it is deliberately small and fully specified.

Conventions: video frame ``k`` is displayed during ``[k / fps, (k + 1) / fps)``; its audio features are
computed from a window centred on ``(k + 0.5) / fps`` whose length is two video frames (``2 / fps`` s, at
least 25 ms), zero-padded outside the signal. Levels are in dB: ``10 * log10(mean power)`` with a floor of
``-120 dB`` (:data:`DB_FLOOR`), where a full-scale (amplitude 1.0) square wave is 0 dB and a full-scale sine
is about -3 dB.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import InputError

TARGET_SR = 16000          # Hz, pocketsphinx en-us acoustic model rate
DB_FLOOR = -120.0          # dB returned for digital silence
MIN_WINDOW_S = 0.025       # s, shortest analysis window (25 ms, a standard speech frame)
SPEECH_BAND = (200.0, 4000.0)  # Hz, default band of band_log_energy (first formants + most consonant cues)
_MAX_CHANNELS = 64
_CHUNK_FRAMES = 2048       # video frames per vectorised block (bounds memory for long audio)


@dataclass
class PreparedAudio:
    """Mono 16 kHz audio plus what was done to get it.

    ``samples``       float32 ``[N]`` at :data:`TARGET_SR` Hz, nominally in [-1, 1].
    ``duration_s``    duration of the *input* (``n_input_samples / source_rate``), seconds.
    ``source_rate``   input sample rate, Hz.
    ``channels``      number of input channels that were averaged.
    ``n_nonfinite``   number of NaN/Inf input samples that were replaced by 0 (silence).
    """

    samples: np.ndarray
    duration_s: float
    source_rate: float
    channels: int
    n_nonfinite: int
    n_input_samples: int


def _as_channels_first(waveform) -> np.ndarray:
    """``[samples]``, ``[channels, samples]`` or ``[1, channels, samples]`` -> float64 ``[channels, samples]``.

    Raises :class:`~ptalk_models.errors.InputError` (``argument="waveform"``) for a non-numeric array, another
    shape, or one that looks like ``[samples, channels]``."""
    if hasattr(waveform, "detach"):  # a torch tensor: accept without importing torch
        waveform = waveform.detach().cpu().numpy()
    x = np.asarray(waveform)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError("waveform", f"waveform must be a numeric array [channels, samples], got dtype {x.dtype}")
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise InputError("waveform", f"waveform must be [samples] or [channels, samples], got shape "
                                     f"{tuple(x.shape)}; for a ComfyUI AUDIO batch pass one item, e.g. "
                                     "audio['waveform'][0]")
    if x.shape[0] > _MAX_CHANNELS and x.shape[1] <= _MAX_CHANNELS:
        raise InputError("waveform", f"waveform has shape {tuple(x.shape)}, which looks like [samples, "
                                     "channels]; pass it as [channels, samples] (transpose it)")
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = x.astype(np.float64) / float(max(abs(info.min), info.max))
    return x.astype(np.float64, copy=False)


def prepare_audio(waveform, sample_rate) -> PreparedAudio:
    """Down-mix to mono (mean over channels) and resample to 16 kHz with soxr.

    Args:
        waveform: ``[samples]`` or ``[channels, samples]`` (a leading batch axis of size 1 is accepted),
            float in [-1, 1]; integer arrays are scaled by their dtype's full scale. Any channel count.
        sample_rate: input rate in Hz (> 0; any rate, e.g. 8000, 16000, 44100, 48000).

    Returns:
        :class:`PreparedAudio`. NaN/Inf samples are replaced by 0 before mixing (documented fallback:
        treated as silence) and counted in ``n_nonfinite``.

    Raises:
        InputError (a ValueError): ``argument="sample_rate"`` for a non-numeric, non-positive or non-finite rate;
        ``argument="waveform"`` for empty audio or a malformed array (dtype, shape).

    Resampling: ``soxr.resample(..., quality="HQ")`` (libsoxr), not own code.
    """
    import soxr

    try:
        sr = float(sample_rate)
    except (TypeError, ValueError):
        raise InputError("sample_rate", f"sample_rate must be a number of Hz, got {sample_rate!r}") from None
    if not np.isfinite(sr) or sr <= 0:
        raise InputError("sample_rate", f"sample_rate must be > 0 Hz, got {sample_rate!r}")
    x = _as_channels_first(waveform)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError("waveform", f"waveform is empty (shape {tuple(x.shape)}); connect audio with at least "
                                     "one sample")
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        x = np.where(bad, 0.0, x)
    mono = x.mean(axis=0)
    if sr == TARGET_SR:
        out = mono.astype(np.float32)
    else:
        out = soxr.resample(mono, sr, TARGET_SR, quality="HQ").astype(np.float32)
    return PreparedAudio(samples=np.ascontiguousarray(out), duration_s=x.shape[1] / sr, source_rate=sr,
                         channels=int(x.shape[0]), n_nonfinite=n_bad, n_input_samples=int(x.shape[1]))


def to_mono_16k(waveform, sample_rate) -> np.ndarray:
    """Mono float32 ``[N]`` at 16 kHz; see :func:`prepare_audio` (which also reports NaN/Inf counts)."""
    return prepare_audio(waveform, sample_rate).samples


def n_video_frames(n_samples: int, sample_rate, fps) -> int:
    """Number of video frames for ``n_samples`` of audio: ``max(1, round_half_up(n_samples / sample_rate * fps))``.

    Exact rational arithmetic (so 0.1 s at 25 fps is 3 frames, not 2 as Python's banker's ``round(2.5)``
    would give). At least one frame, so very short audio still yields a (still) frame.

    Raises:
        ValueError: ``fps`` or ``sample_rate`` not > 0, or ``n_samples`` < 0.
    """
    fps_f, sr_f = float(fps), float(sample_rate)
    if not (np.isfinite(fps_f) and fps_f > 0):
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if not (np.isfinite(sr_f) and sr_f > 0):
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate!r}")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    q = Fraction(int(n_samples)) * Fraction(fps_f) / Fraction(sr_f)
    return max(1, int(q + Fraction(1, 2)))  # floor(q + 1/2)


def frame_centres(n_frames: int, fps: float) -> np.ndarray:
    """Centre time (s) of each video frame, float64 ``[n_frames]``: ``(k + 0.5) / fps``."""
    return (np.arange(int(n_frames), dtype=np.float64) + 0.5) / float(fps)


def _window_len(sr: float, fps: float) -> int:
    return max(int(round(2.0 * sr / fps)), int(round(MIN_WINDOW_S * sr)), 4)


def _framed(mono: np.ndarray, sr: float, fps: float, n_frames: int, start: int, stop: int, win_len: int):
    """Hann-windowed frames ``[stop-start, win_len]`` centred on video frames ``start..stop-1``."""
    centres = np.round(frame_centres(n_frames, fps)[start:stop] * sr).astype(np.int64)
    first = centres - win_len // 2
    # the samples these windows cover, zero outside the signal (only this span is copied, not the whole signal)
    lo, hi = int(first.min()), int(first.max()) + win_len
    span = np.zeros(hi - lo, dtype=mono.dtype)
    a, b = max(lo, 0), min(hi, len(mono))
    if a < b:
        span[a - lo:b - lo] = mono[a:b]
    return span[(first - lo)[:, None] + np.arange(win_len)[None, :]]


def _check_features_args(mono, sr, fps, n_frames):
    mono = np.asarray(mono, dtype=np.float64).reshape(-1)
    if not (np.isfinite(float(sr)) and float(sr) > 0):
        raise ValueError(f"sr must be > 0 Hz, got {sr!r}")
    if not (np.isfinite(float(fps)) and float(fps) > 0):
        raise ValueError(f"fps must be > 0, got {fps!r}")
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
    return np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0), float(sr), float(fps), int(n_frames)


def rms_dbfs(mono: np.ndarray, sr: float, fps: float, n_frames: int) -> np.ndarray:
    """Loudness per video frame: RMS level in dB (full-scale square wave = 0 dB), float32 ``[n_frames]``.

    ``10 * log10(sum(w * x^2) / sum(w))`` over a Hann window ``w`` of ``max(2 / fps, 25 ms)`` centred on
    each video frame's centre ``(k + 0.5) / fps`` (zero-padded at the ends); floored at :data:`DB_FLOOR`.

    Args:
        mono: float ``[N]`` mono samples at ``sr`` Hz (NaN/Inf count as 0).
        sr: sample rate, Hz. fps: video frame rate. n_frames: number of video frames (>= 1).

    Raises:
        ValueError: ``sr`` or ``fps`` not > 0, or ``n_frames`` < 1.
    """
    mono, sr, fps, n_frames = _check_features_args(mono, sr, fps, n_frames)
    L = _window_len(sr, fps)
    w = np.hanning(L + 2)[1:-1]
    out = np.empty(n_frames, dtype=np.float64)
    for s in range(0, n_frames, _CHUNK_FRAMES):
        e = min(n_frames, s + _CHUNK_FRAMES)
        fr = _framed(mono, sr, fps, n_frames, s, e, L)
        out[s:e] = (fr * fr) @ w / w.sum()
    return np.maximum(10.0 * np.log10(np.maximum(out, 1e-30)), DB_FLOOR).astype(np.float32)


def band_log_energy(mono: np.ndarray, sr: float, fps: float, n_frames: int,
                    band: tuple[float, float] = SPEECH_BAND) -> np.ndarray:
    """Log energy (dB) of the ``band`` (default 200-4000 Hz) per video frame, float32 ``[n_frames]``.

    For video frame ``k`` a Hann window ``w`` of ``max(2 / fps, 25 ms)`` is centred on ``(k + 0.5) / fps``
    (zero-padded outside the signal), the power spectrum ``|rfft(w * x)|^2`` is summed over the FFT bins
    with ``band[0] <= f <= band[1]`` and normalised by ``sum(w^2)`` (white noise of variance ``s^2`` then
    contributes ``s^2`` per bin), and converted to ``10 * log10(.)``, floored at :data:`DB_FLOOR` (-120 dB)
    for digital silence. The FFT length is the window length rounded up to a power of two.

    This is the audio half of the lip-sync proxy: the inner-lip aperture of a talking face correlates
    positively with it, with the cross-correlation peak at lag 0 +- 1 frame.

    Args:
        mono: float ``[N]`` mono samples (NaN/Inf count as 0).
        sr: sample rate in Hz (any). fps: video frames per second. n_frames: video frames (>= 1).
        band: ``(low_hz, high_hz)``, 0 <= low < high; ``high`` is clipped to the Nyquist frequency.

    Raises:
        ValueError: bad ``sr``/``fps``/``n_frames``/``band``.
    """
    mono, sr, fps, n_frames = _check_features_args(mono, sr, fps, n_frames)
    lo, hi = float(band[0]), float(band[1])
    if not (0.0 <= lo < hi):
        raise ValueError(f"band must be (low_hz, high_hz) with 0 <= low < high, got {band!r}")
    L = _window_len(sr, fps)
    n_fft = 1 << int(np.ceil(np.log2(L)))
    w = np.hanning(L + 2)[1:-1]
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    sel = (freqs >= lo) & (freqs <= min(hi, sr / 2.0))
    if not sel.any():
        raise ValueError(f"band {band!r} holds no FFT bin at sr={sr} Hz, fps={fps}; widen the band")
    out = np.empty(n_frames, dtype=np.float64)
    for s in range(0, n_frames, _CHUNK_FRAMES):
        e = min(n_frames, s + _CHUNK_FRAMES)
        fr = _framed(mono, sr, fps, n_frames, s, e, L) * w
        spec = np.fft.rfft(fr, n=n_fft, axis=1)[:, sel]
        out[s:e] = (spec.real ** 2 + spec.imag ** 2).sum(axis=1) / (w @ w)
    return np.maximum(10.0 * np.log10(np.maximum(out, 1e-30)), DB_FLOOR).astype(np.float32)
