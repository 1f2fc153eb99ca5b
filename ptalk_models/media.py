"""Media I/O through libraries: audio/video decoding and a streaming mp4 writer (PyAV), images (OpenCV).

``write_mp4`` encodes frames as they are produced, so memory stays at one frame: used for long
talking-photo jobs, where a ComfyUI IMAGE batch (float32 [T, H, W, 3]) would not fit in memory (10 minutes
at 25 fps and 512x512 is 47 GB as float32). A talking photo changes only in its face crop: such frames can be
given as :class:`PatchedFrame` (the unchanging photo + the crop), which ``write_mp4`` composites in the
encoder's YUV 4:2:0 (the photo converted once, only the crop per frame).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Iterator, Sequence

import numpy as np


def read_audio(path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file PyAV/FFmpeg reads (wav, flac, mp3, mp4, flv …): a path, or a
    seekable binary file object (rewound first).

    Returns float32 ``[channels, samples]`` in [-1, 1] at the file's own rate (Hz), no resampling.
    Raises FileNotFoundError (no such file), IndexError (no audio stream), ValueError (a stream without
    samples) and PyAV's ``av.error.FFmpegError`` for data FFmpeg cannot decode.
    """
    import av

    with av.open(_source(path)) as c:
        s = c.streams.audio[0]
        rs = av.AudioResampler(format="fltp", layout=s.layout.name, rate=s.rate)
        chunks = []
        for f in c.decode(s):
            chunks += [g.to_ndarray() for g in rs.resample(f)]
        chunks += [g.to_ndarray() for g in rs.resample(None)]
        return np.concatenate(chunks, axis=1).astype(np.float32), int(s.rate)


