"""Bad (and merely unusual) inputs for the reliability matrix (tests/test_reliability_matrix.py), generated into a
temporary folder at test time from the shared real media (never committed): images, audio, videos and weight files.

Every generator takes the destination path first and returns it. Media are made with numpy, Pillow and PyAV (no
``ffmpeg`` binary is needed: PyAV carries FFmpeg's libraries, with libx264/libx265); WAV files are written by hand
(16-bit PCM, or 32-bit IEEE float where NaN/Inf samples must survive the file).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "read_rgb", "save_image", "no_face", "tile_faces", "resized", "squash_face", "rgba", "grayscale", "one_pixel",
    "huge", "jpeg_named_png", "truncated", "read_audio", "write_wav", "write_float_wav", "silence", "white_noise",
    "resample", "clipped", "audio_clip", "flac_named_wav", "truncated_file", "repeat_to", "write_video",
    "video_frames", "audio_only_mp4", "set_mp4_rotation", "mp4_rotation", "corrupt_bytes", "malicious_pickle",
    "MARKER_NAME",
]


# ---------------------------------------------------------------------------------------------------- images
def read_rgb(path) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of an image file (Pillow)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def save_image(path, arr: np.ndarray, fmt: str | None = None, **kw) -> Path:
    """Write ``arr`` (uint8 ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``) with Pillow; ``fmt`` overrides the format
    the extension implies (e.g. a JPEG written under a ``.png`` name)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(arr)).save(path, format=fmt, **kw)
    return path if hasattr(path, "write") else Path(path)


def _resize(arr: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((w, h), Image.NEAREST if nearest else Image.BICUBIC))


def no_face(path, size: int = 512, seed: int = 0) -> Path:
    """A smooth random colour field (clouds, no face)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return save_image(path, _resize(small, size, size))


def tile_faces(path, faces: Sequence[np.ndarray], cols: int = 3, cell: int = 256) -> Path:
    """The faces resized to ``cell``² and tiled ``cols`` per row (six faces → 3 × 2)."""
    rows = -(-len(faces) // cols)
    out = np.zeros((rows * cell, cols * cell, 3), np.uint8)
    for i, f in enumerate(faces):
        r, c = divmod(i, cols)
        out[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = _resize(f, cell, cell)
    return save_image(path, out)


def resized(path, arr: np.ndarray, w: int, h: int) -> Path:
    """``arr`` resized to ``w`` × ``h`` (bicubic)."""
    return save_image(path, _resize(arr, w, h))


def squash_face(path, arr: np.ndarray, factor: float = 0.35) -> Path:
    """A strongly yawed-looking face: the photo squashed horizontally to ``factor`` of its width and padded back
    to its size with its edge colours (the face is narrow like a head turned far aside; the shared data hold no
    real profile photo)."""
    h, w = arr.shape[:2]
    nw = max(1, int(round(w * factor)))
    narrow = _resize(arr, nw, h)
    left = (w - nw) // 2
    out = np.pad(narrow, ((0, 0), (left, w - nw - left), (0, 0)), mode="edge")
    return save_image(path, out)


def rgba(path, arr: np.ndarray) -> Path:
    """A PNG with an alpha channel (a soft vignette: opaque centre, transparent corners)."""
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    alpha = np.clip(255 * (1.3 - r), 0, 255).astype(np.uint8)
    return save_image(path, np.dstack([arr, alpha]))


def grayscale(path, arr: np.ndarray) -> Path:
    """A single-channel (mode L) PNG."""
    g = (arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return save_image(path, g)


def one_pixel(path, rgb=(200, 150, 120)) -> Path:
    """A 1 × 1 PNG."""
    return save_image(path, np.array([[rgb]], np.uint8))


def huge(path, arr: np.ndarray, size: int = 8192, quality: int = 85) -> Path:
    """``arr`` upscaled to ``size`` × ``size`` (nearest neighbour: fast) and saved as JPEG (a fast 8K file)."""
    from PIL import Image

    Image.fromarray(arr).resize((size, size), Image.NEAREST).save(path, format="JPEG", quality=quality)
    return Path(path)


def jpeg_named_png(path, arr: np.ndarray) -> Path:
    """A JPEG file under a ``.png`` name."""
    return save_image(path, arr, fmt="JPEG", quality=92)


def truncated_file(path, src_bytes: bytes, keep: float) -> Path:
    """The first ``keep`` (fraction) of ``src_bytes`` written to ``path``."""
    Path(path).write_bytes(src_bytes[:max(1, int(len(src_bytes) * keep))])
    return Path(path)


def truncated(path, arr: np.ndarray, keep: float = 0.4) -> Path:
    """A PNG of ``arr`` cut after ``keep`` of its bytes (the rows below are missing)."""
    buf = io.BytesIO()
    save_image(buf, arr, fmt="PNG")
    return truncated_file(path, buf.getvalue(), keep)


# ---------------------------------------------------------------------------------------------------- audio
def read_audio(path) -> tuple[np.ndarray, int]:
    """(float32 ``[C, N]``, Hz) of an audio file decoded with PyAV."""
    import av

    chunks = []
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        rate = s.rate
        for f in c.decode(s):
            x = f.to_ndarray()
            if not f.format.is_planar:
                x = x.reshape(-1, len(f.layout.channels)).T
            chunks.append(x)
    a = np.concatenate(chunks, axis=1).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        a /= float(np.iinfo(chunks[0].dtype).max + 1)
    return a, int(rate)


def _wav_bytes(data: bytes, channels: int, rate: int, bits: int, fmt_tag: int) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if fmt_tag == 3:  # non-PCM: a fact chunk with the sample-frame count
        chunks += b"fact" + struct.pack("<II", 4, len(data) // block)
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def write_wav(path, wav: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV of float ``[C, N]`` (or ``[N]``) in [-1, 1] (clipped)."""
    w = np.atleast_2d(np.asarray(wav, np.float32))
    pcm = (np.clip(w, -1.0, 1.0) * 32767.0).round().astype("<i2").T.tobytes()
    Path(path).write_bytes(_wav_bytes(pcm, w.shape[0], int(rate), 16, 1))
    return Path(path)


