"""ComfyUI VIDEO values whose frames are rendered on demand (Landmark Warp Render → Video, Dub Video): Save Video
encodes them frame by frame, so memory stays at about one frame for any length.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch

from .convert import numpy_to_image
from .progress import Progress


def _video_types():
    from comfy_api.latest import Input, Types

    return Input.Video, Types.VideoComponents, Types.VideoContainer, Types.VideoCodec


class _StreamedVideo(_video_types()[0]):
    """A ComfyUI VIDEO whose frames are made on demand by ``_frames()`` (uint8 RGB ``[H, W, 3]``, one per frame).

    ``save_to`` (what Save Video calls) makes and encodes frame by frame with
    :func:`ptalk_models.media.write_mp4` (H.264 + AAC mp4), so memory stays at one frame; ``get_components``
    (what other VIDEO consumers may call) makes the whole IMAGE batch. Subclasses set ``_node`` (for messages),
    ``_w``, ``_h``, ``_fps``, ``_count`` and ``_audio`` (float32 ``[C, N]``, Hz) or None.
    """

    _node = "PortraitTalk"

    def _frames(self):
        raise NotImplementedError

    def _progress_frames(self):
        progress = Progress(self._count)
        for i, frame in enumerate(self._frames()):
            yield frame
            progress(i + 1, self._count)

    def save_to(self, path, format="auto", codec="auto", metadata=None, bit_depth=None, crf=None,
                color_space=None):
        """Encode to H.264 + AAC mp4 (:func:`ptalk_models.media.write_mp4`), one frame in memory at a time,
        into a hidden ``.<name>.<pid>.partial`` next to ``path`` that is renamed to ``path`` once complete and
        removed otherwise (an interrupted or failed save leaves no partial file under the output name).

        The signature is ``VideoInput.save_to``'s in ComfyUI 0.33 (``bit_depth``, ``crf``, ``color_space`` are
        passed by its Save Video; 0.3.75 passes only the first four): ``format`` auto/mp4, ``codec`` auto/h264,
        ``bit_depth`` None/8, ``crf`` None (write_mp4's default: 17 with preset veryfast for face-patch streams,
        else 19) or 0..51, ``color_space`` None/auto/sRGB (the frames are 8-bit sRGB). Raises ValueError naming
        the Save Video setting to change for anything else.
        """
        import json

        from ...ptalk_models.media import write_mp4

        _, _, container, vcodec = _video_types()
        if format not in (container.AUTO, container.MP4) or codec not in (vcodec.AUTO, vcodec.H264):
            raise ValueError(f"{self._node} saves mp4/h264 only: set Save Video's format to auto or mp4 and its "
                             f"codec to auto or h264 (got {format}/{codec})")
        if bit_depth not in (None, 8) or color_space not in (None, "auto", "sRGB"):
            raise ValueError(f"{self._node} makes 8-bit sRGB frames: set Save Video's color space to auto or sRGB "
                             f"(got bit depth {bit_depth}, color space {color_space})")
        wav, sr = self._audio if self._audio is not None else (None, None)
        meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
        extra = {} if crf is None else {"crf": int(round(crf))}
        if not isinstance(path, (str, os.PathLike)):  # a file object: the caller owns it
            write_mp4(path, self._progress_frames(), self._fps, self._w, self._h, wav, sr, metadata=meta, **extra)
            return
        # Encode into a hidden sibling and rename it when complete: a Cancel (ComfyUI's interrupt, raised from
        # the frame loop) or an error mid-video leaves no truncated mp4 under the output name.
        final = os.fspath(path)
        head, tail = os.path.split(final)
        partial = os.path.join(head, f".{tail}.{os.getpid()}.partial")
        try:
            write_mp4(partial, self._progress_frames(), self._fps, self._w, self._h, wav, sr, metadata=meta,
                      **extra)
            os.replace(partial, final)
        finally:
            if os.path.lexists(partial):
                os.unlink(partial)

    def as_trimmed(self, start_time=0.0, duration=0.0, strict_duration=False):
        """``VideoInput.as_trimmed`` (core Trim Video): the frames from ``start_time`` (seconds; negative counts
        from the end) for ``duration`` seconds (0 or None: to the end), with the audio cut to match, as a new
        streamed video of the same class (nothing is rendered now).

        Frames are whole: ``round(start_time * fps)`` to ``round((start_time + duration) * fps)``, clipped to the
        video. Returns None when nothing is left, or when ``strict_duration`` and fewer frames than asked are
        left (Trim Video then reports the durations).
        """
        fps, n = self._fps, self._count
        start = float(start_time or 0.0)
        if start < 0:
            start = max(n / fps + start, 0.0)
        first = min(int(round(start * fps)), n)
        wanted = int(round(float(duration or 0.0) * fps)) if duration else n - first
        last = min(first + wanted, n)
        if last <= first or (strict_duration and last - first < wanted):
            return None
        trimmed = copy.copy(self)
        trimmed._count = last - first
        if self._audio is not None:
            wav, sr = self._audio
            trimmed._audio = (wav[:, int(round(first / fps * sr)):int(round(last / fps * sr))], sr)
        trimmed._trim(first, last)
        return trimmed

    def _trim(self, first: int, last: int) -> None:
        """Keep frames ``[first, last)`` of this (freshly copied) video; ``_count`` and ``_audio`` are set."""
        raise NotImplementedError

    def get_components(self):
        components = _video_types()[1]
        frames = numpy_to_image(np.stack(list(self._progress_frames())))
        audio = None
        if self._audio is not None:
            audio = {"waveform": torch.from_numpy(self._audio[0])[None], "sample_rate": self._audio[1]}
        return components(images=frames, audio=audio, frame_rate=self.get_frame_rate())

    def get_dimensions(self):
        return self._w, self._h

    def get_frame_count(self):
        return self._count

    def get_duration(self):
        return self._count / self._fps

    def get_frame_rate(self):
        from ...ptalk_models.media import frame_rate_fraction

        return frame_rate_fraction(self._fps)  # the rate save_to's write_mp4 encodes

    def get_container_format(self):
        return "mp4"


class StreamedTalkingVideo(_StreamedVideo):
    """Landmark Warp Render → Video's output: frames warp-rendered from one reference on demand.

    Each frame is made as a :class:`ptalk_models.media.PatchedFrame` (the unchanged photo + the rendered face
    crop, :meth:`ptalk_models.render.WarpRenderer.render_patch`): ``save_to``'s encoder composites it in YUV,
    so per frame only the face crop is rendered and colour-converted and no full-size RGB frame exists —
    memory stays at the photo plus one crop for any speech length, and a large photo costs about what a
    512x512 one does except in the H.264 encode itself. ``get_components`` still gets full uint8 frames
    (``np.asarray`` of each) and builds the whole IMAGE batch.
    """

    _node = "Landmark Warp Render → Video"

    def __init__(self, renderer, sequence, even_size, audio=None, mouth_bank=None):
        """``renderer``: a built :class:`ptalk_models.render.WarpRenderer` (so bad references fail in the
        render node, not later inside Save Video); ``sequence``: the FaceLandmarks to render at its fps;
        ``audio``: (float32 ``[C, N]``, Hz) or None; ``mouth_bank``: a
        :class:`ptalk_models.mouth_texture.MouthBank` of reference photos whose mouths are pasted into the
        frames (:func:`ptalk_models.mouth_texture.paste_mouths`), or None."""
        from ...ptalk_models.render import even_dims

        self._renderer, self._sequence, self._even_size = renderer, sequence, even_size
        self._bank = mouth_bank
        self._audio = audio
        self._h, self._w = even_dims(renderer.height, renderer.width) if even_size else (renderer.height,
                                                                                           renderer.width)
        self._fps, self._count = sequence.fps, len(sequence)

    def _trim(self, first, last):
        self._sequence = self._sequence.frames(first, last)

    def _frames(self):
        from ...ptalk_models.mouth_texture import paste_mouths
        from ...ptalk_models.render import iter_render

        r = self._renderer
        frames = iter_render(r, self._sequence, self._even_size, patches=True)
        return frames if self._bank is None else paste_mouths(frames, self._sequence, self._bank, (r.width, r.height))


class StreamedDubVideo(_StreamedVideo):
    """Dub Video's and Dub Dialogue's output: each frame decoded from the source VIDEO again and dubbed (CPU
    preview render) on demand, muxed with the new speech. Memory stays at one frame except with ping-pong, which
    holds the source frames it revisits, at most 512 MiB of them, then a window decoded again
    (:func:`ptalk_models.media.frames_at`)."""

    _node = "Dub Video"

    def __init__(self, source, frame_index, layers, size_wh, fps, audio, node=None):
        """``source``: the VIDEO's stream source (path or BytesIO); ``frame_index``: int ``[N]`` decode-order
        source frame per output frame; ``layers``: one per dubbed face, ``(source_landmarks, landmarks,
        render_kwargs)`` with FaceLandmarks ``[N]`` (aligned source, dubbed) and the keyword arguments of
        :func:`ptalk_models.dub_render.iter_dub` (an ``"person"`` array ``[N]`` among them is trimmed with the
        frames); each layer dubs the previous one's output; ``size_wh``: frame size in pixels; ``audio``:
        (float32 ``[C, S]``, Hz); ``node``: the node's name for messages."""
        self._source, self._index = source, np.asarray(frame_index, np.int64)
        self._layers = [(s, t, dict(k)) for s, t, k in layers]
        (self._w, self._h), self._fps, self._audio = size_wh, float(fps), audio
        self._count = len(self._index)
        if node:
            self._node = node

    def _trim(self, first, last):
        self._index = self._index[first:last]
        self._layers = [(s.frames(first, last), t.frames(first, last),
                         {**k, **({"person": k["person"][first:last]} if k.get("person") is not None else {})})
                        for s, t, k in self._layers]

    def _frames(self):
        from ...ptalk_models.dub_render import iter_dub
        from ...ptalk_models.media import frames_at

        from ...ptalk_models.threads import prefetch

        frames = prefetch(frames_at(self._source, self._index))  # decoded ahead in a background thread
        for src, tgt, kwargs in self._layers:
            frames = iter_dub(frames, src, tgt, **kwargs)
        return frames
