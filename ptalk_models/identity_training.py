"""IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1): the engine side, pure torch/numpy (no ComfyUI).

PortraitTalk fine-tunes IdentityNet -- the face-embedding projection and the per-layer face key/value
projections of the decoupled cross-attention (:mod:`ptalk_models.identitynet`) -- on face images whose random
regions are corrupted, with the frozen SD1.5 UNet, text encoder and VAE. The objective (§III-A, Eq. 1) is
the noise-prediction loss of latent diffusion::

    L_mask = E_{z, c, ε ~ N(0, I), t} ‖ ε − ε_θ(z_t, t, c) ‖²,   z_t = sqrt(ᾱ_t) · z + sqrt(1 − ᾱ_t) · ε

where ``z`` is the (scaled) VAE latent of the *corrupted* frame -- Gaussian noise is added to random
rectangles/ellipses of the image BEFORE VAE encoding (:func:`random_region_mask`, :func:`corrupt_regions`) --
``t`` a DDPM timestep drawn uniformly from the model's own schedule (ᾱ_t from ComfyUI's
``model_sampling.sigmas``: ᾱ = 1 / (1 + σ²)), and ``c`` the text tokens of the caption (frozen CLIP) plus the
face tokens of the frame's Face Embed embedding (trainable IdentityNet). Defaults follow §IV-B: AdamW,
learning rate 5e-6, batch 32 (gradient accumulation over micro-batches), bf16 autocast on CUDA.

This module holds IdentityNet's side of training, without ComfyUI: the masks and corruption, the dataset that
``scripts/prepare_identity_data.py`` writes, the optional UNet LoRA, the trainer (:class:`MaskedFineTuner`, which
receives the frozen VAE encoder and UNet as callables) and the checkpoint files; the diffusion forward process and
loss, the optimisation loop and the trainer state are :mod:`ptalk_models.training`'s (shared with AnimateNet).
``scripts/train_identitynet.py`` (:mod:`ptalk_harness.train_identitynet`) wires it to a ComfyUI SD1.5 checkpoint.

Dataset layout (``DATA_FORMAT``)::

    <root>/frames/*.png              face-centred square crops, uint8 RGB, all the same size
    <root>/embeddings.safetensors    "embeddings": float32 [N, D] (D = 128 dlib, 512 insightface);
                                     metadata {"format", "backend", "dim", "count", "size"}
    <root>/index.jsonl               one JSON object per frame: {"frame": "frames/x.png", "caption": str,
                                     "embedding": row, "source": relative source path, "frame_index": int}

Checkpoint files (written by :func:`save_checkpoint` into ``<out>/checkpoints/``):

* ``identitynet_step<NNNNNNN>.safetensors`` -- the net, :func:`ptalk_models.identitynet.save_identitynet`
  (loadable by the IdentityNet Loader node); metadata adds ``step``, ``seed``, ``args`` (JSON), ``trainer``.
* ``trainer_step<NNNNNNN>.safetensors`` -- what an exact resume needs besides the weights (the layout of
  :mod:`ptalk_models.training`): AdamW moments ``optimizer.<param>.exp_avg`` / ``.exp_avg_sq`` / ``.step``
  (float32), the trainer's random generator state ``rng.trainer`` and PyTorch's global CPU generator state
  ``rng.torch_cpu`` (uint8); metadata ``format`` (``TRAINER_FORMAT``), ``step``, ``seed``, ``param_names`` /
  ``param_groups`` / ``config`` (JSON), ``args``, ``identitynet`` (the net file's name).
* ``unet_lora_step<NNNNNNN>.safetensors`` -- only with the optional UNet LoRA (:class:`UNetLoRA`): a LoRA file
  that ComfyUI's LoraLoader reads.

Determinism: every random draw of training (masks, corruption noise, timesteps, diffusion noise) comes from
one CPU ``torch.Generator`` seeded with the run's seed, in a fixed order, and the order of the samples is a
per-epoch permutation that depends only on (seed, epoch); so a run stopped after N steps and resumed gives
bit-identical weights at 2N to a run of 2N steps straight (on the same device and thread count).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .training import (CHECKPOINTS_DIR, CheckpointError, DatasetError, DiffusionTrainer, EncodeFn, add_noise,
                       check_optim_config, embedding_backend, newest_checkpoint, noise_prediction_loss,
                       read_embeddings, read_jsonl, read_rgb, sample_timesteps)
from .weights import write_safetensors

DATA_FORMAT = "portraittalk-identity-data/1"
TRAINER_FORMAT = "portraittalk-identitynet-trainer/1"
DEFAULT_CAPTION = "a photo of a person"
#: Names of the files of a prepared dataset.
FRAMES_DIR, EMBEDDINGS_FILE, INDEX_FILE = "frames", "embeddings.safetensors", "index.jsonl"
#: Shapes :func:`random_region_mask` draws.
MASK_SHAPES = ("rect", "ellipse")


# ------------------------------------------------------------------------------------------- masks, noise
def random_region_mask(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                       area: tuple[float, float] = (0.05, 0.25), max_shapes: int = 3,
                       shapes: Sequence[str] = MASK_SHAPES, aspect: tuple[float, float] = (0.5, 2.0)
                       ) -> torch.Tensor:
    """Random-region masks for masked fine-tuning (paper §III-A): bool ``[B, 1, H, W]``, True = corrupted.

    For each image a target area fraction ``a ~ U(area[0], area[1])`` and a number of shapes
    ``k ~ U{1 … max_shapes}`` are drawn; axis-aligned rectangles and/or ellipses (kind drawn from ``shapes``,
    width/height ratio log-uniform in ``aspect``, centre uniform with the shape inside the image), each sized
    to an equal share of the area still missing, are united until the covered fraction reaches ``a`` (small
    extra shapes fill in what overlaps took away). A shape that would push the coverage above ``area[1]`` is
    rejected and the next one drawn smaller; should the attempts run out below ``area[0]`` (rare), the mask
    grows by its one-pixel ring until it reaches it. So the fraction of True pixels of every mask lies in
    ``[area[0], area[1]]`` whenever that interval contains a whole number of pixels.

    Args:
        batch, height, width: B, H, W in pixels.
        generator: CPU ``torch.Generator`` (all draws come from it, in a fixed order: deterministic).
        area: (lo, hi) fraction of the image area, 0 < lo ≤ hi < 1.
        max_shapes: most shapes per image (before fill-in), ≥ 1.
        shapes: subset of :data:`MASK_SHAPES`.
        aspect: (min, max) width/height ratio of a shape.
    Raises:
        ValueError: bad area/shape arguments.
    """
    lo, hi = (float(v) for v in area)
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"mask area must satisfy 0 < lo <= hi < 1 (fractions of the image), got {area}")
    shapes = tuple(shapes)
    if not shapes or any(s not in MASK_SHAPES for s in shapes):
        raise ValueError(f"mask shapes must be a non-empty subset of {MASK_SHAPES}, got {shapes}")
    if int(max_shapes) < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    if height < 2 or width < 2:
        raise ValueError(f"mask size must be at least 2x2 pixels, got {width}x{height}")
    a_lo, a_hi = math.log(float(aspect[0])), math.log(float(aspect[1]))
    total = float(height * width)

    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    out = np.zeros((batch, 1, height, width), dtype=bool)
    for b in range(batch):
        target = lo + (hi - lo) * uniform()
        k = min(1 + int(uniform() * max_shapes), int(max_shapes))
        m = out[b, 0]
        covered, placed, shrink = 0, 0, 1.0
        for _ in range(16 * int(max_shapes) + 48):
            frac = covered / total
            if frac >= lo and (frac >= target - 4.0 / total or (placed >= k and frac >= 0.97 * target)):
                break
            share = max((target - frac) * total / max(1, k - placed) * shrink, 2.0)
            kind = shapes[min(int(uniform() * len(shapes)), len(shapes) - 1)]
            r = math.exp(a_lo + (a_hi - a_lo) * uniform())
            if kind == "rect":
                w, h = math.sqrt(share * r), math.sqrt(share / r)
            else:  # ellipse of axes w, h: area pi w h / 4
                w, h = math.sqrt(4.0 * share * r / math.pi), math.sqrt(4.0 * share / (r * math.pi))
            w, h = min(max(w, 1.0), float(width)), min(max(h, 1.0), float(height))
            cx = w / 2 + (width - w) * uniform()
            cy = h / 2 + (height - h) * uniform()
            # rasterise inside the shape's bounding box only (pixel centres at +0.5)
            x0, x1 = max(0, int(math.floor(cx - w / 2))), min(width, int(math.ceil(cx + w / 2)) + 1)
            y0, y1 = max(0, int(math.floor(cy - h / 2))), min(height, int(math.ceil(cy + h / 2)) + 1)
            xs = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5
            ys = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5
            if kind == "rect":
                shape = (np.abs(xs - cx) <= w / 2) & (np.abs(ys - cy) <= h / 2)
            else:
                shape = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
            gain = int((shape & ~m[y0:y1, x0:x1]).sum())
            if covered + gain > hi * total:  # would overshoot: reject, draw the next one smaller
                shrink *= 0.6
                continue
            if gain > 0:
                m[y0:y1, x0:x1] |= shape
                covered, placed = covered + gain, placed + 1
        need = int(math.ceil(lo * total - 1e-9)) - covered
        while need > 0:  # attempts exhausted below lo (rare): grow the mask by its 1-pixel ring, up to lo
            if covered == 0:
                m[int(uniform() * height) % height, int(uniform() * width) % width] = True
                covered, need = 1, need - 1
                continue
            grown = m.copy()
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            ring = np.flatnonzero(grown & ~m)
            take = ring[:need] if len(ring) > need else ring
            m.reshape(-1)[take] = True
            covered, need = covered + len(take), need - len(take)
    return torch.from_numpy(out)


def corrupt_regions(frames: torch.Tensor, mask: torch.Tensor, noise_std: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Add Gaussian noise to the masked regions of ``frames`` only (paper §III-A; done BEFORE VAE encoding).

    Args:
        frames: float ``[B, H, W, C]`` (ComfyUI IMAGE layout) or ``[B, C, H, W]``, pixel values in [0, 1].
        mask: bool ``[B, 1, H, W]`` (:func:`random_region_mask`), True = corrupt.
        noise_std: standard deviation of the noise in pixel units of [0, 1] (0.5 = half the full range).
        generator: ``torch.Generator`` the noise is drawn from (a full ``frames``-shaped draw, so the number of
            draws does not depend on the mask: deterministic).
    Returns:
        a new tensor like ``frames``: inside the mask ``clamp(x + noise_std · n, 0, 1)`` with n ~ N(0, 1);
        outside it the input pixels, bit-identical.
    Raises:
        ValueError: the mask does not match the frames' batch/height/width, or frames are not floating point.
    """
    if not torch.is_floating_point(frames):
        raise ValueError(f"frames must be float in [0, 1], got {frames.dtype}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be bool [B, 1, H, W], got shape {tuple(mask.shape)}")
    b, _, h, w = mask.shape
    if frames.ndim == 4 and frames.shape[0] == b and tuple(frames.shape[2:]) == (h, w):
        m = mask.to(torch.bool)  # [B, 1, H, W] broadcasts over C
    elif frames.ndim == 4 and frames.shape[0] == b and tuple(frames.shape[1:3]) == (h, w):
        m = mask.to(torch.bool).permute(0, 2, 3, 1)  # [B, H, W, 1]
    else:
        raise ValueError(f"mask {tuple(mask.shape)} does not match frames {tuple(frames.shape)}")
    dev = generator.device if generator is not None else frames.device
    noise = torch.randn(frames.shape, generator=generator, device=dev, dtype=torch.float32)
    noisy = (frames.float() + float(noise_std) * noise.to(frames.device)).clamp_(0.0, 1.0).to(frames.dtype)
    return torch.where(m.to(frames.device), noisy, frames)


