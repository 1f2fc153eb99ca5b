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

This module holds everything that does not need ComfyUI: the masks and corruption, the diffusion forward
process and loss, the dataset that ``scripts/prepare_identity_data.py`` writes, the optimisation loop
(:class:`MaskedFineTuner`, which receives the frozen VAE encoder and UNet as callables) and the checkpoint
files. ``scripts/train_identitynet.py`` wires it to a ComfyUI SD1.5 checkpoint.

Dataset layout (``DATA_FORMAT``)::

    <root>/frames/*.png              face-centred square crops, uint8 RGB, all the same size
    <root>/embeddings.safetensors    "embeddings": float32 [N, D] (D = 128 dlib, 512 insightface);
                                     metadata {"format", "backend", "dim", "count", "size"}
    <root>/index.jsonl               one JSON object per frame: {"frame": "frames/x.png", "caption": str,
                                     "embedding": row, "source": relative source path, "frame_index": int}

Checkpoint files (written by :func:`save_checkpoint` into ``<out>/checkpoints/``):

* ``identitynet_step<NNNNNNN>.safetensors`` -- the net, :func:`ptalk_models.identitynet.save_identitynet`
  (loadable by the IdentityNet Loader node); metadata adds ``step``, ``seed``, ``args`` (JSON), ``trainer``.
* ``trainer_step<NNNNNNN>.safetensors`` -- what an exact resume needs besides the weights: AdamW moments
  ``optimizer.<param>.exp_avg`` / ``.exp_avg_sq`` / ``.step`` (float32), the trainer's random generator
  state ``rng.trainer`` and PyTorch's global CPU generator state ``rng.torch_cpu`` (uint8); metadata
  ``format`` (``TRAINER_FORMAT``), ``step``, ``seed``, ``param_names`` / ``param_groups`` / ``config`` (JSON).
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

from .identitynet import write_safetensors

DATA_FORMAT = "portraittalk-identity-data/1"
TRAINER_FORMAT = "portraittalk-identitynet-trainer/1"
DEFAULT_CAPTION = "a photo of a person"
#: Names of the files of a prepared dataset.
FRAMES_DIR, EMBEDDINGS_FILE, INDEX_FILE = "frames", "embeddings.safetensors", "index.jsonl"
#: Shapes :func:`random_region_mask` draws.
MASK_SHAPES = ("rect", "ellipse")
CHECKPOINTS_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^trainer_step(\d+)\.safetensors$")


class DatasetError(ValueError):
    """A prepared IdentityNet dataset that is missing or malformed; the message names the file and the fix."""


class CheckpointError(ValueError):
    """A trainer checkpoint that cannot be resumed (missing, corrupt, or for another run)."""


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


# ----------------------------------------------------------------------------------- diffusion and loss
def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t ``[T]`` (float64) of an eps-prediction discrete schedule given as ComfyUI's ``model_sampling.sigmas``
    (σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), so ᾱ_t = 1 / (1 + σ_t²)); index t = DDPM timestep 0 … T−1."""
    s = sigmas.detach().to(torch.float64).cpu()
    return 1.0 / (1.0 + s * s)


def sample_timesteps(n: int, generator: torch.Generator | None, num_timesteps: int) -> torch.Tensor:
    """``n`` DDPM timesteps uniform in {0 … num_timesteps − 1} (int64 ``[n]``, CPU)."""
    return torch.randint(0, int(num_timesteps), (int(n),), generator=generator)


def add_noise(z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM forward process q(z_t | z_0): ``sqrt(ᾱ_t) · z0 + sqrt(1 − ᾱ_t) · noise``.

    ``z0``/``noise`` ``[B, C, h, w]`` (any float dtype; result in ``z0``'s dtype and device), ``timesteps``
    int ``[B]``, ``alphas_cumprod`` ``[T]``. Equivalent to ComfyUI's EPS ``calculate_input(σ, z0 + σ·noise)``.
    """
    ab = alphas_cumprod.to(device=z0.device, dtype=torch.float64)[timesteps.to(z0.device)]
    shape = (-1,) + (1,) * (z0.ndim - 1)
    a = ab.sqrt().reshape(shape).to(torch.float32)
    s = (1.0 - ab).sqrt().reshape(shape).to(torch.float32)
    return (a * z0.float() + s * noise.to(z0.device).float()).to(z0.dtype)


def masked_noise_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 1 of §III-A: mean squared error ‖ε − ε_θ(z_t, t, c)‖² over all elements (float32 scalar)."""
    return F.mse_loss(eps_pred.float(), eps.to(eps_pred.device).float(), reduction="mean")


# ------------------------------------------------------------------------------------------------ dataset
def read_jsonl(path: Path, required: Sequence[str], prepare_script: str) -> list[dict]:
    """The JSON objects of a prepared dataset's ``.jsonl`` file (blank lines skipped), each with the keys
    ``required``; :class:`DatasetError` names the line and ``prepare_script`` to re-run."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{n}: not valid JSON ({err.msg}); re-run {prepare_script}") from None
            if not isinstance(e, dict) or any(k not in e for k in required):
                raise DatasetError(f"{path}:{n}: an entry needs the keys {list(required)}, got {line[:120]!r}")
            out.append(e)
    return out


def read_rgb(path: Path, resolution: int | None = None, what: str = "image") -> np.ndarray:
    """uint8 RGB ``[S, S, 3]`` of an image file, resized (area/cubic) to ``resolution`` (square) when given;
    :class:`DatasetError` ("cannot read <what> <path>") when unreadable."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read {what} {path}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if resolution and img.shape[:2] != (resolution, resolution):
        interp = cv2.INTER_AREA if img.shape[0] > resolution else cv2.INTER_CUBIC
        img = cv2.resize(img, (int(resolution), int(resolution)), interpolation=interp)
    return img


def read_embeddings(path: Path, data_format: str | None = None, prepare_script: str = "the data preparation"
                    ) -> tuple[dict[str, str], torch.Tensor]:
    """(metadata, float32 ``[N, D]`` "embeddings") of a prepared dataset's ``embeddings.safetensors``;
    :class:`DatasetError` when unreadable, not 2-D, or (``data_format`` given) of another metadata format
    (re-run ``prepare_script``)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            embeddings = f.get_tensor("embeddings").float()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DatasetError(f"{path} is unreadable or has no 'embeddings' tensor ({e})") from None
    if data_format is not None and meta.get("format") not in (None, data_format):
        raise DatasetError(f"{path} is of format {meta.get('format')!r}, not {data_format!r}: re-run "
                           f"{prepare_script}")
    if embeddings.ndim != 2:
        raise DatasetError(f"{path}: embeddings must be [N, D], got {tuple(embeddings.shape)}")
    return meta, embeddings


def embedding_backend(meta: dict[str, str], dim: int) -> str:
    """The Face Embed backend of a dataset's embeddings (metadata ``backend``, else guessed from the width)."""
    return meta.get("backend") or {128: "dlib", 512: "insightface"}.get(dim, f"{dim}-D")


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
                               "`python -m scripts.prepare_identity_data --src VIDEOS --out DIR`")
        idx, emb = self.root / INDEX_FILE, self.root / EMBEDDINGS_FILE
        for p in (idx, emb):
            if not p.is_file():
                raise DatasetError(f"{self.root} is not a prepared IdentityNet dataset: {p.name} is missing "
                                   "(run `python -m scripts.prepare_identity_data`)")
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


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation of ``range(n)`` (int64) that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2 ** 63))
    return torch.randperm(int(n), generator=g)


def sample_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices of the global sample positions ``start … start + count − 1`` (epoch after epoch, each
    shuffled by :func:`epoch_order`); step s of batch B uses positions ``s·B … (s + 1)·B − 1``."""
    out, cache = [], {}
    for pos in range(int(start), int(start) + int(count)):
        ep, k = divmod(pos, n)
        if ep not in cache:
            cache[ep] = epoch_order(n, seed, ep)
        out.append(int(cache[ep][k]))
    return out


def eval_indices(n: int, k: int) -> list[int]:
    """``k`` sample indices evenly spaced over a dataset of ``n`` samples (the fixed evaluation batch)."""
    k = min(max(int(k), 0), int(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)}) if k else []


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
def check_optim_config(config) -> None:
    """The checks every train config shares (its ``__post_init__``): ``betas`` made a tuple of floats; ValueError
    for ``batch`` / ``micro_batch`` below 1 or a ``resolution`` that is not a positive multiple of 8."""
    config.betas = tuple(float(b) for b in config.betas)
    if config.batch < 1 or config.micro_batch < 1:
        raise ValueError(f"batch and micro_batch must be >= 1, got {config.batch}, {config.micro_batch}")
    if config.resolution < 8 or config.resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8 (the VAE's factor), got {config.resolution}")


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


#: ``encode(frames)``: float32 ``[b, H, W, 3]`` in [0, 1] (CPU) → scaled latents ``[b, 4, H/8, W/8]`` (frozen VAE,
#: ``latent_format.process_in`` applied) on the training device.
EncodeFn = Callable[[torch.Tensor], torch.Tensor]
#: ``predict(z_t, timesteps, context, face_tokens)`` → ε prediction like ``z_t`` (frozen UNet + IdentityNet):
#: ``z_t`` ``[b, 4, h, w]``, ``timesteps`` float ``[b]``, ``context`` ``[b, L, 768]``, ``face_tokens`` ``[b, N, 768]``.
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MaskedFineTuner:
    """Optimises an IdentityNet with L_mask (§III-A, Eq. 1) against a frozen UNet/VAE/text encoder.

    Args:
        net: the :class:`~ptalk_models.identitynet.IdentityNet` to train (moved to ``device``, fp32, train mode,
            all parameters trainable: projection + per-layer face K/V, and the resampler of a PlusV2 net).
        dataset: :class:`IdentityDataset` (embedding width must equal ``net.config.id_dim``).
        contexts: caption → frozen text-encoder tokens ``[L, 768]`` for every caption of the dataset.
        encode, predict: see :data:`EncodeFn`, :data:`PredictFn`.
        alphas_cumprod: ᾱ ``[T]`` of the model's schedule (:func:`alphas_cumprod_from_sigmas`).
        config: :class:`TrainConfig`.
        device: training device; ``autocast_dtype``: e.g. ``torch.bfloat16`` for autocast around the UNet
            and IdentityNet on CUDA (None = full precision).
        lora, lora_lr: optional :class:`UNetLoRA` trained too (attached here; AdamW group 2 with ``lora_lr``,
            default ``config.lr``); call ``lora.detach()`` when done.
    After :meth:`train_step` ``step`` counts optimiser steps done.
    """

    def __init__(self, net, dataset: IdentityDataset, contexts: dict[str, torch.Tensor], encode: EncodeFn,
                 predict: PredictFn, alphas_cumprod: torch.Tensor, config: TrainConfig,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 lora: UNetLoRA | None = None, lora_lr: float | None = None):
        if dataset.dim != net.config.id_dim:
            raise DatasetError(
                f"the dataset's embeddings are {dataset.dim}-D ({dataset.backend}) but the IdentityNet's projection "
                f"takes {net.config.id_dim}-D: prepare the data with --backend "
                f"{'insightface' if net.config.id_dim == 512 else 'dlib'} or start from a matching --init")
        self._setup(dataset, contexts, encode, predict, alphas_cumprod, config, device, autocast_dtype)
        self.net = net.to(device=self.device, dtype=torch.float32).train().requires_grad_(True)
        named = list(self.net.named_parameters())
        groups = [{"params": [p for _, p in named]}]
        self.lora = lora
        if lora is not None:
            lora.to(device=self.device, dtype=torch.float32).train().requires_grad_(True).attach()
            lnamed = [(f"unet_lora.{n}", p) for n, p in lora.named_parameters()]
            named += lnamed
            groups.append({"params": [p for _, p in lnamed], "lr": float(lora_lr or config.lr)})
        self.param_names = [n for n, _ in named]
        self._group_lrs = [float(config.lr)] + ([float(lora_lr or config.lr)] if lora is not None else [])
        self._group_wds = [float(config.weight_decay)] * len(self._group_lrs)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                                           weight_decay=config.weight_decay)

    def _setup(self, dataset, contexts: dict[str, torch.Tensor], encode, predict, alphas_cumprod: torch.Tensor,
               config, device: str | torch.device, autocast_dtype: torch.dtype | None) -> None:
        """What every trainer sets besides its net and optimiser: ``device``, ``dataset``, ``config``,
        ``contexts`` (on the device), ``encode``, ``predict``, ``alphas_cumprod`` (float64, CPU),
        ``autocast_dtype``, the random generator ``rng`` (seeded with ``config.seed``) and ``step`` 0.
        Raises ValueError when a caption of the dataset has no text context."""
        missing = [c for c in dataset.captions if c not in contexts]
        if missing:
            raise ValueError(f"no text context for caption(s) {missing[:3]}")
        self.device = torch.device(device)
        self.dataset, self.config = dataset, config
        self.contexts = {k: v.to(self.device, torch.float32) for k, v in contexts.items()}
        self.encode, self.predict = encode, predict
        self.alphas_cumprod = alphas_cumprod.detach().to(torch.float64).cpu()
        self.autocast_dtype = autocast_dtype
        self.rng = torch.Generator().manual_seed(int(config.seed))
        self.step = 0

    # -- batches
    def _context(self, captions: list[str]) -> torch.Tensor:
        ctx = [self.contexts[c] for c in captions]
        lengths = {int(c.shape[0]) for c in ctx}
        if len(lengths) > 1:  # long captions span several 77-token chunks: repeat to a common length (ComfyUI)
            n = math.lcm(*lengths)
            ctx = [c.repeat(n // c.shape[0], 1) for c in ctx]
        return torch.stack(ctx)

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
        return masked_noise_loss(eps, noise)

    def batch_indices(self, step: int) -> list[int]:
        """Dataset indices of optimiser step ``step`` (0-based)."""
        B = self.config.batch
        return sample_indices(len(self.dataset), self.config.seed, step * B, B)

    def train_step(self) -> float:
        """One AdamW step on ``config.batch`` samples (gradients accumulated over micro-batches, each weighted
        by its share of the batch). Returns the batch's mean L_mask (float)."""
        cfg = self.config
        idx = self.batch_indices(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for s in range(0, len(idx), cfg.micro_batch):
            part = idx[s:s + cfg.micro_batch]
            loss = self.micro_batch_loss(part, self.rng)
            (loss * (len(part) / len(idx))).backward()
            total += float(loss.detach()) * len(part)
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           cfg.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        return total / len(idx)

    @torch.no_grad()
    def evaluate(self, indices: Sequence[int], seed: int = 12345) -> float:
        """Mean L_mask on a FIXED evaluation batch: the frames ``indices`` with masks, corruption noise,
        timesteps and diffusion noise drawn from a fresh generator seeded with ``seed`` (the trainer's own
        generator is untouched), so values before and after training are comparable."""
        g = torch.Generator().manual_seed(int(seed))
        was = self.net.training
        self.net.eval()
        total = 0.0
        for s in range(0, len(indices), self.config.micro_batch):
            part = list(indices[s:s + self.config.micro_batch])
            total += float(self.micro_batch_loss(part, g)) * len(part)
        self.net.train(was)
        return total / len(indices)

    # -- state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata) of the trainer state file (see the module docstring)."""
        sd = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.param_names):
            for k, v in sd["state"].get(i, {}).items():
                if torch.is_tensor(v):
                    tensors[f"optimizer.{name}.{k}"] = v.detach().cpu().contiguous()
                else:
                    tensors[f"optimizer.{name}.{k}"] = torch.tensor(float(v), dtype=torch.float32)
        tensors["rng.trainer"] = self.rng.get_state().clone()
        tensors["rng.torch_cpu"] = torch.get_rng_state().clone()
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        meta = {"format": TRAINER_FORMAT, "step": str(self.step), "seed": str(self.config.seed),
                "param_names": json.dumps(self.param_names), "param_groups": json.dumps(groups),
                "config": json.dumps(asdict(self.config))}
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], name: str = "state") -> None:
        """Restore step, AdamW state and random generators from :meth:`state_tensors` output. The learning
        rates and weight decay stay this tuner's (a resumed run may change them on purpose)."""
        if meta.get("format") != TRAINER_FORMAT:
            raise CheckpointError(f"{name} is not a trainer state file (format {meta.get('format')!r})")
        names = json.loads(meta["param_names"])
        if names != self.param_names:
            raise CheckpointError(f"{name} was saved for other trainable parameters ({len(names)} tensors vs "
                                  f"{len(self.param_names)}: another IdentityNet architecture or --lora-rank)")
        state = {}
        for i, n in enumerate(names):
            s = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optimizer.{n}.")
                 and k.count(".") == n.count(".") + 2}
            if s:
                state[i] = s
        groups = json.loads(meta["param_groups"])
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        for g, lr, wd in zip(self.optimizer.param_groups, self._group_lrs, self._group_wds):  # this run's lr / wd
            g["lr"], g["weight_decay"] = lr, wd
        self.rng.set_state(tensors["rng.trainer"].to(torch.uint8))
        torch.set_rng_state(tensors["rng.torch_cpu"].to(torch.uint8))
        self.step = int(meta["step"])


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
    tensors, smeta = tuner.state_tensors()
    smeta["args"] = json.dumps(args or {}, default=str)
    smeta["identitynet"] = net_path.name
    write_safetensors(tensors, state_path, smeta)
    return net_path, state_path


def latest_checkpoint(out_dir: str | os.PathLike) -> tuple[int, Path, Path] | None:
    """(step, IdentityNet file, trainer state file) of the newest complete checkpoint in
    ``<out_dir>/checkpoints`` (both files present), or None."""
    return newest_checkpoint(out_dir, checkpoint_paths)


def newest_checkpoint(out_dir: str | os.PathLike, paths: Callable[[str | os.PathLike, int], tuple[Path, ...]]
                      ) -> tuple | None:
    """``(step, *paths(out_dir, step))`` of the newest step in ``<out_dir>/checkpoints`` that has a
    ``trainer_step<N>`` state file and whose first path (the net file) exists, or None."""
    d = Path(out_dir) / CHECKPOINTS_DIR
    if not d.is_dir():
        return None
    best = None
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if not m:
            continue
        step = int(m.group(1))
        files = paths(out_dir, step)
        if files[0].is_file() and (best is None or step > best[0]):
            best = (step, *files)
    return best


def read_lora(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a LoRA file written by :func:`save_lora`; :class:`CheckpointError` when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable LoRA file ({e})") from None


def read_trainer_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a trainer state file; :class:`CheckpointError` when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable trainer state file ({e})") from None
