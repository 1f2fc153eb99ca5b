"""The one place where PortraitTalk touches ComfyUI internals.

Conversions between ComfyUI's types and the engine's numpy types, model-folder registration with
``folder_paths``, progress reporting / interruption through ``comfy.utils`` and ``comfy.model_management``,
and the node-error convention. Node classes in this package stay thin and import only this module and
``comfy_api.latest``.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from comfy_api.latest import io

from ..ptalk_models.images import as_rgb_uint8

log = logging.getLogger("PortraitTalk")

CATEGORY = "PortraitTalk"

#: ComfyUI socket type carrying a :class:`ptalk_models.landmarks.FaceLandmarks`.
Landmarks = io.Custom("PTALK_LANDMARKS")

MEDIAPIPE_FOLDER = "mediapipe"
AUTO_MODEL = "auto"


class NodeInputError(ValueError):
    """A bad node input: the message names the node, the input and the fix."""


def node_error(node: str, input_name: str, message: str) -> NodeInputError:
    """The error to raise for a bad input: ``[PortraitTalk · <node>] input '<input_name>': <message>``, where
    ``message`` says what is wrong and how to fix it (``raise node_error(...) from None``)."""
    return NodeInputError(f"[PortraitTalk · {node}] input '{input_name}': {message}")


def _register_folder(name: str, extension: str) -> None:
    """Register ``models/<name>`` with ``folder_paths`` (a new entry lists ``extension`` files), or add that path
    to an entry another pack or extra_model_paths.yaml made (its other paths and extensions are kept)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([path], {extension})
    else:
        folder_paths.add_model_folder_path(name, path)  # no-op when the path is listed already


def register_model_folders() -> None:
    """Register ``models/mediapipe`` (``*.task`` files) with ``folder_paths``; safe to call repeatedly."""
    import folder_paths

    _register_folder(MEDIAPIPE_FOLDER, ".task")
    folder_paths.folder_names_and_paths[MEDIAPIPE_FOLDER][1].add(".task")  # also in an entry made elsewhere


def mediapipe_model_options() -> list[str]:
    """Combo options for the landmarker model: ``auto`` then every ``*.task`` in ``models/mediapipe``."""
    import folder_paths

    register_model_folders()
    return [AUTO_MODEL] + folder_paths.get_filename_list(MEDIAPIPE_FOLDER)


def resolve_mediapipe_model(choice: str) -> str | None:
    """Path of the chosen ``.task`` file. ``auto``: ``models/mediapipe/face_landmarker.task`` if present,
    else None (= the embedded model of ``ptalk_models.face``)."""
    import folder_paths

    register_model_folders()
    name = "face_landmarker.task" if choice == AUTO_MODEL else choice
    path = folder_paths.get_full_path(MEDIAPIPE_FOLDER, name)
    if path is None and choice != AUTO_MODEL:
        raise FileNotFoundError(f"{choice} is not in ComfyUI/models/{MEDIAPIPE_FOLDER}")
    return path


def image_to_numpy(image: torch.Tensor, node: str, input_name: str) -> np.ndarray:
    """ComfyUI IMAGE (float ``[B, H, W, C]`` in [0, 1]) → uint8 RGB ``[B, H, W, 3]``.

    Grayscale and RGBA batches are converted (RGBA: alpha dropped). Raises :class:`NodeInputError`.
    """
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise node_error(node, input_name, f"expected an IMAGE batch [B, H, W, C], got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    arr = image.detach().cpu().float().numpy()
    if arr.ndim == 3:  # [B, H, W] grayscale batch
        arr = arr[..., None]
    try:
        return as_rgb_uint8(arr, input_name)
    except ValueError as e:
        raise node_error(node, input_name, str(e)) from None


def numpy_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → ComfyUI IMAGE float32 ``[B, H, W, 3]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)


def numpy_to_mask(masks: np.ndarray) -> torch.Tensor:
    """bool/uint8/float ``[B, H, W]`` (uint8 scaled by 255) → ComfyUI MASK float32 ``[B, H, W]`` in [0, 1]."""
    m = np.asarray(masks)
    m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(m))


def audio_to_numpy(audio: dict, node: str, input_name: str = "audio") -> tuple[np.ndarray, int]:
    """ComfyUI AUDIO ``{"waveform": float [B, C, N], "sample_rate": int}`` → (float32 ``[C, N]``, Hz).

    An integer waveform tensor (Get Video Components gives int16 for MPEG-1 audio) is scaled to [-1, 1] by its
    full scale ``2^(bits - 1)``. Uses the first item of a batch (logged). Raises :class:`NodeInputError` for
    malformed or empty audio.
    """
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise node_error(node, input_name, "expected an AUDIO input ({'waveform', 'sample_rate'}); connect a "
                         "Load Audio node")
    wav = audio["waveform"]
    if isinstance(wav, torch.Tensor):
        full = None if wav.is_floating_point() else float(2 ** (wav.element_size() * 8 - 1))  # integer PCM
        wav = wav.detach().cpu().float()
        wav = (wav if full is None else wav / full).numpy()
    else:
        wav = np.asarray(wav, np.float32)
    if wav.ndim == 3:
        if wav.shape[0] > 1:
            log.warning("%s: audio batch of %d, using the first item", node, wav.shape[0])
        wav = wav[0]
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[-1] == 0:
        raise node_error(node, input_name, f"the audio is empty or malformed (waveform shape {wav.shape})")
    sr = int(audio["sample_rate"])
    if sr <= 0:
        raise node_error(node, input_name, f"sample_rate must be positive, got {sr}")
    return wav, sr