def write_float_wav(path, wav: np.ndarray, rate: int) -> Path:
    """32-bit IEEE float WAV of ``[C, N]`` (or ``[N]``) as given: NaN, Inf and values beyond ±1 are kept."""
    w = np.atleast_2d(np.asarray(wav, np.float32))
    Path(path).write_bytes(_wav_bytes(w.astype("<f4").T.tobytes(), w.shape[0], int(rate), 32, 3))
    return Path(path)


def silence(path, seconds: float, rate: int = 16000) -> Path:
    """Digital silence (all zeros), mono."""
    return write_wav(path, np.zeros(int(round(seconds * rate)), np.float32), rate)


def white_noise(path, seconds: float, rate: int = 16000, level: float = 0.3, seed: int = 0) -> Path:
    """Uniform white noise at ``level`` peak, mono."""
    rng = np.random.default_rng(seed)
    return write_wav(path, rng.uniform(-level, level, int(round(seconds * rate))).astype(np.float32), rate)


def resample(wav: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``[C, N]`` resampled by linear interpolation (enough for test speech)."""
    n = wav.shape[-1]
    m = max(1, int(round(n * new_rate / rate)))
    x = np.arange(m) * (rate / new_rate)
    return np.stack([np.interp(x, np.arange(n), ch) for ch in wav]).astype(np.float32)


def audio_clip(wav: np.ndarray, rate: int, seconds: float, start: float = 0.0) -> np.ndarray:
    """``seconds`` of ``wav`` from ``start``."""
    a = int(round(start * rate))
    return wav[:, a:a + int(round(seconds * rate))]


def clipped(wav: np.ndarray, gain: float = 12.0) -> np.ndarray:
    """``wav`` amplified by ``gain`` and hard-clipped to ±1 (square-topped)."""
    return np.clip(wav * gain, -1.0, 1.0)


def repeat_to(wav: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """``wav`` repeated to exactly ``seconds``."""
    n = int(round(seconds * rate))
    reps = -(-n // wav.shape[-1])
    return np.tile(wav, (1, reps))[:, :n]


def flac_named_wav(path, wav: np.ndarray, rate: int) -> Path:
    """A FLAC file under a ``.wav`` name (PyAV)."""
    import av

    w = np.atleast_2d(np.asarray(wav, np.float32))
    pcm = (np.clip(w, -1, 1) * 32767).round().astype(np.int16)
    with av.open(str(path), "w", format="flac") as out:
        s = out.add_stream("flac", rate=rate)
        s.layout = "mono" if w.shape[0] == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T.reshape(1, -1)), format="s16",
                                           layout=s.layout.name)
        frame.sample_rate = rate
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return Path(path)


# ---------------------------------------------------------------------------------------------------- video
def video_frames(path, limit: int | None = None) -> tuple[np.ndarray, float]:
    """(uint8 RGB ``[T, H, W, 3]``, average fps) of a video's first stream (at most ``limit`` frames)."""
    import av

    out = []
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate or 25)
        for f in c.decode(v):
            rgb = f.to_ndarray(format="rgb24")
            k = int(round(float(getattr(f, "rotation", 0) or 0) / 90.0)) % 4  # as displayed (phone rotation)
            out.append(np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb)
            if limit and len(out) >= limit:
                break
    return np.stack(out), fps