class IdentityDataset:
    """A prepared dataset (see the module docstring): frames, their Face Embed embeddings and captions.

    ``embeddings``: float32 ``[N, D]`` tensor (row i = frame i); ``backend``: ``"dlib"``/``"insightface"``;
    ``dim`` = D; ``size``: side in pixels of the stored frames. :meth:`image` reads a frame as float32
    ``[S, S, 3]`` in [0, 1], resized (OpenCV, area/cubic) to a requested resolution.
    Raises :class:`DatasetError` naming the missing/bad file.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; create it with "
                               "`python scripts/prepare_identity_data.py --src VIDEOS --out DIR`")
        idx, emb = self.root / INDEX_FILE, self.root / EMBEDDINGS_FILE
        for p in (idx, emb):
            if not p.is_file():
                raise DatasetError(f"{self.root} is not a prepared IdentityNet dataset: {p.name} is missing "
                                   "(run `python scripts/prepare_identity_data.py`)")
        self.entries = read_jsonl(idx, ("frame", "embedding"), "prepare_identity_data")
        if not self.entries:
            raise DatasetError(f"{idx} lists no frames")
        self.meta, self.embeddings = read_embeddings(emb)
        rows = [int(e["embedding"]) for e in self.entries]
        if min(rows) < 0 or max(rows) >= self.embeddings.shape[0]:
            raise DatasetError(f"{idx} refers to embedding rows up to {max(rows)} but {emb.name} has "
                               f"{self.embeddings.shape[0]}")
        bad = [i for i in rows if not torch.isfinite(self.embeddings[i]).all()]
        if bad:
            raise DatasetError(f"{emb.name}: rows {bad[:5]} are not finite (frames without a face)")
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.dim = int(self.embeddings.shape[1])
        self.backend = embedding_backend(self.meta, self.dim)
        self.size = int(self.meta.get("size", 0)) or None
        missing = [e["frame"] for e in self.entries if not (self.root / e["frame"]).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} frame file(s) listed in {idx.name} are missing, e.g. "
                               f"{missing[0]}")

    def __len__(self) -> int:
        return len(self.entries)

    def caption(self, i: int) -> str:
        """Caption of frame ``i`` (:data:`DEFAULT_CAPTION` when the entry has none)."""
        c = self.entries[i].get("caption")
        return c if isinstance(c, str) and c.strip() else DEFAULT_CAPTION

    @property
    def captions(self) -> list[str]:
        """The distinct captions, sorted."""
        return sorted({self.caption(i) for i in range(len(self))})

    def embedding(self, i: int) -> torch.Tensor:
        """float32 ``[D]`` Face Embed embedding of frame ``i``."""
        return self.embeddings[self.rows[i]]

    def image(self, i: int, resolution: int | None = None) -> np.ndarray:
        """Frame ``i`` as float32 RGB ``[S, S, 3]`` in [0, 1]; resized to ``resolution`` (square) when given."""
        return read_rgb(self.root / self.entries[i]["frame"], resolution, "frame").astype(np.float32) / 255.0


# -------------------------------------------------------------------------------------------- UNet LoRA
#: Attention projections of the UNet's transformer blocks that :class:`UNetLoRA` adapts.
LORA_TARGETS = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")


class UNetLoRA(torch.nn.Module):
    """Optional low-rank adapters on the frozen UNet's attention projections (``attn1``/``attn2``
    ``to_q``/``to_k``/``to_v``/``to_out.0``), trained alongside IdentityNet (``--lora-rank``; not part of the
    paper's IdentityNet stage, which trains IdentityNet only -- IP-Adapter-FaceID ships such a LoRA).

    Each adapted ``nn.Linear`` W (``[out, in]``) gets ``down`` ``[r, in]`` (normal, std 1/r) and ``up``
    ``[out, r]`` (zeros, so training starts from the unchanged UNet); while attached (:meth:`attach`, forward
    hooks, the UNet's own weights untouched) its output becomes ``W x + (alpha / r) · up (down x)``.
    :meth:`kohya_state_dict` is the file layout ComfyUI's LoraLoader reads: ``lora_unet_<module path with
    '_'>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, module paths relative to ``diffusion_model``
    (e.g. ``lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k``).
    """

    def __init__(self, linears: dict[str, torch.nn.Linear], rank: int, alpha: float | None = None, seed: int = 0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not linears:
            raise ValueError("no UNet attention projections to adapt")
        self.rank, self.alpha = int(rank), float(alpha if alpha is not None else rank)
        self.scale = self.alpha / self.rank
        self.modules_by_key = {"lora_unet_" + name.replace(".", "_"): m for name, m in linears.items()}
        g = torch.Generator().manual_seed(int(seed) + 7)
        self.down = torch.nn.ParameterDict({
            k: torch.nn.Parameter(torch.randn(self.rank, m.in_features, generator=g) / self.rank)
            for k, m in self.modules_by_key.items()})
        self.up = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(m.out_features, self.rank))
                                          for k, m in self.modules_by_key.items()})
        self._handles: list = []

    def attach(self) -> "UNetLoRA":
        """Install the forward hooks (idempotent)."""
        if not self._handles:
            for k, m in self.modules_by_key.items():
                self._handles.append(m.register_forward_hook(self._hook(k)))
        return self

    def detach(self) -> None:
        """Remove the hooks: the UNet computes exactly what it did before :meth:`attach`."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, key: str):
        def hook(module, args, output):
            x = args[0]
            d, u = self.down[key], self.up[key]
            delta = F.linear(F.linear(x, d.to(device=x.device, dtype=x.dtype)), u.to(device=x.device, dtype=x.dtype))
            return output + delta.to(output.dtype) * self.scale
        return hook

    def kohya_state_dict(self) -> dict[str, torch.Tensor]:
        """float32 CPU tensors in the LoRA file layout (see the class docstring)."""
        out = {}
        for k in self.modules_by_key:
            out[f"{k}.lora_down.weight"] = self.down[k].detach().float().cpu().contiguous()
            out[f"{k}.lora_up.weight"] = self.up[k].detach().float().cpu().contiguous()
            out[f"{k}.alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
        return out

    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor], name: str = "LoRA") -> None:
        """Restore weights written by :meth:`kohya_state_dict` (same modules and rank, else CheckpointError)."""
        for k in self.modules_by_key:
            d, u = sd.get(f"{k}.lora_down.weight"), sd.get(f"{k}.lora_up.weight")
            if d is None or u is None or tuple(d.shape) != tuple(self.down[k].shape) or \
                    tuple(u.shape) != tuple(self.up[k].shape):
                raise CheckpointError(f"{name}: no rank-{self.rank} weights for {k}; resume with the run's "
                                      "--lora-rank")
            with torch.no_grad():
                self.down[k].copy_(d)
                self.up[k].copy_(u)


def save_lora(lora: UNetLoRA, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write :meth:`UNetLoRA.kohya_state_dict` as safetensors (atomically), metadata ``rank``/``alpha`` + given."""
    meta = {"format": "portraittalk-unet-lora/1", "rank": str(lora.rank), "alpha": str(lora.alpha)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    write_safetensors(lora.kohya_state_dict(), path, meta)


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class TrainConfig:
    """Hyper-parameters of masked fine-tuning (defaults: paper §IV-B where it gives them).

    ``lr`` AdamW learning rate (5e-6); ``weight_decay``, ``betas``, ``adam_eps`` AdamW's; ``batch`` samples
    per optimiser step (32), reached by gradient accumulation over ``micro_batch``-sized forward/backward
    passes; ``resolution`` training image side in pixels (multiple of 8); ``mask_area`` (lo, hi) fraction of
    the image corrupted; ``mask_shapes`` most shapes per mask; ``noise_std`` corruption noise σ in [0, 1]
    pixel units; ``max_grad_norm`` gradient clipping (0 = off); ``seed`` of every random draw;
    ``face_dropout`` share of training samples whose face tokens are zeroed (zero tokens give exactly no face
    term — what a negative without identity gets at inference — so CFG can contrast identity; IP-Adapter drops
    its image condition for 5 %).
    """

    lr: float = 5e-6
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    batch: int = 32
    micro_batch: int = 4
    resolution: int = 512
    mask_area: tuple[float, float] = (0.05, 0.25)
    mask_shapes: int = 3
    noise_std: float = 0.5
    max_grad_norm: float = 0.0
    seed: int = 0
    face_dropout: float = 0.05

    def __post_init__(self):
        check_optim_config(self)
        self.mask_area = tuple(float(a) for a in self.mask_area)
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.face_dropout < 1.0:
            raise ValueError(f"face_dropout must be in [0, 1), got {self.face_dropout}")


#: ``predict(z_t, timesteps, context, face_tokens)`` → ε prediction like ``z_t`` (frozen UNet + IdentityNet):
#: ``z_t`` ``[b, 4, h, w]``, ``timesteps`` float ``[b]``, ``context`` ``[b, L, 768]``, ``face_tokens`` ``[b, N, 768]``.
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MaskedFineTuner(DiffusionTrainer):
    """Optimises an IdentityNet with L_mask (§III-A, Eq. 1) against a frozen UNet/VAE/text encoder.

    A :class:`~ptalk_models.training.DiffusionTrainer` (optimiser step with gradient accumulation, sample order,
    fixed-batch evaluation, exact-resume state) whose micro-batch loss is Eq. 1 on randomly corrupted frames
    (:meth:`micro_batch_loss`).

    Args:
        net: the :class:`~ptalk_models.identitynet.IdentityNet` to train (moved to ``device``, fp32, train mode,
            all parameters trainable: projection + per-layer face K/V, and the resampler of a PlusV2 net).
        dataset: :class:`IdentityDataset` (embedding width must equal ``net.config.id_dim``).
        contexts: caption → frozen text-encoder tokens ``[L, 768]`` for every caption of the dataset.
        encode, predict: see :data:`~ptalk_models.training.EncodeFn`, :data:`PredictFn`.
        alphas_cumprod: ᾱ ``[T]`` of the model's schedule (:func:`~ptalk_models.training.alphas_cumprod_from_sigmas`).
        config: :class:`TrainConfig`.
        device: training device; ``autocast_dtype``: e.g. ``torch.bfloat16`` for autocast around the UNet
            and IdentityNet on CUDA (None = full precision).
        lora, lora_lr: optional :class:`UNetLoRA` trained too (attached here; AdamW group 2 with ``lora_lr``,
            default ``config.lr``); call ``lora.detach()`` when done.
    After :meth:`train_step` ``step`` counts optimiser steps done. Raises
    :class:`~ptalk_models.training.DatasetError` when the dataset's embedding width is not the net's.
    """

    TRAINER_FORMAT = TRAINER_FORMAT
    PARAM_MISMATCH_HINT = "another IdentityNet architecture or --lora-rank"

    def __init__(self, net, dataset: IdentityDataset, contexts: dict[str, torch.Tensor], encode: EncodeFn,
                 predict: PredictFn, alphas_cumprod: torch.Tensor, config: TrainConfig,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 lora: UNetLoRA | None = None, lora_lr: float | None = None):
        if dataset.dim != net.config.id_dim:
            raise DatasetError(
                f"the dataset's embeddings are {dataset.dim}-D ({dataset.backend}) but the IdentityNet's projection "
                f"takes {net.config.id_dim}-D: prepare the data with --backend "
                f"{'insightface' if net.config.id_dim == 512 else 'dlib'} or start from a matching --init")
        super().__init__(dataset, contexts, encode, predict, alphas_cumprod, config, device, autocast_dtype)
        self.net = net.to(device=self.device, dtype=torch.float32).train().requires_grad_(True)
        groups = [(list(self.net.named_parameters()), {})]
        self.lora = lora
        if lora is not None:
            lora.to(device=self.device, dtype=torch.float32).train().requires_grad_(True).attach()
            groups.append(([(f"unet_lora.{n}", p) for n, p in lora.named_parameters()],
                           {"lr": float(lora_lr or config.lr)}))
        self._set_optimizer(groups)

    def micro_batch_loss(self, indices: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """L_mask of one micro-batch (a graph to backpropagate through): frames → random-region corruption
        → frozen VAE latents z → z_t with drawn noise and timesteps → ε_θ(z_t, t, text + face tokens) → MSE."""
        cfg = self.config
        frames = torch.from_numpy(np.stack([self.dataset.image(i, cfg.resolution) for i in indices]))
        b, h, w = frames.shape[:3]
        mask = random_region_mask(b, h, w, generator, cfg.mask_area, cfg.mask_shapes)
        corrupted = corrupt_regions(frames, mask, cfg.noise_std, generator)
        t = sample_timesteps(b, generator, self.alphas_cumprod.shape[0])
        with torch.no_grad():
            z0 = self.encode(corrupted).to(self.device, torch.float32)
        noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(self.device)
        zt = add_noise(z0, noise, t, self.alphas_cumprod)
        keep = torch.rand(b, generator=generator) >= cfg.face_dropout  # drawn always: same draw order
        emb = torch.stack([self.dataset.embedding(i) for i in indices]).to(self.device)
        ctx = self._context([self.dataset.caption(i) for i in indices])
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            tokens = self.net.face_tokens(emb)
            if self.net.training:  # face dropout (not during evaluation)
                tokens = tokens * keep.to(self.device, tokens.dtype)[:, None, None]
            eps = self.predict(zt, t.to(self.device, torch.float32), ctx, tokens)
        return noise_prediction_loss(eps, noise)


def checkpoint_paths(out_dir: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """(IdentityNet file, trainer state file) of step ``step`` in ``<out_dir>/checkpoints``."""
    d = Path(out_dir) / CHECKPOINTS_DIR
    return d / f"identitynet_step{int(step):07d}.safetensors", d / f"trainer_step{int(step):07d}.safetensors"


def lora_checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    """The UNet LoRA file of step ``step`` in ``<out_dir>/checkpoints`` (runs with ``--lora-rank`` only)."""
    return Path(out_dir) / CHECKPOINTS_DIR / f"unet_lora_step{int(step):07d}.safetensors"


def save_checkpoint(out_dir: str | os.PathLike, tuner: MaskedFineTuner, args: dict | None = None) -> tuple[Path, Path]:
    """Write the IdentityNet (``save_identitynet``, metadata step/seed/args/trainer), the UNet LoRA if any
    (:func:`save_lora`) and the trainer state of ``tuner.step`` to ``<out_dir>/checkpoints`` (each atomically;
    the state last, so a state file implies the others). Returns (IdentityNet path, state path)."""
    from .identitynet import save_identitynet

    net_path, state_path = checkpoint_paths(out_dir, tuner.step)
    net_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": tuner.step, "seed": tuner.config.seed, "trainer": TRAINER_FORMAT,
            "args": json.dumps(args or {}, default=str), "train_config": json.dumps(asdict(tuner.config)),
            "dataset_backend": tuner.dataset.backend}
    save_identitynet(tuner.net, net_path, meta)
    if tuner.lora is not None:
        save_lora(tuner.lora, lora_checkpoint_path(out_dir, tuner.step), {"step": tuner.step, "seed": tuner.config.seed})
    tuner.save_state(state_path, {"args": json.dumps(args or {}, default=str), "identitynet": net_path.name})
    return net_path, state_path


def latest_checkpoint(out_dir: str | os.PathLike) -> tuple[int, Path, Path] | None:
    """(step, IdentityNet file, trainer state file) of the newest complete checkpoint in
    ``<out_dir>/checkpoints`` (both files present), or None."""
    return newest_checkpoint(out_dir, checkpoint_paths)


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a LoRA file written by :func:`save_lora`; :class:`CheckpointError` when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable LoRA file ({e})") from None
