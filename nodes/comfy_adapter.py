"""The one place where PortraitTalk touches ComfyUI internals.

Conversions between ComfyUI's types and the engine's numpy types, model-folder registration with
``folder_paths``, progress reporting / interruption through ``comfy.utils`` and ``comfy.model_management``,
and the node-error convention. Node classes in this package stay thin and import only this module and
``comfy_api.latest``.
"""
from __future__ import annotations

import copy
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
    """A bad node input: the message names the node, the input and the fix.

    ComfyUI shows an error as ``<module>.<class>: <message>``; the module is set to the pack's name so the UI
    reads ``PortraitTalk.NodeInputError``, not the module name ComfyUI derives from the pack's path."""

    __module__ = "PortraitTalk"


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
        """Encode to H.264 + AAC mp4 (:func:`ptalk_models.media.write_mp4`), one frame in memory at a time.

        The signature is ``VideoInput.save_to``'s in ComfyUI 0.33 (``bit_depth``, ``crf``, ``color_space`` are
        passed by its Save Video; 0.3.75 passes only the first four): ``format`` auto/mp4, ``codec`` auto/h264,
        ``bit_depth`` None/8, ``crf`` None (write_mp4's default: 17 with preset veryfast for face-patch streams,
        else 19) or 0..51, ``color_space`` None/auto/sRGB (the frames are 8-bit sRGB). Raises ValueError naming
        the Save Video setting to change for anything else.
        """
        import json

        from ..ptalk_models.media import write_mp4

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
        write_mp4(path, self._progress_frames(), self._fps, self._w, self._h, wav, sr, metadata=meta, **extra)

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
        from ..ptalk_models.media import frame_rate_fraction

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

    def __init__(self, renderer, sequence, even_size, audio=None):
        """``renderer``: a built :class:`ptalk_models.render.WarpRenderer` (so bad references fail in the
        render node, not later inside Save Video); ``sequence``: the FaceLandmarks to render at its fps;
        ``audio``: (float32 ``[C, N]``, Hz) or None."""
        from ..ptalk_models.render import even_dims

        self._renderer, self._sequence, self._even_size = renderer, sequence, even_size
        self._audio = audio
        self._h, self._w = even_dims(renderer.height, renderer.width) if even_size else (renderer.height,
                                                                                           renderer.width)
        self._fps, self._count = sequence.fps, len(sequence)

    def _trim(self, first, last):
        self._sequence = self._sequence.frames(first, last)

    def _frames(self):
        from ..ptalk_models.render import iter_render

        return iter_render(self._renderer, self._sequence, self._even_size, patches=True)


class StreamedDubVideo(_StreamedVideo):
    """Dub Video's output: each frame decoded from the source VIDEO again and dubbed (CPU preview render) on
    demand, muxed with the new speech. Memory stays at one frame except with ping-pong, which holds the
    source frames it revisits, at most 512 MiB of them, then a window decoded again
    (:func:`ptalk_models.media.frames_at`)."""

    _node = "Dub Video"

    def __init__(self, source, frame_index, source_landmarks, landmarks, size_wh, fps, audio, render_kwargs):
        """``source``: the VIDEO's stream source (path or BytesIO); ``frame_index``: int ``[N]`` decode-order
        source frame per output frame; ``source_landmarks`` / ``landmarks``: FaceLandmarks ``[N]`` (aligned
        source, dubbed); ``size_wh``: frame size in pixels; ``audio``: (float32 ``[C, S]``, Hz);
        ``render_kwargs``: for :func:`ptalk_models.dub_render.iter_dub`."""
        self._source, self._index = source, np.asarray(frame_index, np.int64)
        self._src_lm, self._lm, self._kwargs = source_landmarks, landmarks, dict(render_kwargs)
        (self._w, self._h), self._fps, self._audio = size_wh, float(fps), audio
        self._count = len(self._index)

    def _trim(self, first, last):
        self._index = self._index[first:last]
        self._src_lm, self._lm = self._src_lm.frames(first, last), self._lm.frames(first, last)

    def _frames(self):
        from ..ptalk_models.dub_render import iter_dub
        from ..ptalk_models.media import frames_at

        return iter_dub(frames_at(self._source, self._index), self._src_lm, self._lm, **self._kwargs)


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