def write_video(path, frames: Iterable[np.ndarray], fps: float = 25.0, codec: str = "libx264",
                pix_fmt: str = "yuv420p", times: Sequence[float] | None = None,
                audio: tuple[np.ndarray, int] | None = None, options: dict | None = None) -> Path:
    """Encode uint8 RGB frames to mp4 with PyAV. ``times`` (seconds, one per frame): presentation times for a
    variable-frame-rate file (a 1/1000 s time base); else a constant ``fps``. ``audio``: (float ``[C, N]``, Hz)
    muxed as AAC."""
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        rate = Fraction(fps).limit_denominator(1001)
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        vs.options = dict(options or {})
        if times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24").reformat(format=pix_fmt)
            if times is not None:
                vf.pts = int(round(times[i] * 1000))
                vf.time_base = Fraction(1, 1000)
            else:
                vf.pts = i
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if audio is not None:
            _mux_aac(out, *audio)
    return Path(path)


def _mux_aac(out, wav: np.ndarray, rate: int) -> None:
    import av

    w = np.atleast_2d(np.asarray(wav, np.float32))[:2]
    s = out.add_stream("aac", rate=rate)
    s.layout = "mono" if w.shape[0] == 1 else "stereo"
    chunk = 1024 * 16
    for a in range(0, w.shape[1], chunk):
        part = np.ascontiguousarray(w[:, a:a + chunk].T.reshape(1, -1))
        fr = av.AudioFrame.from_ndarray(part, format="flt", layout=s.layout.name)
        fr.sample_rate, fr.pts = rate, a
        for p in s.encode(fr):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)


def audio_only_mp4(path, wav: np.ndarray, rate: int) -> Path:
    """An mp4 holding only an AAC audio stream (no video stream)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        _mux_aac(out, wav, rate)
    return Path(path)


def _boxes(data: bytes, start: int, end: int):
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        hdr = 8
        if size == 1:
            size, hdr = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        if size < hdr:
            return
        yield kind, i, i + hdr, i + size
        i += size


def _video_tkhd(data: bytes) -> int:
    """Offset of the matrix in the ``tkhd`` box of the first track whose handler is ``vide``."""
    for kind, _, a, b in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for k2, _, a2, b2 in _boxes(data, a, b):
            if k2 != b"trak":
                continue
            tkhd = None
            video = False
            for k3, _, a3, b3 in _boxes(data, a2, b2):
                if k3 == b"tkhd":
                    tkhd = a3
                elif k3 == b"mdia":
                    for k4, _, a4, _b4 in _boxes(data, a3, b3):
                        if k4 == b"hdlr" and data[a4 + 8:a4 + 12] == b"vide":
                            video = True
            if tkhd is not None and video:
                version = data[tkhd]
                # version/flags 4, times (8 or 16 + 4 + 4), reserved 8, layer 2, group 2, volume 2, reserved 2
                return tkhd + 4 + (32 if version == 1 else 20) + 8 + 8
    raise ValueError("no video track header (tkhd) found")


_MATRICES = {0: (1, 0, 0, 1), 90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


def set_mp4_rotation(path, degrees: int) -> Path:
    """Write phone-style rotation metadata into an mp4 in place: the video track header's display matrix (what
    ``ffmpeg -metadata:s:v rotate=90`` / ``-display_rotation`` write; players turn the picture by ``degrees``
    clockwise)."""
    data = bytearray(Path(path).read_bytes())
    off = _video_tkhd(bytes(data))
    a, b, c, d = _MATRICES[degrees % 360]
    fx = lambda v: struct.pack(">i", int(v * 65536))  # noqa: E731 - 16.16 fixed point
    data[off:off + 36] = fx(a) + fx(b) + struct.pack(">i", 0) + fx(c) + fx(d) + struct.pack(">i", 0) + \
        struct.pack(">iii", 0, 0, 1 << 30)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def mp4_rotation(path) -> int:
    """The clockwise display rotation (0/90/180/270) of an mp4's video track header."""
    data = Path(path).read_bytes()
    off = _video_tkhd(data)
    a, b = (struct.unpack(">i", data[off + 4 * k:off + 4 * k + 4])[0] / 65536 for k in (0, 1))
    for deg, m in _MATRICES.items():
        if (round(a), round(b)) == m[:2]:
            return deg
    return 0


# ---------------------------------------------------------------------------------------------------- weights
def corrupt_bytes(path, n: int = 4096, seed: int = 0) -> Path:
    """``n`` random bytes (not any known file format)."""
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return Path(path)


#: File that :func:`malicious_pickle`'s payload would create when unpickled.
MARKER_NAME = "PWNED_BY_PICKLE"


class _Payload:
    """Unpickling this calls ``os.system('touch <marker>')`` (the classic ``__reduce__`` exploit)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(path, marker) -> Path:
    """A ``torch.save``-style zip checkpoint whose ``data.pkl`` runs ``touch <marker>`` when loaded with plain
    pickle (``torch.load(weights_only=False)``), next to a real tensor."""
    import torch

    obj = {"weight": torch.zeros(2, 2), "exploit": _Payload(str(marker))}
    torch.save(obj, str(path), pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return Path(path)
