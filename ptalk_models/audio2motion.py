"""Neural audio→motion (PortraitTalk arXiv 2412.07754, §III-B): a VAE with dilated-convolution encoder and decoder
over speech features, predicting the lower face's motion per video frame.

Model (:class:`Audio2Motion`, pure torch):

* audio context: a strided conv from the feature rate (log-mel 100 Hz; wav2vec2 50 Hz) down to the motion rate
  (25 Hz), then residual dilated convs (kernel 3, dilations 1-2-4-8 twice: ±30 frames = ±1.2 s of context for
  coarticulation), non-causal;
* VAE encoder q(z | motion, audio): dilated convs over [motion ; audio context] → mean and log-variance of a
  ``latent``-dim z, pooled to one z per ``latent_stride`` frames (0.32 s);
* decoder p(motion | z, audio): dilated convs over [audio context ; z upsampled] → ``n_pc`` coefficients of the
  motion's PCA basis (fitted on the training data, stored in the file) → offsets of :data:`indices` (the lower
  face) in inter-ocular units (:mod:`ptalk_models.mouth_motion`).

At generation z is drawn from the prior N(0, I) with a seeded generator (the "VAE's sample"). Inference runs in
chunks (:func:`predict_offsets`) whose context covers the receptive field, so any audio length needs bounded memory
and the result equals a single pass. Per-channel normalisation buffers (feature mean/std, PCA mean/basis/scale)
and the lower-face landmark indices are part of the state dict, so one safetensors file holds the whole model.

File format: safetensors with metadata ``{"format": FORMAT, "config": <Audio2MotionConfig JSON>}``, read by
:func:`load_audio2motion`.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .weights import check_state_dict, config_from_metadata, load_fp32, read_safetensors, save_module

FORMAT = "portraittalk.audio2motion/1"
SILENCE_LOG_MEL = float(np.log(1e-6))  # log-mel of digital silence (audio_features.LOG_EPS)
EMBEDDED_WEIGHTS = Path(__file__).with_name("weights") / "audio2motion_logmel.safetensors"


class Audio2MotionFormatError(ValueError):
    """A weights file that is not a usable audio→motion model (missing, truncated, other format, wrong shapes)."""


@dataclass
class Audio2MotionConfig:
    feature_kind: str = "log-mel"       # "log-mel" or "audio-encoder" (ptalk_models.audio_features)
    feature_dim: int = 80
    feature_rate: float = 100.0         # Hz
    motion_rate: float = 25.0           # Hz
    n_points: int = 1                   # lower-face landmarks predicted (len(indices))
    n_pc: int = 24
    channels: int = 128
    latent: int = 8
    latent_stride: int = 8              # motion frames per z
    dilations: list = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4, 8])
    encoder_dilations: list = field(default_factory=lambda: [1, 2, 4, 8])

    @property
    def stride(self) -> int:
        """Feature frames per motion frame (4 for log-mel at 100 Hz → 25 Hz)."""
        return max(1, int(round(self.feature_rate / self.motion_rate)))

    @property
    def context(self) -> int:
        """Motion frames of context each side that cover the receptive field (a multiple of latent_stride)."""
        rf = 2 * sum(self.dilations) + 2
        return int(np.ceil(rf / self.latent_stride)) * self.latent_stride


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each time step (no statistics across time, so chunked = whole-sequence)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):  # [B, C, T]
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class DilatedBlock(nn.Module):
    """``x + conv1x1(GELU(dilated_conv3(norm(x))))``."""

    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.norm = ChannelNorm(c)
        self.conv = nn.Conv1d(c, c, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(c, c, 1)
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.proj(self.act(self.conv(self.norm(x))))


def _stack(c: int, dilations) -> nn.Sequential:
    return nn.Sequential(*[DilatedBlock(c, int(d)) for d in dilations])


class Audio2Motion(nn.Module):
    """The §III-B VAE (module docstring). Shapes: features ``[B, F, feature_dim]`` (F ≈ T · stride), motion
    coefficients ``[B, T, n_pc]`` (standardised: divided by ``pc_scale``)."""

    def __init__(self, config: Audio2MotionConfig):
        super().__init__()
        self.config = c = config
        C, s = c.channels, c.stride
        self.stem = nn.Conv1d(c.feature_dim, C, 2 * s, stride=s, padding=s // 2) if s > 1 else nn.Conv1d(c.feature_dim, C, 3, padding=1)
        self.audio = _stack(C, c.dilations)
        self.enc_in = nn.Conv1d(C + c.n_pc, C, 1)
        self.enc = _stack(C, c.encoder_dilations)
        self.enc_out = nn.Conv1d(C, 2 * c.latent, 1)
        self.dec_in = nn.Conv1d(C + c.latent, C, 1)
        self.dec = _stack(C, c.dilations)
        self.dec_out = nn.Conv1d(C, c.n_pc, 1)
        D = 3 * c.n_points
        self.register_buffer("feat_mean", torch.zeros(c.feature_dim))
        self.register_buffer("feat_std", torch.ones(c.feature_dim))
        self.register_buffer("pc_mean", torch.zeros(D))
        self.register_buffer("pc_basis", torch.zeros(c.n_pc, D))
        self.register_buffer("pc_scale", torch.ones(c.n_pc))
        self.register_buffer("indices", torch.zeros(c.n_points, dtype=torch.long))

    # -------------------------------------------------------------------------------------------- parts
    def audio_context(self, feats: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Raw features ``[B, F, dim]`` → audio context ``[B, C, n_frames]`` (zero-padded/cropped to n_frames)."""
        x = ((feats - self.feat_mean) / self.feat_std).transpose(1, 2)
        h = self.stem(x)
        if h.shape[-1] < n_frames:
            h = nn.functional.pad(h, (0, n_frames - h.shape[-1]))
        return self.audio(h[..., :n_frames])

    def encode(self, h: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | motion, audio): (mu, logvar) ``[B, latent, ceil(T / latent_stride)]``."""
        e = self.enc_out(self.enc(self.enc_in(torch.cat([h, motion.transpose(1, 2)], 1))))
        e = nn.functional.avg_pool1d(e, self.config.latent_stride, ceil_mode=True)
        mu, logvar = e.chunk(2, dim=1)
        return mu, logvar.clamp(-8.0, 4.0)

    def decode(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """p(motion | z, audio): ``[B, T, n_pc]`` standardised coefficients; ``z`` ``[B, latent, ≥ T/stride]``."""
        T = h.shape[-1]
        zu = z.repeat_interleave(self.config.latent_stride, dim=-1)[..., :T]
        return self.dec_out(self.dec(self.dec_in(torch.cat([h, zu], 1)))).transpose(1, 2)

    def forward(self, feats: torch.Tensor, motion: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction ``[B, T, n_pc]``, mu, logvar) with the reparameterised posterior."""
        h = self.audio_context(feats, motion.shape[1])
        mu, logvar = self.encode(h, motion)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return self.decode(h, mu + eps * torch.exp(0.5 * logvar)), mu, logvar

    def to_offsets(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Standardised coefficients ``[..., n_pc]`` → offsets ``[..., n_points, 3]`` (IOD units)."""
        flat = self.pc_mean + (coeffs * self.pc_scale) @ self.pc_basis
        return flat.reshape(*coeffs.shape[:-1], self.config.n_points, 3)

    def to_coeffs(self, offsets: torch.Tensor) -> torch.Tensor:
        """Offsets ``[..., n_points, 3]`` → standardised PCA coefficients ``[..., n_pc]``."""
        flat = offsets.reshape(*offsets.shape[:-2], -1) - self.pc_mean
        return (flat @ self.pc_basis.T) / self.pc_scale


def n_motion_frames(duration_s: float, rate: float) -> int:
    """Motion frames covering ``duration_s`` at ``rate`` Hz (at least 1)."""
    return max(1, int(np.ceil(duration_s * rate)))


@torch.no_grad()
def predict_offsets(model: Audio2Motion, feats: np.ndarray, n_frames: int, seed: int, chunk: int = 1500
                    ) -> np.ndarray:
    """Lower-face offsets float32 ``[n_frames, n_points, 3]`` (IOD units) at ``model.config.motion_rate``.

    Args:
        feats: float ``[F, feature_dim]`` raw features at ``feature_rate`` (frame j centred on j / rate).
        n_frames: motion frames wanted (frame t centred on (t + 0.5) / motion_rate).
        seed: seeds z ~ N(0, I) (one per ``latent_stride`` frames for the whole sequence, so the result does
            not depend on ``chunk``).
        chunk: motion frames per pass (memory bound: a few MB per 1000 frames); each pass adds
            ``config.context`` frames of context each side, so the output equals a single pass.
    """
    c = model.config
    s = c.stride
    g = torch.Generator().manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    n_lat = int(np.ceil(n_frames / c.latent_stride))
    z_all = torch.randn((1, c.latent, n_lat), generator=g)
    chunk = max(c.latent_stride, (int(chunk) // c.latent_stride) * c.latent_stride)
    P = c.context
    f = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    out = np.empty((n_frames, c.n_points, 3), np.float32)
    for t0 in range(0, n_frames, chunk):
        t1 = min(n_frames, t0 + chunk)
        a, b = max(0, t0 - P), min(n_frames, t1 + P)
        # features of motion frames [a, b): frame t uses feature frames around t*s (stem padding handles edges)
        fa = a * s
        seg = f[fa:b * s][None]
        if seg.shape[1] < 2 * s:  # under ~80 ms of audio: too short for the stem's kernel; pad with silence
            pad = torch.full((1, 2 * s - seg.shape[1], c.feature_dim), SILENCE_LOG_MEL) \
                if c.feature_kind == "log-mel" else model.feat_mean.expand(1, 2 * s - seg.shape[1], -1)
            seg = torch.cat([seg, pad], dim=1)
        h = model.audio_context(seg, b - a)
        z = z_all[..., a // c.latent_stride:]
        y = model.decode(h, z)[0, t0 - a:t1 - a]
        out[t0:t1] = model.to_offsets(y).numpy()
    return out


# ------------------------------------------------------------------------------------------------- files
def save_audio2motion(model: Audio2Motion, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``model`` as fp32 safetensors with our format metadata (+ ``metadata``)."""
    save_module(model, path, FORMAT, metadata)


def load_audio2motion(path: str | os.PathLike = EMBEDDED_WEIGHTS) -> Audio2Motion:
    """An :class:`Audio2Motion` (fp32, CPU, eval mode, no grad) from a file written by :func:`save_audio2motion`.

    Raises:
        Audio2MotionFormatError: missing, truncated or corrupt file; not our format; unreadable config; missing
            keys, unexpected keys or wrong shapes (a file of another architecture).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    sd, meta = read_safetensors(path, Audio2MotionFormatError, None)  # the caller adds the fix
    if meta.get("format") != FORMAT:
        raise Audio2MotionFormatError(f"{name} is not an audio→motion model of this pack (metadata format "
                                      f"{meta.get('format')!r}, expected {FORMAT!r})")
    cfg = config_from_metadata(meta, Audio2MotionConfig, name, Audio2MotionFormatError, "audio→motion")
    try:
        model = Audio2Motion(cfg)
    except (TypeError, ValueError, RuntimeError) as e:
        raise Audio2MotionFormatError(f"{name}: its config cannot build the model ({e})") from None
    check_state_dict(model.state_dict(), sd, name, Audio2MotionFormatError, "does not match its config",
                     " for its config", allow_unexpected=False)
    idx = sd["indices"].long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= 478 or len(torch.unique(idx)) != len(idx)):
        raise Audio2MotionFormatError(f"{name}: its landmark indices are not distinct MediaPipe indices 0..477")
    if not all(torch.isfinite(v).all() for k, v in sd.items() if v.is_floating_point()):
        raise Audio2MotionFormatError(f"{name}: it holds NaN/Inf weights")
    load_fp32(model, sd)
    model.indices = idx
    model.source = name
    model.metadata = dict(meta)
    return model.eval().requires_grad_(False)


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def audio2motion_model(path: str | os.PathLike | None = None) -> Audio2Motion:
    """The model of ``path`` (None: the embedded :data:`EMBEDDED_WEIGHTS`), loaded once per (path, mtime, size)
    and shared (thread-safe; inference never changes it). Raises as :func:`load_audio2motion`, with a
    missing embedded file reported as a broken installation."""
    p = os.fspath(path or EMBEDDED_WEIGHTS)
    try:
        st = os.stat(p)
        key = (os.path.abspath(p), st.st_mtime_ns, st.st_size)
    except OSError:
        key = (os.path.abspath(p), None, None)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            if path is None and not os.path.isfile(p):
                raise Audio2MotionFormatError(f"the embedded audio→motion model {p} is missing: re-install "
                                              "ComfyUI-PortraitTalk (git checkout restores it)")
            model = load_audio2motion(p)
            _CACHE.clear()
            _CACHE[key] = model
        return model


def model_features(model: Audio2Motion, mono16k: np.ndarray, audio_features=None) -> np.ndarray:
    """The input features ``[F, feature_dim]`` that ``model`` was trained on: log-mel of ``mono16k`` (float ``[N]``
    at 16 kHz) for a log-mel model, else the ``audio_features`` given (ComfyUI ``AUDIO_ENCODER_OUTPUT``).

    Raises:
        InputError: ``argument="audio_features"`` when the model needs encoder features and none (or features of
            another width) were given.
    """
    from .audio_features import encoder_features, log_compress, mel_power

    c = model.config
    if c.feature_kind == "log-mel":
        return log_compress(mel_power(mono16k))
    if audio_features is None:
        raise InputError("audio_features", f"this audio→motion model was trained on audio-encoder features "
                                           f"({c.feature_dim} channels at {c.feature_rate:g} Hz)",
                         "connect an Audio Encoder Encode node (same encoder as in training) to audio_features")
    try:
        feats, rate = encoder_features(audio_features)
    except ValueError as e:
        raise InputError("audio_features", str(e)) from None
    n_samples = len(mono16k)
    expected = n_samples * c.feature_rate / 16000.0
    if feats.shape[1] != c.feature_dim:
        raise InputError("audio_features", f"the features have {feats.shape[1]} channels at {rate:.1f} Hz; the "
                                           f"model was trained on {c.feature_dim} channels at {c.feature_rate:g} Hz",
                         "use the audio encoder the model was trained with")
    if abs(len(feats) - expected) > max(2.0, 0.05 * expected):
        raise InputError("audio_features", f"the features have {len(feats)} frames, but {len(mono16k) / 16000:.2f} s "
                                           f"of audio at {c.feature_rate:g} Hz is ~{expected:.0f}: they were encoded "
                                           "from other audio (or another encoder)",
                         "encode the same AUDIO that goes into this node")
    return feats