# ----------------------------------------------------------------------------------------------------------
# IdentityNet (issue 4): weights folders, attn2 replace patches on a MODEL clone, per-conditioning face tokens
# ----------------------------------------------------------------------------------------------------------
#: ComfyUI socket type carrying a :class:`ptalk_models.identitynet.IdentityNet`.
IdentityNetType = io.Custom("PTALK_IDENTITYNET")

#: Key of the face tokens in a CONDITIONING entry's dict (float ``[1, N, T]``, set by Text Encode) and of the
#: per-step identity state in ``transformer_options`` (set by the sampling wrapper below).
IDENTITY_KEY = "ptalk_identity"
IDENTITYNET_FOLDERS = ("portraittalk", "ipadapter")
_WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth")


def register_identitynet_folders() -> None:
    """Register ``models/portraittalk`` and ``models/ipadapter`` (``.safetensors``/``.bin``/``.pt``/``.pth``) with
    ``folder_paths``, keeping entries other packs (IPAdapter_plus) or extra_model_paths.yaml made."""
    import folder_paths

    for name in IDENTITYNET_FOLDERS:
        _register_folder(name, ".safetensors")
        paths, exts = folder_paths.folder_names_and_paths[name]
        if not set(_WEIGHT_EXTENSIONS) <= set(exts):  # a new set: another pack's may be shared with other folders
            folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(_WEIGHT_EXTENSIONS))


def identitynet_options() -> list[str]:
    """Combo options: ``portraittalk/<file>`` and ``ipadapter/<file>`` for every weights file in those folders."""
    import folder_paths

    register_identitynet_folders()
    return [f"{folder}/{f}" for folder in IDENTITYNET_FOLDERS for f in folder_paths.get_filename_list(folder)]


def resolve_identitynet(choice: str) -> str:
    """Full path of a :func:`identitynet_options` entry; FileNotFoundError naming the folders when missing."""
    import folder_paths

    register_identitynet_folders()
    folder, _, name = choice.partition("/")
    if folder in IDENTITYNET_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
    else:  # a bare file name (older workflows, IPAdapter-style): look in both folders
        path = next((p for p in (folder_paths.get_full_path(f, choice) for f in IDENTITYNET_FOLDERS) if p), None)
    if path is None:
        raise FileNotFoundError(f"{choice!r} was not found; put IdentityNet / IP-Adapter-FaceID weights in "
                                f"ComfyUI/models/portraittalk or ComfyUI/models/ipadapter")
    return path


def cross_attention_layers(model) -> list[tuple[tuple, int, int]]:
    """The UNet cross-attention layers of a MODEL in IP-Adapter order (input blocks, output blocks, middle):
    ``[(("input", block_id, transformer_index), width W, context width T), …]`` — the keys ComfyUI's attn2
    replace patches use."""
    dm = model.get_model_object("diffusion_model")
    out = []

    def scan(name, block_id, block):
        for m in block:
            for t, tb in enumerate(getattr(m, "transformer_blocks", ())):
                attn2 = getattr(tb, "attn2", None)
                if attn2 is not None:
                    out.append(((name, block_id, t), attn2.to_k.out_features, attn2.to_k.in_features))

    for i, blk in enumerate(getattr(dm, "input_blocks", ())):
        scan("input", i, blk)
    for i, blk in enumerate(getattr(dm, "output_blocks", ())):
        scan("output", i, blk)
    if getattr(dm, "middle_block", None) is not None:
        scan("middle", 0, dm.middle_block)
    return out


def module_patcher(module):
    """A ModelPatcher for an extra torch module (IdentityNet, AnimateNet), made once per module and kept on it,
    so ``comfy.model_management`` loads it to the sampling device with the UNet and offloads it after."""
    patcher = module.__dict__.get("_ptalk_patcher")
    if patcher is None:
        import comfy.model_management as mm
        import comfy.model_patcher

        patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        module.__dict__["_ptalk_patcher"] = patcher  # a plain attribute (not a submodule); freed with the module
    return patcher