class Progress:
    """Progress bar + interrupt check for long loops: ``cb = Progress(total); cb(done, total)``.

    Raising ComfyUI's ``InterruptProcessingException`` from inside the engine's loops is how the queue's
    Cancel button stops a running node.
    """

    def __init__(self, total: int):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(max(1, int(total)))

    def __call__(self, done: int, total: int) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)


def _video_types():
    from comfy_api.latest import Input, Types

    return Input.Video, Types.VideoComponents, Types.VideoContainer, Types.VideoCodec


class StreamedTalkingVideo(_video_types()[0]):
    """A ComfyUI VIDEO whose frames are warp-rendered on demand.

    ``save_to`` (what Save Video calls) renders and encodes frame by frame with
    :func:`ptalk_models.media.write_mp4`, so memory stays at one frame; ``get_components`` (what other VIDEO
    consumers may call) renders the whole IMAGE batch.
    """

    def __init__(self, renderer, sequence, even_size, audio=None):
        """``renderer``: a built :class:`ptalk_models.render.WarpRenderer` (so bad references fail in the
        render node, not later inside Save Video); ``sequence``: the FaceLandmarks to render at its fps."""
        from ..ptalk_models.render import even_dims

        self._renderer, self._sequence, self._even_size = renderer, sequence, even_size
        self._audio = audio  # (float32 [C, N], Hz) or None
        self._h, self._w = even_dims(renderer.height, renderer.width) if even_size else (renderer.height,
                                                                                           renderer.width)
        self._fps = sequence.fps

    def _frames(self):
        from ..ptalk_models.render import iter_render

        total = len(self._sequence)
        progress = Progress(total)
        for i, frame in enumerate(iter_render(self._renderer, self._sequence, self._even_size)):
            yield frame
            progress(i + 1, total)

    def save_to(self, path, format="auto", codec="auto", metadata=None):
        import json

        from ..ptalk_models.media import write_mp4

        _, _, container, vcodec = _video_types()
        if format not in (container.AUTO, container.MP4) or codec not in (vcodec.AUTO, vcodec.H264):
            raise ValueError("Landmark Warp Render → Video saves mp4/h264 only: set Save Video's format and "
                             "codec to auto")
        wav, sr = self._audio if self._audio is not None else (None, None)
        meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
        write_mp4(path, self._frames(), self._fps, self._w, self._h, wav, sr, metadata=meta)

    def get_components(self):
        components = _video_types()[1]
        frames = numpy_to_image(np.stack(list(self._frames())))
        audio = None
        if self._audio is not None:
            audio = {"waveform": torch.from_numpy(self._audio[0])[None], "sample_rate": self._audio[1]}
        return components(images=frames, audio=audio, frame_rate=self.get_frame_rate())

    def get_dimensions(self):
        return self._w, self._h

    def get_frame_count(self):
        return len(self._sequence)

    def get_duration(self):
        return self.get_frame_count() / self._fps

    def get_frame_rate(self):
        from ..ptalk_models.media import frame_rate_fraction

        return frame_rate_fraction(self._fps)  # the rate save_to's write_mp4 encodes

    def get_container_format(self):
        return "mp4"


# ----------------------------------------------------------------------------------------------------------
# Face Embed (issue 3): the PTALK_FACE_EMBED socket type and the models/insightface folder
# ----------------------------------------------------------------------------------------------------------
#: ComfyUI socket type carrying a :class:`ptalk_models.identity.FaceEmbedding`.
FaceEmbed = io.Custom("PTALK_FACE_EMBED")

INSIGHTFACE_FOLDER = "insightface"


def register_insightface_folder() -> None:
    """Register ``models/insightface`` with ``folder_paths`` (the folder IPAdapter-FaceID / InstantID packs use;
    model packs live in ``models/insightface/models/<name>/*.onnx``); keeps other packs' registrations."""
    _register_folder(INSIGHTFACE_FOLDER, ".onnx")


def insightface_root(model_name: str) -> str:
    """The registered ``insightface`` folder holding ``models/<model_name>/`` (also found via
    extra_model_paths.yaml), else ComfyUI's default ``models/insightface`` (for the missing-model message)."""
    import folder_paths

    register_insightface_folder()
    roots = folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)
    for root in roots:
        if os.path.isdir(os.path.join(root, "models", model_name)):
            return root
    return roots[0] if roots else os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER)