def write_wav(path, waveform: np.ndarray, sample_rate: int):
    """Write float ``[C, N]`` (or ``[N]``) samples in [-1, 1] as 16-bit PCM WAV (stdlib ``wave``); returns ``path``.

    Samples outside [-1, 1] are clipped; NaN is not allowed (ValueError).
    """
    import wave

    x = np.atleast_2d(np.asarray(waveform, np.float64))
    if np.isnan(x).any():
        raise ValueError("write_wav: waveform contains NaN")
    pcm = (np.clip(x.T, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


def write_flac(path, waveform: np.ndarray, sample_rate: int, chunk: int = 1 << 16):
    """Write float ``[C, N]`` (or ``[N]``; C = 1 or 2) samples in [-1, 1] as FLAC (PyAV), encoded ``chunk`` samples at a
    time (memory stays at a chunk); returns ``path``. The file holds exactly N samples at ``sample_rate`` Hz.

    Samples outside [-1, 1] are clipped; ValueError for NaN or more than 2 channels.
    """
    import av

    x = np.atleast_2d(np.asarray(waveform, np.float32))
    if x.shape[0] > 2:
        raise ValueError(f"write_flac: 1 or 2 channels, got {x.shape[0]}")
    if np.isnan(x).any():
        raise ValueError("write_flac: waveform contains NaN")
    layout = "mono" if x.shape[0] == 1 else "stereo"
    with av.open(str(path), mode="w", format="flac") as out:
        stream = out.add_stream("flac", rate=int(sample_rate), layout=layout)
        for start in range(0, x.shape[1], chunk):
            part = np.ascontiguousarray(np.clip(x[:, start:start + chunk], -1.0, 1.0).T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(part, format="flt", layout=layout)
            frame.sample_rate = int(sample_rate)
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def read_video(path) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream (PyAV): (uint8 RGB ``[T, H, W, 3]``, average fps).

    Raises FileNotFoundError (no such file), IndexError (no video stream), ValueError (no frames) and PyAV's
    ``av.error.FFmpegError`` for data FFmpeg cannot decode.
    """
    import av

    with av.open(str(path)) as c:
        v = _video_stream(c)
        frames = np.stack([upright_rgb(f) for f in c.decode(v)])
        return frames, float(v.average_rate)


def _video_stream(container):
    """The first video stream of an open PyAV container; IndexError saying so when it has none."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise IndexError(f"the file has no video stream (it holds {', '.join(kinds)} only): load a file with "
                         "a picture track")
    return container.streams.video[0]


def _rotation_quarters(frame) -> int:
    """Quarter turns counter-clockwise (0..3) that show ``frame`` (a PyAV VideoFrame) as players do: the display
    matrix of phone videos (``rotate`` metadata, ``ffmpeg -display_rotation``), which FFmpeg attaches to every
    decoded frame; 0 when it has none or PyAV cannot read it."""
    try:
        deg = float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0
    return int(round(deg / 90.0)) % 4


def upright_rgb(frame) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of a PyAV VideoFrame, turned upright by its display rotation (see
    :func:`_rotation_quarters`): a phone clip recorded upright comes out upright, as every player shows it."""
    rgb = frame.to_ndarray(format="rgb24")
    k = _rotation_quarters(frame)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _source(path):
    """What ``av.open`` reads: a path as str, or a binary file object rewound to its start (re-readable)."""
    if hasattr(path, "read"):
        path.seek(0)
        return path
    return str(path)


def video_info(path) -> tuple[int, int, float, int]:
    """(width, height, fps, frames) of the first video stream of ``path``, a file path or a seekable binary file
    object (PyAV; fps = the stream's average rate, 25.0 if the container does not say; frames = the container's
    frame count, else its duration × fps: an estimate, e.g. for a progress bar, read without seeking, which FLV
    does not allow; width and height as displayed: swapped for a clip with a 90° display rotation, see
    :func:`upright_rgb`). Raises as :func:`read_video`."""
    import av

    with av.open(_source(path)) as c:
        v = _video_stream(c)
        fps = float(v.average_rate or 25)
        frames = int(v.frames or 0)
        if frames <= 0:
            seconds = float(v.duration * v.time_base) if v.duration and v.time_base else (c.duration or 0) / 1e6
            frames = max(1, int(round(seconds * fps)))
        w, h = int(v.codec_context.width), int(v.codec_context.height)
        first = next(c.decode(v), None)  # the display rotation is known from a decoded frame only
        if first is not None and _rotation_quarters(first) % 2:
            w, h = h, w
        return w, h, fps, frames


def iter_video(path) -> Iterator[tuple[np.ndarray, float]]:
    """Decode the first video stream frame by frame: yields (uint8 RGB ``[H, W, 3]`` upright as displayed, see
    :func:`upright_rgb`; presentation time in seconds from the first frame). Memory stays at one frame; no
    seeking (FLV and pipes work). Raises as :func:`read_video` (FFmpegError mid-stream for corrupt data)."""
    import av

    with av.open(_source(path)) as c:
        v = _video_stream(c)
        t0 = None
        for i, f in enumerate(c.decode(v)):
            t = float(f.time) if f.time is not None else i / float(v.average_rate or 25)
            t0 = t if t0 is None else t0
            yield upright_rgb(f), t - t0


def constant_rate_index(times: Sequence[float], fps: float) -> np.ndarray:
    """Map a (possibly variable-frame-rate) video onto a constant ``fps`` timeline: int64 ``[N]``, the decoded
    frame whose time is nearest to ``k / fps`` seconds (ties: the earlier), for ``N = round(duration * fps)``
    output frames, where the duration runs to the last frame's time plus one frame. Nearest (not "latest
    before") so containers that round timestamps to milliseconds (FLV) neither drop nor repeat frames. For a
    constant-rate stream at ``fps`` this is ``0 .. T-1``. Raises ValueError for no frames or ``fps`` <= 0."""
    t = np.asarray(times, np.float64)
    if t.size == 0 or fps <= 0:
        raise ValueError(f"need frames and fps > 0 (got {t.size} frames, fps {fps})")
    t = np.maximum.accumulate(t - t[0])
    grid = np.arange(max(1, int(round((t[-1] + 1.0 / fps) * fps)))) / fps
    j = np.clip(np.searchsorted(t, grid), 1, max(1, t.size - 1))
    pick = np.where((grid - t[j - 1] <= t[np.minimum(j, t.size - 1)] - grid), j - 1, j)
    return np.clip(pick, 0, t.size - 1).astype(np.int64)


#: Most bytes :func:`frames_at` holds decoded frames in (ping-pong): 512 MiB, ~80 frames of 1080x1920.
FRAMES_AT_BUFFER_BYTES = 512 * 1024 ** 2


def frames_at(path, indices: Sequence[int], buffer: bool | None = None,
              max_buffer_bytes: int = FRAMES_AT_BUFFER_BYTES) -> Iterator[np.ndarray]:
    """Yield the decoded frames ``indices[0], indices[1], ...`` (decode-order numbers) of a video's first
    stream, uint8 RGB ``[H, W, 3]``, decoding as little as possible within a memory bound.

    * Ascending runs (repeats included) are streamed, and a jump back re-opens the file and decodes forward
      again (one pass per loop of a looped video): one frame in memory.
    * With ``buffer`` (default: when some jump goes back to a frame other than 0, as ping-pong does) the
      needed frames are decoded once and held as uint8 (H x W x 3 bytes each) — when they fit in
      ``max_buffer_bytes`` (default :data:`FRAMES_AT_BUFFER_BYTES`).
    * When they do not (long or HD clips played backward), a window of the ``max_buffer_bytes / frame bytes``
      most recently decoded frames is kept instead: a backward run is served from the window, and a frame
      below it re-opens the file and decodes forward to it, refilling the window with the frames just before
      — memory stays at the window for any clip length, at the price of decoding a backward run of n frames
      about ``n^2 / (2 window)`` times instead of once.

    The frames are the same in every mode. Raises IndexError for an index beyond the stream's last frame;
    decoding errors as :func:`iter_video`.
    """
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return
    back = np.flatnonzero(np.diff(idx) < 0) + 1
    if buffer is None:
        buffer = bool((idx[back] != 0).any())
    if buffer:
        needed = set(idx.tolist())
        w, h = video_info(path)[:2]
        if len(needed) * w * h * 3 > max_buffer_bytes:
            yield from _frames_windowed(path, idx, max(2, int(max_buffer_bytes // max(1, w * h * 3))))
            return
        held, count = {}, 0
        for i, (frame, _) in enumerate(iter_video(path)):
            count = i + 1
            if i in needed:
                held[i] = frame
            if count > idx.max():
                break
        if count <= idx.max():
            raise IndexError(f"frame {int(idx.max())} requested but the video has only {count} frames")
        for i in idx.tolist():
            yield held[i]
        return
    yield from _frames_windowed(path, idx, 1)  # streamed: only the frame last decoded


def _frames_windowed(path, idx: np.ndarray, window: int) -> Iterator[np.ndarray]:
    """:func:`frames_at` holding at most ``window`` decoded frames: the most recently decoded ones (``window``
    1 is the streamed mode: a jump back re-opens the file)."""
    from collections import OrderedDict

    recent: OrderedDict = OrderedDict()   # decode index -> frame, oldest first
    frames, pos = None, -1
    try:
        for i in idx.tolist():
            if i not in recent:
                if frames is None or i < pos:  # below the window: decode again from the start
                    if frames is not None:
                        frames.close()
                    frames, pos = iter_video(path), -1
                    recent.clear()
                while pos < i:
                    try:
                        frame = next(frames)[0]
                    except StopIteration:
                        raise IndexError(f"frame {i} requested but the video has only {pos + 1} frames") from None
                    pos += 1
                    if pos > i - window:
                        recent[pos] = frame
                        if len(recent) > window:
                            recent.popitem(last=False)
            yield recent[i]
    finally:
        if frames is not None:
            frames.close()


def read_image(path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]`` (OpenCV). Raises FileNotFoundError if unreadable."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class PatchedFrame:
    """One video frame stored as an unchanging background plus the one rectangle that differs from it.

    Attributes:
        background: uint8 RGB ``[H, W, 3]``, shared by many frames and never modified (keep passing the same
            array object: :func:`write_mp4` converts it to YUV once per object).
        patch: uint8 RGB ``[h, w, 3]`` (``h`` or ``w`` may be 0: the frame is the background), placed with its
            top-left corner at column ``x``, row ``y``; it must lie inside the background.

    It behaves as the composited frame where an array is needed (``shape``, ``dtype``, ``np.asarray(frame)``
    builds the full ``[H, W, 3]`` frame), so consumers that want arrays still get them; :func:`write_mp4`
    instead converts only the patch to YUV per frame (for a 970x2204 photo, a face crop of ~330x380 px instead
    of 2.1 million pixels, and no full-size RGB frame is ever made).
    Raises ValueError (on creation) for a patch outside the background or wrong dtypes/shapes.
    """

    __slots__ = ("background", "patch", "x", "y")

    def __init__(self, background: np.ndarray, patch: np.ndarray, x: int, y: int):
        if background.dtype != np.uint8 or background.ndim != 3 or background.shape[2] != 3:
            raise ValueError(f"PatchedFrame background must be uint8 [H, W, 3], got {background.dtype} "
                             f"{background.shape}")
        if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3:
            raise ValueError(f"PatchedFrame patch must be uint8 [h, w, 3], got {patch.dtype} {patch.shape}")
        x, y = int(x), int(y)
        H, W = background.shape[:2]
        h, w = patch.shape[:2]
        if h and w and (x < 0 or y < 0 or x + w > W or y + h > H):
            raise ValueError(f"PatchedFrame patch {w}x{h} at ({x}, {y}) does not lie inside the {W}x{H} background")
        self.background, self.patch, self.x, self.y = background, patch, x, y

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.background.shape

    @property
    def dtype(self):
        return self.background.dtype

    def __array__(self, dtype=None, copy=None):
        out = self.background.copy()
        h, w = self.patch.shape[:2]
        out[self.y:self.y + h, self.x:self.x + w] = self.patch
        return out if dtype is None else out.astype(dtype)


class _I420Compositor:
    """YUV 4:2:0 (I420, BT.601 limited range as OpenCV converts) frames made of a background and one patch.

    The background is converted once per background object; each frame converts only the patch, widened to
    even coordinates so that every 2x2 chroma block is converted whole (the result equals converting the
    composited frame). Holds one frame buffer, reused: :meth:`frame` returns it (copy before the next call).
    """

    def __init__(self):
        self._bg = None        # the background object the buffers belong to
        self._bg_yuv = None    # uint8 [H * 3 / 2, W] its I420 conversion
        self._buf = None       # uint8 [H * 3 / 2, W] the frame being made
        self._dirty = None     # (y0, y1, x0, x1) of the patch last written into _buf

    @staticmethod
    def _planes(flat: np.ndarray, h: int, w: int):
        n = h * w
        return (flat[:n].reshape(h, w), flat[n:n + n // 4].reshape(h // 2, w // 2),
                flat[n + n // 4:n + n // 2].reshape(h // 2, w // 2))

    def frame(self, f: PatchedFrame) -> np.ndarray:
        import cv2

        H, W = f.background.shape[:2]
        if self._bg is not f.background:
            self._bg = f.background
            self._bg_yuv = cv2.cvtColor(np.ascontiguousarray(f.background), cv2.COLOR_RGB2YUV_I420)
            self._buf = self._bg_yuv.copy()
            self._dirty = None
        dst = self._planes(self._buf.reshape(-1), H, W)
        src = self._planes(self._bg_yuv.reshape(-1), H, W)
        if self._dirty is not None:  # back to the background where the previous patch was
            y0, y1, x0, x1 = self._dirty
            dst[0][y0:y1, x0:x1] = src[0][y0:y1, x0:x1]
            for k in (1, 2):
                dst[k][y0 // 2:y1 // 2, x0 // 2:x1 // 2] = src[k][y0 // 2:y1 // 2, x0 // 2:x1 // 2]
            self._dirty = None
        h, w = f.patch.shape[:2]
        if h and w:
            y0, x0 = f.y - f.y % 2, f.x - f.x % 2
            y1, x1 = min(H, f.y + h + (f.y + h) % 2), min(W, f.x + w + (f.x + w) % 2)
            region = f.background[y0:y1, x0:x1].copy()
            region[f.y - y0:f.y - y0 + h, f.x - x0:f.x - x0 + w] = f.patch
            yuv = cv2.cvtColor(region, cv2.COLOR_RGB2YUV_I420).reshape(-1)
            part = self._planes(yuv, y1 - y0, x1 - x0)
            dst[0][y0:y1, x0:x1] = part[0]
            for k in (1, 2):
                dst[k][y0 // 2:y1 // 2, x0 // 2:x1 // 2] = part[k]
            self._dirty = (y0, y1, x0, x1)
        return self._buf


def frame_rate_fraction(fps: float) -> Fraction:
    """``fps`` (frames per second) as the exact rational the encoder uses: rounded to 1/1000 fps (25 → 25,
    29.97 → 2997/100)."""
    return Fraction(round(fps * 1000), 1000)


#: x264 parameters of :func:`write_mp4`: macroblock-tree rate control off (deterministic output, see there)
X264_PARAMS = "mbtree=0"


def write_mp4(path, frames: Iterable[np.ndarray], fps: float, width: int, height: int,
              audio: np.ndarray | None = None, sample_rate: int | None = None, crf: int | None = None,
              metadata: dict[str, str] | None = None, preset: str | None = None) -> int:
    """Encode uint8 RGB frames ``[H, W, 3]`` (an iterable, consumed lazily) to H.264 + AAC mp4 with PyAV.

    Frames may also be :class:`PatchedFrame` (a shared background + the rectangle that changed): with even
    ``width`` and ``height`` they are composited in YUV 4:2:0 (the background converted once, the patch per
    frame, OpenCV's BT.601 limited-range conversion); with odd sizes they are composited in RGB first.

    Args:
        path: output file path (or a writable binary file object).
        fps: frames per second. width/height: pixels (odd sizes are padded by one pixel for yuv420p).
        audio: optional float32 ``[C, N]`` (C = 1 or 2) in [-1, 1] at ``sample_rate`` Hz, trimmed to the video;
            NaN/Inf samples are written as silence.
        crf: x264 constant rate factor (lower = better quality); default 19, or 17 for :class:`PatchedFrame`
            streams (with their faster preset, the same file size as medium at 19).
        preset: x264 preset (``ultrafast`` … ``medium`` … ``veryslow``): encoding effort; default ``medium``, or
            ``veryfast`` when the first frame is a :class:`PatchedFrame` (a still photo whose face crop moves: a
            talking photo). Measured on talking-photo frames (2 cores): medium crf 19 takes 43 ms a frame at
            970x2204 and 6 ms at 512x512, veryfast crf 17 24 ms and 3 ms, for about the same file size and a
            PSNR 0.45 dB (970x2204) to 0.6 dB (512x512) lower.

    x264's macroblock-tree rate control is off (:data:`X264_PARAMS`) so that the same frames always give the
    same file: with it, PyAV 18's libx264 encoded the same frames differently from encode to encode in one
    process (the first encode differed from the later ones; with or without threads; not with ``asm=0``),
    which broke "same seed, same frames"; 24 encodes with it off were bit-identical. Measured on 2 cores (120
    frames of a GRID clip): 8.1 ms a frame at 512x512 instead of 6.7 and 52 ms at 1080x1920 instead of 47;
    at the same crf the file is about 1.5x larger (480 kB instead of 315 kB at 512x512) with the same PSNR
    (40.9 dB).
    Returns the number of frames written. Raises ValueError for frames of the wrong shape.
    """
    import itertools

    import av

    rate = frame_rate_fraction(fps)
    ew, eh = width + (width % 2), height + (height % 2)
    n = 0
    frames = iter(frames)
    first = next(frames, None)
    still = isinstance(first, PatchedFrame)   # a talking photo: encoder defaults tuned for it
    preset = preset or ("veryfast" if still else "medium")
    crf = (17 if still else 19) if crf is None else crf
    frames = itertools.chain(() if first is None else (first,), frames)
    with av.open(path, mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as out:
        for k, v in (metadata or {}).items():
            out.metadata[k] = v
        vs = out.add_stream("h264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = ew, eh, "yuv420p"
        vs.options = {"crf": str(int(crf)), "preset": str(preset), "x264-params": X264_PARAMS}
        as_ = None
        if audio is not None:
            audio = np.asarray(audio, np.float32)
            if audio.ndim == 1:
                audio = audio[None]
            audio = audio[:2]
            as_ = out.add_stream("aac", rate=int(sample_rate))
            as_.layout = "mono" if audio.shape[0] == 1 else "stereo"
        compositor = _I420Compositor()
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame {n}: expected uint8 {(height, width, 3)}, got {frame.dtype} {frame.shape}")
            if isinstance(frame, PatchedFrame):
                if (ew, eh) == (width, height):
                    out.mux(vs.encode(av.VideoFrame.from_ndarray(compositor.frame(frame), format="yuv420p")))
                    n += 1
                    continue
                frame = np.asarray(frame)
            if (ew, eh) != (width, height):
                frame = np.pad(frame, ((0, eh - height), (0, ew - width), (0, 0)), mode="edge")
            out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
            n += 1
        out.mux(vs.encode(None))
        if as_ is not None:
            keep = int(np.ceil(n / float(rate) * sample_rate))
            # NaN/Inf samples (a damaged float WAV) are silence, as in ptalk_models.audio.prepare_audio: FFmpeg's
            # AAC encoder refuses them ("avcodec_send_frame() returned 22") and the whole save would fail
            pcm = np.clip(np.nan_to_num(audio[:, :keep], nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
            chunk = 1024 * 64
            for start in range(0, pcm.shape[1], chunk):
                part = np.ascontiguousarray(pcm[:, start:start + chunk].T.reshape(1, -1))
                af = av.AudioFrame.from_ndarray(part, format="flt", layout=as_.layout.name)
                af.sample_rate = int(sample_rate)
                af.pts = start
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))
    return n