def load_module(module) -> None:
    """Load an extra module (IdentityNet, AnimateNet) fully onto ComfyUI's compute device through
    ``comfy.model_management`` before using it outside a sampler (e.g. to make tokens)."""
    import comfy.model_management as mm

    mm.load_models_gpu([module_patcher(module)], force_full_load=True)


class _IdentityRuntime:
    """What the attn2 patches of one IdentityNet Apply share: the net, strength, the active range of sampling
    progress and the fallback face tokens for positive conditionings that carry none.

    Per sampling run, the OUTER_SAMPLE wrapper puts ``{"by_uuid": {uuid: tokens}, "positive": {uuids},
    "model_sampling": …}`` into ``transformer_options[IDENTITY_KEY]``; direct UNet calls (the trainer) put
    ``{"rows": tokens [B, N, T]}`` there instead. ``ModelPatcher.clone`` deep-copies ``model_options``; the
    runtime is shared by clones, never copied (the net stays the one ``comfy.model_management`` manages).
    """

    def __init__(self, net, strength: float, start_percent: float, end_percent: float, default_tokens):
        self.net, self.strength = net, float(strength)
        self.percent_range = (float(start_percent), float(end_percent))
        self.default_tokens = default_tokens
        self._memo = None  # (uuids list, sigmas tensor, batch, model_sampling, result) of the last lookup
        self._sigma_range = (None, None)  # (model_sampling, (sigma_start, sigma_end))

    def __deepcopy__(self, memo):
        return self

    def _active(self, sigmas, model_sampling) -> bool:
        if sigmas is None or model_sampling is None or not torch.is_tensor(sigmas) or not sigmas.numel():
            return True
        if self._sigma_range[0] is not model_sampling:  # thresholds of the model sampling used now
            self._sigma_range = (model_sampling, tuple(float(model_sampling.percent_to_sigma(p))
                                                       for p in self.percent_range))
        hi, lo = self._sigma_range[1]
        return lo <= float(sigmas.detach().flatten()[0]) <= hi

    def _check(self, tok: torch.Tensor, per: int) -> torch.Tensor:
        tok = tok.reshape(-1, tok.shape[-2], tok.shape[-1])
        if tok.shape[-1] != self.net.config.token_dim or tok.shape[0] not in (1, per):
            raise ValueError(f"[PortraitTalk · IdentityNet] face tokens of shape {tuple(tok.shape)} do not fit "
                             f"{self.net.source} (width {self.net.config.token_dim}) on a batch of {per}: make the "
                             "conditioning with Text Encode and the same IdentityNet")
        return tok.expand(per, -1, -1)

    def rows_and_tokens(self, batch: int, opts: dict):
        """(row index ``[R]`` long or None for all rows, face tokens ``[R, N, T]``) for this forward pass of a
        ``batch``-row UNet call, or None when no row has an identity, strength is 0 or the step is outside
        [start, end]. Positive chunks without tokens get the fallback; other chunks get none."""
        if self.strength == 0.0:
            return None
        state = opts.get(IDENTITY_KEY) or {}
        if "rows" in state:  # direct UNet calls (training): one token set per batch row, always active
            return None, state["rows"]
        uuids, cond_or_uncond, sigmas = opts.get("uuids"), opts.get("cond_or_uncond"), opts.get("sigmas")
        ms = state.get("model_sampling")
        m = self._memo  # the 16 layers of one UNet call share uuids/sigmas objects: compute once per call
        if m is not None and m[0] is uuids and m[1] is sigmas and m[2] == batch and m[3] is ms:
            return m[4]
        result = None
        if cond_or_uncond and self._active(sigmas, ms):
            by_uuid, positive = state.get("by_uuid", {}), state.get("positive")
            per = batch // len(cond_or_uncond)
            rows, toks = [], []
            for j, kind in enumerate(cond_or_uncond):
                uid = uuids[j] if uuids else None
                tok = by_uuid.get(uid)
                is_positive = (uid in positive) if positive is not None else kind == 0
                if tok is None and is_positive:  # positive without its own identity → Apply's face embed
                    tok = self.default_tokens
                if tok is None:  # negative / no identity: zero face tokens contribute exactly nothing
                    continue
                rows.extend(range(j * per, (j + 1) * per))
                toks.append(self._check(tok, per))
            if rows:
                result = (torch.tensor(rows, dtype=torch.long), torch.cat(toks))
        self._memo = (uuids, sigmas, batch, ms, result)
        return result


