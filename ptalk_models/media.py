"""Media I/O through libraries: audio/video decoding and a streaming mp4 writer (PyAV), images (OpenCV).

``write_mp4`` encodes frames as they are produced, so memory stays at one frame: used for long
talking-photo jobs, where a ComfyUI IMAGE batch (float32 [T, H, W, 3]) would not fit in memory (10 minutes
at 25 fps and 512x512 is 47 GB as float32).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Iterator, Sequence

import numpy as np


def read_audio(path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any file PyAV/FFmpeg reads (wav, flac, mp3, mp4, flv …).

    Returns float32 ``[channels, samples]`` in [-1, 1] at the file's own rate (Hz), no resampling.
    Raises FileNotFoundError (no such file), IndexError (no audio stream), ValueError (a stream without
    samples) and PyAV's ``av.error.FFmpegError`` for data FFmpeg cannot decode.
    """
    import av

    with av.open(str(path)) as c:
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


def read_video(path) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream (PyAV): (uint8 RGB ``[T, H, W, 3]``, average fps).

    Raises FileNotFoundError (no such file), IndexError (no video stream), ValueError (no frames) and PyAV's
    ``av.error.FFmpegError`` for data FFmpeg cannot decode.
    """
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(v)])
        return frames, float(v.average_rate)


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
    does not allow). Raises as :func:`read_video`."""
    import av

    with av.open(_source(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate or 25)
        frames = int(v.frames or 0)
        if frames <= 0:
            seconds = float(v.duration * v.time_base) if v.duration and v.time_base else (c.duration or 0) / 1e6
            frames = max(1, int(round(seconds * fps)))
        return int(v.codec_context.width), int(v.codec_context.height), fps, frames


def iter_video(path) -> Iterator[tuple[np.ndarray, float]]:
    """Decode the first video stream frame by frame: yields (uint8 RGB ``[H, W, 3]``, presentation time in
    seconds from the first frame). Memory stays at one frame; no seeking (FLV and pipes work). Raises as
    :func:`read_video` (FFmpegError mid-stream for corrupt data)."""
    import av

    with av.open(_source(path)) as c:
        v = c.streams.video[0]
        t0 = None
        for i, f in enumerate(c.decode(v)):
            t = float(f.time) if f.time is not None else i / float(v.average_rate or 25)
            t0 = t if t0 is None else t0
            yield f.to_ndarray(format="rgb24"), t - t0


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


def frames_at(path, indices: Sequence[int], buffer: bool | None = None) -> Iterator[np.ndarray]:
    """Yield the decoded frames ``indices[0], indices[1], ...`` (decode-order numbers) of a video's first
    stream, uint8 RGB ``[H, W, 3]``, decoding as little as possible: ascending runs (repeats included) are
    streamed, and a jump back re-opens the file and decodes forward again (one pass per loop of a looped
    video). With ``buffer`` (default: when some jump goes back to a frame other than 0, as ping-pong does)
    the needed frames are decoded once and held in memory as uint8 (H x W x 3 bytes each) instead.
    Raises IndexError for an index beyond the stream's last frame; decoding errors as :func:`iter_video`."""
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return
    back = np.flatnonzero(np.diff(idx) < 0) + 1
    if buffer is None:
        buffer = bool((idx[back] != 0).any())
    if buffer:
        needed, held, count = set(idx.tolist()), {}, 0
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
    for run in np.split(idx, back):
        frames = iter_video(path)
        pos, frame = -1, None
        for i in run.tolist():
            while pos < i:
                try:
                    frame = next(frames)[0]
                except StopIteration:
                    raise IndexError(f"frame {i} requested but the video has only {pos + 1} frames") from None
                pos += 1
            yield frame
        frames.close()


def read_image(path) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]`` (OpenCV). Raises FileNotFoundError if unreadable."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def frame_rate_fraction(fps: float) -> Fraction:
    """``fps`` (frames per second) as the exact rational the encoder uses: rounded to 1/1000 fps (25 → 25,
    29.97 → 2997/100)."""
    return Fraction(round(fps * 1000), 1000)


def write_mp4(path, frames: Iterable[np.ndarray], fps: float, width: int, height: int,
              audio: np.ndarray | None = None, sample_rate: int | None = None, crf: int = 19,
              metadata: dict[str, str] | None = None) -> int:
    """Encode uint8 RGB frames ``[H, W, 3]`` (an iterable, consumed lazily) to H.264 + AAC mp4 with PyAV.

    Args:
        path: output file path (or a writable binary file object).
        fps: frames per second. width/height: pixels (odd sizes are padded by one pixel for yuv420p).
        audio: optional float32 ``[C, N]`` (C = 1 or 2) in [-1, 1] at ``sample_rate`` Hz, trimmed to the video.
        crf: x264 constant rate factor (lower = better quality).
    Returns the number of frames written. Raises ValueError for frames of the wrong shape.
    """
    import av

    rate = frame_rate_fraction(fps)
    ew, eh = width + (width % 2), height + (height % 2)
    n = 0
    with av.open(path, mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as out:
        for k, v in (metadata or {}).items():
            out.metadata[k] = v
        vs = out.add_stream("h264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = ew, eh, "yuv420p"
        vs.options = {"crf": str(int(crf))}
        as_ = None
        if audio is not None:
            audio = np.asarray(audio, np.float32)
            if audio.ndim == 1:
                audio = audio[None]
            audio = audio[:2]
            as_ = out.add_stream("aac", rate=int(sample_rate))
            as_.layout = "mono" if audio.shape[0] == 1 else "stereo"
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"frame {n}: expected uint8 {(height, width, 3)}, got {frame.dtype} {frame.shape}")
            if (ew, eh) != (width, height):
                frame = np.pad(frame, ((0, eh - height), (0, ew - width), (0, 0)), mode="edge")
            out.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
            n += 1
        out.mux(vs.encode(None))
        if as_ is not None:
            keep = int(np.ceil(n / float(rate) * sample_rate))
            pcm = np.clip(audio[:, :keep], -1.0, 1.0)
            chunk = 1024 * 64
            for start in range(0, pcm.shape[1], chunk):
                part = np.ascontiguousarray(pcm[:, start:start + chunk].T.reshape(1, -1))
                af = av.AudioFrame.from_ndarray(part, format="flt", layout=as_.layout.name)
                af.sample_rate = int(sample_rate)
                af.pts = start
                out.mux(as_.encode(af))
            out.mux(as_.encode(None))
    return n
