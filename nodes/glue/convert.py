"""Conversions between ComfyUI's IMAGE / MASK / AUDIO values (torch tensors, dicts) and the engine's numpy arrays;
malformed inputs raise :class:`NodeInputError` naming the node and input.
"""
from __future__ import annotations

import numpy as np
import torch

from ...ptalk_models.images import as_rgb_uint8
from .errors import log, node_error


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