class _IdentityAttn2Patch:
    """attn2 replace patch of one cross-attention layer. ComfyUI hands it the layer's projected ``q`` ``[B, Lq,
    H·d]``, ``k``, ``v`` ``[B, Lt, H·d]`` (UNet dtype and device); it returns the decoupled cross-attention
    (paper §III-A) ``Attn(q, k, v) + strength · Attn(q, K_face, V_face)`` — face K/V computed in the net's dtype,
    cast to q's. The text term is ComfyUI's own attention (bit-identical at strength 0) or, when the MODEL already
    had an attn2 replace patch at this layer (applied before IdentityNet), that patch's output."""

    def __init__(self, runtime: _IdentityRuntime, layer: int, inner=None):
        self.runtime, self.layer, self.inner = runtime, layer, inner

    def __deepcopy__(self, memo):
        import copy

        return _IdentityAttn2Patch(self.runtime, self.layer, copy.deepcopy(self.inner, memo))

    def add(self, *args, **kwargs):
        """IPAdapter_plus adds to the patch already at a key; IdentityNet cannot host its callbacks."""
        raise RuntimeError("[PortraitTalk · IdentityNet Apply] an IPAdapter (or another attn2 patch) was applied "
                           "after IdentityNet Apply on this MODEL: apply it before IdentityNet Apply instead")

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention_module

        from ..ptalk_models.identitynet import add_face_attention

        def attention(q_, k_, v_, heads):
            return attention_module.optimized_attention(q_, k_, v_, heads,
                                                        attn_precision=extra_options.get("attn_precision"),
                                                        transformer_options=extra_options)

        heads = extra_options["n_heads"]
        out = self.inner(q, k, v, extra_options) if self.inner is not None else attention(q, k, v, heads)
        found = self.runtime.rows_and_tokens(q.shape[0], extra_options)
        if found is None:
            return out
        rows, tokens = found
        kv = self.runtime.net.layer(self.layer)
        w_k, w_v = kv.to_k_ip.weight, kv.to_v_ip.weight
        t = tokens.to(device=w_k.device, dtype=w_k.dtype)
        k_face = torch.nn.functional.linear(t, w_k).to(q.device)
        v_face = torch.nn.functional.linear(t, w_v).to(q.device)
        return add_face_attention(out, q, k_face, v_face, heads, self.runtime.strength, attention,
                                  None if rows is None else rows.to(q.device, non_blocking=True))


