"""Diffusion fine-tuning against a frozen SD1.5 UNet: what every trainer of this pack shares (pure torch/numpy,
no ComfyUI).

Both networks of PortraitTalk are trained with the noise-prediction loss of latent diffusion -- Eq. 1 (§III-A)
for IdentityNet, Eq. 3 (§III-B) for AnimateNet::

    L = E_{z, c, ε ~ N(0, I), t} ‖ ε − ε_θ(z_t, t, c) ‖²,   z_t = sqrt(ᾱ_t) · z + sqrt(1 − ᾱ_t) · ε

with ``t`` a DDPM timestep drawn uniformly from the model's own schedule (ᾱ_t from ComfyUI's
``model_sampling.sigmas``: ᾱ = 1 / (1 + σ²)). This module holds that forward process and loss, the readers of
the prepared datasets' files, the sample order, the checks of a train config, the optimisation loop with
gradient accumulation, fixed-batch evaluation and exact resume (:class:`DiffusionTrainer`; the network-specific
trainers subclass it: :class:`ptalk_models.identity_training.MaskedFineTuner`,
:class:`ptalk_models.animatenet_training.AnimateNetTrainer`) and the trainer state files.

Trainer state file (``<out>/checkpoints/trainer_step<NNNNNNN>.safetensors``, :meth:`DiffusionTrainer.state_tensors`):
what an exact resume needs besides the weights: AdamW moments ``optimizer.<param>.exp_avg`` / ``.exp_avg_sq`` /
``.step`` (float32), the trainer's random generator state ``rng.trainer`` and PyTorch's global CPU generator state
``rng.torch_cpu`` (uint8); metadata ``format`` (the trainer's ``TRAINER_FORMAT``), ``step``, ``seed``,
``param_names`` / ``param_groups`` / ``config`` (JSON), plus what the trainer adds.

Determinism: every random draw of training comes from one CPU ``torch.Generator`` seeded with the run's seed, in a
fixed order, and the order of the samples is a per-epoch permutation that depends only on (seed, epoch)
(:func:`sample_indices`); so a run stopped after N steps and resumed gives bit-identical weights at 2N to a run of
2N steps straight (on the same device and thread count).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .weights import write_safetensors

CHECKPOINTS_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^trainer_step(\d+)\.safetensors$")


class DatasetError(ValueError):
    """A prepared dataset that is missing or malformed; the message names the file and the fix."""


class CheckpointError(ValueError):
    """A trainer checkpoint that cannot be resumed (missing, corrupt, or for another run)."""


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


def noise_prediction_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The loss of Eq. 1 (§III-A) and Eq. 3 (§III-B): mean squared error ‖ε − ε_θ‖² over all elements (float32
    scalar)."""
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


# ------------------------------------------------------------------------------------------- sample order
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