def _identity_outer_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: before sampling, reads the guider's conditionings — which uuids are positive, and
    the face tokens each carries (``IDENTITY_KEY``, from Text Encode) — into ``transformer_options`` of this
    run (the guider's model_options are a per-run copy), for the attn2 patches."""
    guider = executor.class_obj
    by_uuid, positive = {}, set()
    for kind, group in (getattr(guider, "conds", None) or {}).items():
        for c in group or ():
            uid = c.get("uuid")
            if kind == "positive":
                positive.add(uid)
            if c.get(IDENTITY_KEY) is not None:
                by_uuid[uid] = c[IDENTITY_KEY]
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    transformer_options[IDENTITY_KEY] = {"by_uuid": by_uuid, "positive": positive,
                                         "model_sampling": guider.model_patcher.get_model_object("model_sampling")}
    return executor(*args, **kwargs)


def apply_identitynet(model, net, strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                      default_tokens: torch.Tensor | None = None, node: str = "IdentityNet Apply"):
    """A clone of the ComfyUI MODEL ``model`` with IdentityNet installed; ``model`` itself is untouched.

    Every cross-attention layer gets an attn2 replace patch (decoupled cross-attention, §III-A; an attn2 patch
    already there, e.g. IPAdapter applied before, is kept and computes the text term); an OUTER_SAMPLE wrapper
    hands each CONDITIONING's face tokens (``IDENTITY_KEY``, from Text Encode) to the patches by uuid, so every
    conditioning keeps its own identity: one without tokens gets none (zero face tokens — unlike IP-Adapter's
    zero-*embedding* negative), except that positive ones fall back to ``default_tokens`` (``[1, N, T]``)
    when given. ``strength`` scales the face term; it acts for sampling progress in [``start_percent``,
    ``end_percent``] (converted to sigmas with the model sampling in use at sample time). The net's weights
    are an additional model of the clone (loaded and offloaded by ``comfy.model_management``).

    Raises :class:`NodeInputError` when the net does not fit the model (layer count/widths, context width) or
    the percent range is empty.
    """
    import comfy.patcher_extension

    from ..ptalk_models.identitynet import IdentityNetFormatError

    if end_percent < start_percent:
        raise node_error(node, "end_percent", f"end_percent {end_percent} is before start_percent {start_percent}: "
                                              "the identity would never act")
    layers = cross_attention_layers(model)
    if not layers:
        raise node_error(node, "model", "this MODEL has no UNet cross-attention layers; IdentityNet needs an "
                                        "SD1.5 checkpoint")
    try:
        net.check_layers([w for _, w, _ in layers], layers[0][2])
    except IdentityNetFormatError as e:
        raise node_error(node, "identitynet", f"{e}. Use an SD1.5 checkpoint with an SD1.5 IdentityNet") from None
    runtime = _IdentityRuntime(net, strength, start_percent, end_percent, default_tokens)
    patched = model.clone()
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for i, (key, _, _) in enumerate(layers):
        inner = existing.get(key, existing.get(key[:2]))
        if isinstance(inner, _IdentityAttn2Patch):  # a second Apply replaces the first IdentityNet
            inner = inner.inner
        patched.set_model_attn2_replace(_IdentityAttn2Patch(runtime, i, inner), *key)
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, IDENTITY_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, IDENTITY_KEY,
                                 _identity_outer_wrapper)
    patched.set_additional_models(IDENTITY_KEY, [module_patcher(net)])
    return patched


def with_row_tokens(transformer_options: dict, tokens: torch.Tensor) -> dict:
    """``transformer_options`` (a copy) for a direct ``diffusion_model(x, t, context, transformer_options=…)``
    call of a patched MODEL in which batch row b uses face tokens ``tokens[b]`` (``[B, N, T]``; gradients flow
    to the net — the trainer's path)."""
    out = dict(transformer_options)
    out[IDENTITY_KEY] = {"rows": tokens}
    return out


def attach_face_tokens(conditioning: list, tokens: torch.Tensor) -> list:
    """A copy of a CONDITIONING list whose every entry carries ``tokens`` (``[1, N, T]``) under IDENTITY_KEY."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        extra[IDENTITY_KEY] = tokens
        out.append([cond, extra])
    return out


def sample_latent(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str, denoise: float) -> dict:
    """ComfyUI's own sampling (``comfy.sample.sample``, as core KSampler does): seeded noise, live preview and
    progress bar, interruptible between steps. Returns the LATENT dict with the new ``samples``."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                              denoise=denoise, noise_mask=latent.get("noise_mask"), callback=callback,
                              disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    result = dict(latent)
    result["samples"] = out
    return result


def sampling_inputs(seed_tooltip: str, steps: int, steps_tooltip: str, cfg: float, cfg_tooltip: str) -> list:
    """The KSampler-style widgets shared by the samplers: seed (with control after generate), steps, cfg,
    sampler_name, scheduler — with ComfyUI's own sampler and scheduler lists."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip=seed_tooltip),
        io.Int.Input("steps", default=steps, min=1, max=10000, tooltip=steps_tooltip),
        io.Float.Input("cfg", default=cfg, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_tooltip),
        io.Combo.Input("sampler_name", options=sampler_names(), default="euler", tooltip="ComfyUI sampler."),
        io.Combo.Input("scheduler", options=scheduler_names(), default="normal", tooltip="ComfyUI scheduler."),
    ]


def sampler_names() -> list[str]:
    """ComfyUI's sampler names (the KSampler combo)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    """ComfyUI's scheduler names (the KSampler combo)."""
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


# ----------------------------------------------------------------------------------------------------------
# AnimateNet (issue 5): a comfy.controlnet.ControlBase for the motion→frame branch, and the frame-window loop
# of the Temporal Sampler
# ----------------------------------------------------------------------------------------------------------
#: ComfyUI socket type carrying a :class:`ptalk_models.animatenet.AnimateNet`.
AnimateNetType = io.Custom("PTALK_ANIMATENET")


class TemporalWindow:
    """The conditions of one window of W consecutive frames, shared by the AnimateNet control and the sampler.

    ``tokens``: precomputed structure / identity tokens ``[W, G², D]`` (they do not change across steps).
    ``anchor``: latent ``[1, 4, h, w]`` (model space, i.e. after ``process_latent_in``) of the frame before the
    window — the reference for frame 0. ``estimates``: the current x0 estimates ``[W, 4, h, w]`` of the window's
    frames (model space), updated after every sampling step. Frame j's temporal condition is the latent of frame
    j − 1: the anchor for j = 0, else frame j − 1's estimate from the previous step (step-lagged; exact when
    W = 1), so frame t depends on frame t − 1 while W frames are denoised as one batch.
    """

    def __init__(self, tokens: dict, anchor: torch.Tensor, estimates: torch.Tensor):
        self.tokens, self.anchor, self.estimates = tokens, anchor, estimates

    def temporal_latents(self) -> torch.Tensor:
        est = self.estimates
        return torch.cat([self.anchor.to(est), est[:-1]], dim=0)


_CONTROL_CLASS = None


def animatenet_control_class():
    """The ``comfy.controlnet.ControlBase`` subclass running AnimateNet (made on first use, so importing this
    module does not import ``comfy.controlnet``)."""
    global _CONTROL_CLASS
    if _CONTROL_CLASS is not None:
        return _CONTROL_CLASS
    import comfy.controlnet

    class AnimateNetControl(comfy.controlnet.ControlBase):
        """AnimateNet as a ComfyUI control: chains with other ControlNets (``previous_controlnet``), honours
        strength and start/end percent (``ControlBase``), its weights are a ModelPatcher returned by
        ``get_models`` so ``comfy.model_management`` loads and offloads them. Residuals follow ComfyUI's control
        format (``{"output": [per input block], "middle": [1]}``) and are added to the UNet's skip connections
        and middle block (paper §III-B: zero-convolution fusion)."""

        def __init__(self, net, patcher, window: TemporalWindow):
            super().__init__()
            self.net, self.patcher, self.window = net, patcher, window
            self.model_sampling_current = None
            self.compute_dtype = torch.float32

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            prev = None
            if self.previous_controlnet is not None:
                prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
            if self.strength == 0.0 or self.timestep_range is not None and (
                    t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
                return prev
            device = x_noisy.device
            if any(p.device != device for p in self.net.parameters()):  # e.g. split by a low-VRAM partial load
                load_module(self.net)
            w = self.window
            frames = next(iter(w.tokens.values())).shape[0]
            if x_noisy.shape[0] % frames:
                raise ValueError(f"[PortraitTalk · AnimateNet] a batch of {x_noisy.shape[0]} latents cannot be split "
                                 f"into chunks of the window's {frames} frames")
            ms = self.model_sampling_current
            timestep = ms.timestep(t).float()
            x_in = ms.calculate_input(t, x_noisy)
            tokens = {k: v.to(device) for k, v in w.tokens.items()}
            # run in the UNet's compute precision on GPUs (autocast; the loaded weights themselves stay fp32).
            # x_noisy is the sampler's (fp32) latent, so the precision comes from the model (pre_run).
            low = self.compute_dtype if device.type != "cpu" and self.compute_dtype in (torch.float16,
                                                                                         torch.bfloat16) else None
            with torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None):
                if self.net.has_temporal:  # previous frames' latents → temporal tokens (a small conv stack)
                    tokens["temporal"] = self.net.temporal_encoder(w.temporal_latents().to(device).float())
                reps = x_noisy.shape[0] // frames  # ComfyUI batches whole chunks: cond frames, uncond frames
                tokens = {k: v.repeat(reps, 1, 1) for k, v in tokens.items()}
                out = self.net(x_in.float(), timestep, tokens=tokens)
            return self.control_merge(out, prev, output_dtype=None)  # the UNet adds them in its own dtype

        def copy(self):
            c = AnimateNetControl(self.net, self.patcher, self.window)
            self.copy_to(c)
            return c

        def get_models(self):
            return super().get_models() + [self.patcher]

        def pre_run(self, model, percent_to_timestep_function):
            super().pre_run(model, percent_to_timestep_function)
            self.model_sampling_current = model.model_sampling
            self.compute_dtype = getattr(model, "manual_cast_dtype", None) or model.get_dtype()

        def cleanup(self):
            self.model_sampling_current = None
            super().cleanup()

    _CONTROL_CLASS = AnimateNetControl
    return _CONTROL_CLASS


def with_control(positive: list, negative: list, make_control) -> tuple[list, list]:
    """Copies of the positive and negative CONDITIONING lists whose entries carry the control ``make_control()``
    chained after the control they already had — one new control per distinct previous one, shared by positive
    and negative (as core Apply ControlNet does, so cond and uncond still run as one batch)."""
    made = {}

    def attach(conditioning):
        out = []
        for cond, extra in conditioning:
            extra = dict(extra)
            prev = extra.get("control")
            if id(prev) not in made:
                c = make_control()
                if prev is not None:
                    c.set_previous_controlnet(prev)
                made[id(prev)] = c
            extra["control"] = made[id(prev)]
            extra["control_apply_to_uncond"] = False
            out.append([cond, extra])
        return out

    return attach(positive), attach(negative)


def _decode(vae, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """VAE-decode ``[T, 4, h, w]`` latents in chunks → IMAGE ``[T, H, W, 3]`` float in [0, 1]."""
    return torch.cat([vae.decode(latents[i:i + chunk])[..., :3] for i in range(0, latents.shape[0], chunk)])


def temporal_sample(model, positive, negative, vae, frames: int, size_hw: tuple[int, int], reference: torch.Tensor,
                    conditions, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                    denoise: float, window: int, animatenet=None, controlnets=(), strength: float = 1.0,
                    percent_range: tuple[float, float] = (0.0, 1.0), init_frames: torch.Tensor | None = None,
                    noise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frame-window generation of a talking-face video with ComfyUI's own sampler (paper §III-B).

    ``frames`` T frames of ``size_hw`` (H, W; multiples of 8), ``window`` frames denoised together per
    ``comfy.sample.sample`` call (VRAM is bounded by the window, not the video length). ``conditions``:
    an object with ``structure(start, stop)`` → float ``[W, 3, H, W]`` landmark drawings and
    ``identity(start, stop, previous_frame)`` → float ``[W, 3, H, W]`` contour guides, where
    ``previous_frame`` is the last generated IMAGE ``[1, H, W, 3]`` before the window (None for the first, and
    always None unless ``conditions.needs_previous_frame`` — then the last frame of each window is VAE-decoded).
    ``reference``: IMAGE ``[1, H, W, 3]`` (its latent is frame 0's temporal condition). ``animatenet``: an
    AnimateNet (three-way attention control) or None; ``controlnets``: ``[(CONTROL_NET, "structure" |
    "identity", strength)]`` — the training-free mode (core ControlNets fed with the same images). Frame t's
    initial noise comes from ``seed + t``; the result still depends on ``window`` (step-lagged temporal
    condition and one contour per window inside a window; ancestral samplers' per-step noise). ``init_frames``: IMAGE
    ``[T, H, W, 3]`` encoded as the starting latents (with ``denoise`` < 1). ``noise_mask``: float ``[T, 1, h, w]``
    in [0, 1] at pixel (H, W) or latent (H/8, W/8) size — ComfyUI resizes it bilinearly to the latent
    (``comfy.sampler_helpers.prepare_mask``) — with ``init_frames``: latents are denoised where it is 1, stay the
    encoded init frames where it is 0 and are blended between (core Set Latent Noise Mask / inpainting semantics).
    One progress bar over frames × steps with a live preview; ComfyUI's interrupt is checked after every
    sampling step. Returns IMAGE ``[T, H, W, 3]``.
    """
    if noise_mask is not None and init_frames is None:
        raise ValueError("temporal_sample: noise_mask needs init_frames (the latents kept outside the mask)")
    with torch.inference_mode():  # as under ComfyUI's executor; direct callers must not build autograd graphs
        return _temporal_sample(model, positive, negative, vae, frames, size_hw, reference, conditions, seed, steps,
                                cfg, sampler_name, scheduler, denoise, window, animatenet, controlnets, strength,
                                percent_range, init_frames, noise_mask)