# ------------------------------------------------------------------------------------------------ trainer
def check_optim_config(config) -> None:
    """The checks every train config shares (its ``__post_init__``): ``betas`` made a tuple of floats; ValueError
    for ``batch`` / ``micro_batch`` below 1 or a ``resolution`` that is not a positive multiple of 8."""
    config.betas = tuple(float(b) for b in config.betas)
    if config.batch < 1 or config.micro_batch < 1:
        raise ValueError(f"batch and micro_batch must be >= 1, got {config.batch}, {config.micro_batch}")
    if config.resolution < 8 or config.resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8 (the VAE's factor), got {config.resolution}")


#: ``encode(frames)``: float32 ``[b, H, W, 3]`` in [0, 1] (CPU) → scaled latents ``[b, 4, H/8, W/8]`` (frozen VAE,
#: ``latent_format.process_in`` applied) on the training device.
EncodeFn = Callable[[torch.Tensor], torch.Tensor]


class DiffusionTrainer:
    """The optimisation loop of a network trained with the noise-prediction loss against a frozen UNet/VAE/text
    encoder: AdamW steps on ``config.batch`` samples by gradient accumulation over micro-batches
    (:meth:`train_step`), the sample order (:meth:`batch_indices`), fixed-batch evaluation (:meth:`evaluate`) and
    the exact-resume state (:meth:`state_tensors` / :meth:`load_state_tensors`, module docstring).

    A subclass sets :attr:`TRAINER_FORMAT`, calls ``super().__init__`` (below), puts the network being trained
    in ``net`` (its train/eval mode is switched by :meth:`evaluate`), builds the optimiser with
    :meth:`_set_optimizer` and implements :meth:`micro_batch_loss`.

    Args:
        dataset: the prepared dataset (``len``, ``captions``, ``caption(i)``).
        contexts: caption → frozen text-encoder tokens ``[L, 768]`` for every caption of the dataset.
        encode: :data:`EncodeFn`; predict: the frozen UNet's ε prediction (signature the subclass's).
        alphas_cumprod: ᾱ ``[T]`` of the model's schedule (:func:`alphas_cumprod_from_sigmas`).
        config: a train config (``seed``, ``batch``, ``micro_batch``, ``lr``, ``weight_decay``, ``betas``,
            ``adam_eps``, ``max_grad_norm``; :func:`check_optim_config`).
        device: training device; ``autocast_dtype``: e.g. ``torch.bfloat16`` for autocast around the UNet and
            the trained network on CUDA (None = full precision).
    Sets ``device``, ``dataset``, ``config``, ``contexts`` (on the device), ``encode``, ``predict``,
    ``alphas_cumprod`` (float64, CPU), ``autocast_dtype``, the random generator ``rng`` (seeded with
    ``config.seed``) and ``step`` 0 (after :meth:`train_step`: optimiser steps done).
    Raises ValueError when a caption of the dataset has no text context.
    """

    #: ``format`` of this trainer's state files (each subclass its own).
    TRAINER_FORMAT = ""
    #: What :meth:`load_state_tensors` calls a file of another format ("<name> is not <this> (format …)").
    STATE_FILE_KIND = "a trainer state file"
    #: Why a state file may list other trainable parameters (the end of :meth:`load_state_tensors`' message).
    PARAM_MISMATCH_HINT = "another network or trainer setting"

    def __init__(self, dataset, contexts: dict[str, torch.Tensor], encode: EncodeFn, predict: Callable,
                 alphas_cumprod: torch.Tensor, config, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None):
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

    def _set_optimizer(self, groups: Sequence[tuple[list[tuple[str, torch.nn.Parameter]], dict]]) -> None:
        """AdamW (``config`` lr, betas, eps, weight decay) over ``groups``: ``(named parameters, options)`` each,
        the options (``lr``, ``weight_decay``) overriding the config's for that group. Sets ``optimizer``,
        ``param_names`` (the state names, in the groups' order) and the groups' learning rates and weight decays,
        which :meth:`load_state_tensors` re-applies (a resumed run may change them on purpose)."""
        cfg = self.config
        self.param_names = [n for named, _ in groups for n, _ in named]
        self._group_lrs = [float(opts.get("lr", cfg.lr)) for _, opts in groups]
        self._group_wds = [float(opts.get("weight_decay", cfg.weight_decay)) for _, opts in groups]
        self.optimizer = torch.optim.AdamW([{"params": [p for _, p in named], **opts} for named, opts in groups],
                                           lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)

    # -- batches
    def _context(self, captions: list[str]) -> torch.Tensor:
        ctx = [self.contexts[c] for c in captions]
        lengths = {int(c.shape[0]) for c in ctx}
        if len(lengths) > 1:  # long captions span several 77-token chunks: repeat to a common length (ComfyUI)
            n = math.lcm(*lengths)
            ctx = [c.repeat(n // c.shape[0], 1) for c in ctx]
        return torch.stack(ctx)

    def micro_batch_loss(self, indices: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """The loss of one micro-batch (float32 scalar, a graph to backpropagate through), every random draw
        from ``generator``; the subclass's."""
        raise NotImplementedError

    def batch_indices(self, step: int) -> list[int]:
        """Dataset indices of optimiser step ``step`` (0-based)."""
        B = self.config.batch
        return sample_indices(len(self.dataset), self.config.seed, step * B, B)

    def train_step(self) -> float:
        """One AdamW step on ``config.batch`` samples (gradients accumulated over micro-batches, each weighted
        by its share of the batch). Returns the batch's mean loss (float)."""
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
        """Mean loss on a FIXED evaluation batch: the samples ``indices`` with every random draw of
        :meth:`micro_batch_loss` (timesteps, diffusion noise, and the subclass's own: masks, corruption noise)
        from a fresh generator seeded with ``seed`` (the trainer's own generator is untouched), in eval mode, so
        values before and after training are comparable."""
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
        meta = {"format": self.TRAINER_FORMAT, "step": str(self.step), "seed": str(self.config.seed),
                "param_names": json.dumps(self.param_names), "param_groups": json.dumps(groups),
                "config": json.dumps(asdict(self.config))}
        return tensors, meta

    def _check_state_meta(self, meta: dict[str, str], name: str) -> None:
        """A subclass's own checks of a state file's metadata (:class:`CheckpointError`), after the format's."""

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, str], name: str = "state") -> None:
        """Restore step, AdamW state and random generators from :meth:`state_tensors` output. The learning
        rates and weight decay stay this trainer's (a resumed run may change them on purpose). Raises
        :class:`CheckpointError` for another format or other trainable parameters."""
        if meta.get("format") != self.TRAINER_FORMAT:
            raise CheckpointError(f"{name} is not {self.STATE_FILE_KIND} (format {meta.get('format')!r})")
        self._check_state_meta(meta, name)
        names = json.loads(meta.get("param_names", "[]"))
        if names != self.param_names:
            raise CheckpointError(f"{name} was saved for other trainable parameters ({len(names)} tensors vs "
                                  f"{len(self.param_names)}: {self.PARAM_MISMATCH_HINT})")
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

    def save_state(self, path: str | os.PathLike, metadata: dict[str, str]) -> None:
        """Write :meth:`state_tensors` with ``metadata`` added as the state file ``path`` (atomically)."""
        tensors, meta = self.state_tensors()
        meta.update(metadata)
        write_safetensors(tensors, path, meta)


# ------------------------------------------------------------------------------------------- checkpoints
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


def read_trainer_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a trainer state file; :class:`CheckpointError` when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable trainer state file ({e})") from None