def _temporal_sample(model, positive, negative, vae, frames, size_hw, reference, conditions, seed, steps, cfg,
                     sampler_name, scheduler, denoise, window, animatenet, controlnets, strength, percent_range,
                     init_frames, noise_mask):
    import comfy.model_management as mm
    import comfy.sample
    import comfy.utils
    import latent_preview

    h, w = size_hw
    lat_h, lat_w = h // 8, w // 8
    process_in = model.model.process_latent_in
    anchor = process_in(vae.encode(reference[..., :3]).float())
    patcher = module_patcher(animatenet) if animatenet is not None else None
    bar = comfy.utils.ProgressBar(frames * steps)  # one bar: frames × steps, advanced after every step
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    latents, previous_frame = [], None
    for start in range(0, frames, window):
        stop = min(frames, start + window)
        n = stop - start
        structure = conditions.structure(start, stop)
        identity = conditions.identity(start, stop, previous_frame)
        if init_frames is not None:
            latent_image = vae.encode(init_frames[start:stop, :, :, :3]).float()
            estimates = process_in(latent_image)
        else:
            latent_image = torch.zeros(n, 4, lat_h, lat_w)
            estimates = anchor.repeat(n, 1, 1, 1)
        pos, neg = positive, negative
        state = None
        if animatenet is not None:
            load_module(animatenet)
            p = next(animatenet.parameters())
            with torch.no_grad():
                tokens = animatenet.encode_conditions(structure=structure.to(p.device, p.dtype),
                                                      identity=identity.to(p.device, p.dtype))
            state = TemporalWindow(tokens, anchor, estimates)
            cls = animatenet_control_class()

            def make(state=state):
                c = cls(animatenet, patcher, state)
                c.strength, c.timestep_percent_range = float(strength), tuple(percent_range)
                return c

            pos, neg = with_control(pos, neg, make)
        for cnet, kind, cn_strength in controlnets:
            hint = structure if kind == "structure" else identity

            def make_cn(cnet=cnet, hint=hint, cn_strength=cn_strength):
                return cnet.copy().set_cond_hint(hint, cn_strength, tuple(percent_range), vae=vae)

            pos, neg = with_control(pos, neg, make_cn)

        def callback(step, x0, x, total_steps, state=state, start=start, n=n):
            if state is not None:
                state.estimates = x0.detach()
            mm.throw_exception_if_processing_interrupted()
            image = previewer.decode_latent_to_preview_image("JPEG", x0[:1]) if previewer else None
            bar.update_absolute(start * steps + min(step + 1, steps) * n, frames * steps, image)

        noise = torch.cat([comfy.sample.prepare_noise(torch.zeros(1, 4, lat_h, lat_w), (seed + t) % 2 ** 64)
                           for t in range(start, stop)])
        samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, pos, neg, latent_image,
                                      denoise=denoise, callback=callback, disable_pbar=True,
                                      noise_mask=None if noise_mask is None else noise_mask[start:stop],
                                      seed=(seed + start) % 2 ** 64)
        latents.append(samples.float().cpu())
        anchor = process_in(samples[-1:].float())
        if conditions.needs_previous_frame:
            previous_frame = _decode(vae, samples[-1:])
        mm.throw_exception_if_processing_interrupted()
    return _decode(vae, torch.cat(latents))


def portraittalk_options() -> list[str]:
    """Combo options: the weights files in ``models/portraittalk``."""
    import folder_paths

    register_identitynet_folders()
    return folder_paths.get_filename_list("portraittalk")


def resolve_portraittalk(name: str) -> str:
    """Full path of a file in ``models/portraittalk``; FileNotFoundError naming the folder when missing."""
    import folder_paths

    register_identitynet_folders()
    path = folder_paths.get_full_path("portraittalk", name)
    if path is None:
        raise FileNotFoundError(f"{name!r} is not in ComfyUI/models/portraittalk")
    return path


def unet_config(model) -> dict:
    """The UNet config ComfyUI detected for a MODEL (``model_config.unet_config``: channels, depths, heads …)."""
    return dict(model.model.model_config.unet_config)
