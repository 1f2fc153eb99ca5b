"""AnimateNet training (PortraitTalk §III-B, loss Eq. 3): the engine side, pure torch/numpy (no ComfyUI).

AnimateNet (:mod:`ptalk_models.animatenet`) is a ControlNet-like trainable copy of the SD1.5 UNet encoder whose
cross-attention is the three-way Structure / Identity / Temporal attention (Eq. 2). It is trained on consecutive
frame pairs (frame t, frame t−1) of talking-head videos with the frozen UNet, text encoder and VAE, with the
latent-diffusion noise-prediction loss (Eq. 3)::

    L = E_{z, t, ε ~ N(0, I)} ‖ ε − ε_θ(z_t, t, c_text, c_s, c_i, c_t) ‖²,   z_t = sqrt(ᾱ_t)·z + sqrt(1 − ᾱ_t)·ε

where ``z`` is the (scaled) VAE latent of frame t, ``ε_θ`` the frozen UNet plus AnimateNet's control residuals
(added to the UNet's skip connections and middle block, ComfyUI's control format), ``c_text`` the frozen CLIP
tokens of a caption (default :data:`DEFAULT_CAPTION`), and AnimateNet's three conditions:

* structure ``c_s``: the Draw Landmarks image (ControlNet style, :func:`ptalk_models.draw.draw_landmarks`) of
  frame t's landmarks, drawn at the training resolution;
* identity ``c_i``: the head contour (Contour Guide, :func:`ptalk_models.contour.head_contour`, computed with
  the frame's own landmarks) of frame t−1 — as the Temporal Sampler gives it (the contour of the previous frame);
* temporal ``c_t``: the VAE latent of frame t−1 in model space (``latent_format.process_in`` applied, what the
  sampler holds as the previous frame's latent).

Two stages (§III-B): **stage 1** trains without temporal attention (``temporal=None``; the temporal encoder and
temporal K/V frozen, :func:`ptalk_models.animatenet.trainable_parameters` stage 1); **stage 2** trains every
AnimateNet parameter with the temporal condition and integrates IdentityNet: the UNet carries an IdentityNet
attn2 patch (decoupled cross-attention, §III-A) fed with face tokens of the clip's Face Embed embedding. The
IdentityNet is frozen by default (it was trained in its own stage, §III-A; stage 2 teaches AnimateNet to work
together with the face term) and can be fine-tuned too (``train_identitynet``, its own AdamW group).

Optimisation: AdamW; the three-way attention ``weights`` vectors (w1, w2, w3) are in a group without weight
decay, so w3 keeps its initial 0 in stage 1 where its gradient is exactly zero. Defaults: lr 1e-5, batch 32 by
gradient accumulation, bf16 autocast on CUDA (:class:`AnimateTrainConfig`; the paper's §IV-B values for
AnimateNet could not be checked here, these are the common ControlNet-training settings).

The diffusion forward process and loss, the sample order, the optimisation loop and the exact-resume state are
:mod:`ptalk_models.training`'s (:class:`AnimateNetTrainer` is a :class:`~ptalk_models.training.DiffusionTrainer`).
``scripts/prepare_animatenet_data.py`` (:mod:`ptalk_harness.animatenet_data`) writes the dataset,
``scripts/train_animatenet.py`` (:mod:`ptalk_harness.train_animatenet`) wires the trainer to a ComfyUI SD1.5
checkpoint.

Dataset layout (:data:`DATA_FORMAT`)::

    <root>/clips.jsonl                    one JSON object per clip: name, source (path relative to --src),
                                          fps, stride, crop [x0, y0, side] (source pixels, fixed per clip),
                                          source_size [W, H], size S, frames / contours (paths), frame_indices
                                          (source frame numbers), landmarks (path), present (list of bool),
                                          embedding (row), caption, audio (path or null), audio_source
    <root>/clips/<clip>/frames/NNNNN.png  the face-centred square crops S x S, uint8 RGB
    <root>/clips/<clip>/contours/NNNNN.png head contour of that frame (uint8 grey, white outline on black)
    <root>/clips/<clip>/landmarks.npz     "points" float32 [T, 478, 3] normalised on the crop, "present" bool [T],
                                          "fps", "image_size" [S, S]
    <root>/clips/<clip>/audio.wav         the clip's audio track (16-bit PCM, the source's rate), when it has one
    <root>/embeddings.safetensors         "embeddings" float32 [n_clips, D] (one Face Embed mean per clip);
                                          metadata format/backend/dim/count/size
    <root>/index.jsonl                    one line per training pair: {"clip", "t", "t_prev", "frame",
                                          "previous", "contour_previous", "embedding", "caption", "audio", "time"}

Checkpoint files (``<out>/checkpoints/``, :func:`save_checkpoint`):

* ``animatenet_step<NNNNNNN>.safetensors`` — :func:`ptalk_models.animatenet.save_animatenet` (loadable by the
  AnimateNet Loader node); metadata adds ``step``, ``stage``, ``seed``, ``trainer``, ``args`` / ``train_config``.
* ``identitynet_step<NNNNNNN>.safetensors`` — only when stage 2 fine-tunes the IdentityNet.
* ``trainer_step<NNNNNNN>.safetensors`` — AdamW moments, random-generator states, step, stage (the layout of
  :meth:`~ptalk_models.training.DiffusionTrainer.state_tensors`, format :data:`TRAINER_FORMAT`).

Determinism: as every :class:`~ptalk_models.training.DiffusionTrainer` — one CPU generator seeded with the run's
seed draws timesteps and noise in a fixed order, the sample order depends only on (seed, epoch); a run stopped
after N steps and resumed gives bit-identical weights to an uninterrupted run (same device and thread count).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .training import (CHECKPOINTS_DIR, CheckpointError, DatasetError, DiffusionTrainer, EncodeFn, add_noise,
                       check_optim_config, embedding_backend, newest_checkpoint, noise_prediction_loss,
                       read_embeddings, read_jsonl, read_rgb, sample_timesteps)

__all__ = ["DATA_FORMAT", "TRAINER_FORMAT", "DEFAULT_CAPTION", "AnimateDataset", "AnimateTrainConfig",
           "AnimateNetTrainer", "checkpoint_paths", "save_checkpoint", "latest_checkpoint", "contour_at"]

DATA_FORMAT = "portraittalk-animatenet-data/1"
TRAINER_FORMAT = "portraittalk-animatenet-trainer/1"
DEFAULT_CAPTION = "a photo of a person talking"
CLIPS_FILE, INDEX_FILE, EMBEDDINGS_FILE, CLIPS_DIR = "clips.jsonl", "index.jsonl", "embeddings.safetensors", "clips"
#: Clips whose landmarks :class:`AnimateDataset` keeps in memory (a 3 s clip at 25 fps: 430 KB).
LANDMARK_CACHE = 256
#: A resized contour pixel at or above this grey level is part of the outline (re-binarised after INTER_AREA).
CONTOUR_THRESHOLD = 64


# ------------------------------------------------------------------------------------------------ dataset
def contour_at(edges: np.ndarray, resolution: int) -> np.ndarray:
    """A stored contour guide (uint8 ``[S, S]``, 0/255) at ``resolution``: as it is when the size matches, else
    resized with INTER_AREA (downscaling) / INTER_LINEAR and re-binarised at :data:`CONTOUR_THRESHOLD`, so a thin
    outline stays a solid line of ~1 px (Contour Guide draws 1 px below 256 px, 3 px at 512)."""
    import cv2

    if edges.shape[:2] == (resolution, resolution):
        return edges
    interp = cv2.INTER_AREA if edges.shape[0] > resolution else cv2.INTER_LINEAR
    small = cv2.resize(edges, (int(resolution), int(resolution)), interpolation=interp)
    return np.where(small >= CONTOUR_THRESHOLD, 255, 0).astype(np.uint8)


class AnimateDataset:
    """A prepared AnimateNet dataset (module docstring): consecutive frame pairs with per-frame landmarks,
    contour guides, one Face Embed embedding per clip, captions and the clips' audio tracks.

    ``clips``: the clip entries (dicts of ``clips.jsonl``); ``entries``: the pairs (``index.jsonl``);
    ``embeddings`` float32 ``[n_clips, D]``; ``dim`` = D; ``backend``; ``size`` = S (side of the stored crops);
    :meth:`landmarks` (clip name) → :class:`~ptalk_models.landmarks.FaceLandmarks` of the clip's frames
    (normalised on the crop, read on first use). Per pair ``i``: :meth:`frame` / :meth:`previous` (float32 RGB
    ``[R, R, 3]`` in [0, 1]), :meth:`structure` (Draw Landmarks of frame t) and :meth:`identity` (contour of
    frame t−1), float32 ``[3, R, R]`` in [0, 1]; :meth:`embedding`, :meth:`caption`, :meth:`audio`.

    Raises :class:`DatasetError` naming the missing or bad file.
    """

    def __init__(self, root: str | os.PathLike):
        from .landmarks import FaceLandmarks

        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist; create it with "
                               "`python scripts/prepare_animatenet_data.py --src VIDEOS --out DIR`")
        paths = {name: self.root / name for name in (CLIPS_FILE, INDEX_FILE, EMBEDDINGS_FILE)}
        for p in paths.values():
            if not p.is_file():
                hint = (" (this looks like an IdentityNet dataset from prepare_identity_data)"
                        if (self.root / "frames").is_dir() else "")
                raise DatasetError(f"{self.root} is not a prepared AnimateNet dataset: {p.name} is missing{hint}; "
                                   "run `python scripts/prepare_animatenet_data.py`")
        clips = read_jsonl(paths[CLIPS_FILE], ("name", "frames", "contours", "landmarks", "embedding"),
                           "prepare_animatenet_data")
        self.clips = {c["name"]: c for c in clips}
        self.entries = read_jsonl(paths[INDEX_FILE], ("clip", "t", "t_prev", "embedding"), "prepare_animatenet_data")
        if not self.entries:
            raise DatasetError(f"{paths[INDEX_FILE]} lists no frame pairs (clips of one frame, or no face in two "
                               "consecutive frames)")
        self.meta, self.embeddings = read_embeddings(paths[EMBEDDINGS_FILE], DATA_FORMAT, "prepare_animatenet_data")
        self.dim = int(self.embeddings.shape[1])
        self.backend = embedding_backend(self.meta, self.dim)
        self.size = int(self.meta.get("size", 0)) or None
        for name, c in self.clips.items():
            row = int(c["embedding"])
            if not 0 <= row < self.embeddings.shape[0] or not torch.isfinite(self.embeddings[row]).all():
                raise DatasetError(f"clip {name}: embedding row {row} is missing or not finite in {EMBEDDINGS_FILE}")
            if len(c["contours"]) != len(c["frames"]) or len(c.get("present", c["frames"])) != len(c["frames"]):
                raise DatasetError(f"clip {name}: {len(c['frames'])} frames, {len(c['contours'])} contours and "
                                   f"{len(c.get('present', []))} face flags in {CLIPS_FILE} do not match")
        for n, e in enumerate(self.entries):
            c = self.clips.get(e["clip"])
            if c is None:
                raise DatasetError(f"{INDEX_FILE} line {n + 1}: unknown clip {e['clip']!r} (not in {CLIPS_FILE})")
            t, tp = int(e["t"]), int(e["t_prev"])
            if not (0 <= tp < len(c["frames"]) and 0 <= t < len(c["frames"])):
                raise DatasetError(f"{INDEX_FILE} line {n + 1}: frames {tp}, {t} outside clip {e['clip']} "
                                   f"({len(c['frames'])} frames)")
            present = c.get("present")
            if present is not None and not (present[t] and present[tp]):
                raise DatasetError(f"{INDEX_FILE} line {n + 1}: clip {e['clip']} frame {t} or {tp} has no face")
        self._landmarks: dict[str, FaceLandmarks] = {}  # loaded on first use, at most LANDMARK_CACHE clips
        missing = [p for c in self.clips.values() for p in c["frames"] + c["contours"] + [c["landmarks"]]
                   if not (self.root / p).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} frame/contour/landmark file(s) listed in {CLIPS_FILE} are missing, "
                               f"e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.entries)

    def landmarks(self, clip: str):
        """:class:`~ptalk_models.landmarks.FaceLandmarks` of a clip's frames (normalised on the crop, image size
        S x S), read from its ``landmarks.npz`` on first use (the last :data:`LANDMARK_CACHE` clips are kept)."""
        from .landmarks import NUM_LANDMARKS, FaceLandmarks

        lm = self._landmarks.get(clip)
        if lm is not None:
            return lm
        c = self.clips[clip]
        lp = self.root / c["landmarks"]
        try:
            with np.load(lp, allow_pickle=False) as z:
                pts, present = z["points"].astype(np.float32), z["present"].astype(bool)
                fps = float(z["fps"]) if "fps" in z else 0.0
        except (OSError, KeyError, ValueError) as e:
            raise DatasetError(f"clip {clip}: cannot read its landmarks {lp} ({e})") from None
        if pts.ndim != 3 or pts.shape[1:] != (NUM_LANDMARKS, 3) or len(pts) != len(c["frames"]) or \
                len(present) != len(pts):
            raise DatasetError(f"clip {clip}: {len(c['frames'])} frames but landmarks of shape {tuple(pts.shape)} "
                               f"({len(present)} face flags) in {lp.name}")
        side = int(c.get("size") or self.size or 512)
        if len(self._landmarks) >= LANDMARK_CACHE:
            self._landmarks.pop(next(iter(self._landmarks)))
        lm = self._landmarks[clip] = FaceLandmarks.from_points(pts, (side, side), fps, present)
        return lm

    def _clip(self, i: int) -> tuple[dict, int, int]:
        e = self.entries[i]
        return self.clips[e["clip"]], int(e["t"]), int(e["t_prev"])

    def caption(self, i: int) -> str:
        """Caption of pair ``i`` (its clip's; :data:`DEFAULT_CAPTION` when none)."""
        c = self.entries[i].get("caption") or self._clip(i)[0].get("caption")
        return c if isinstance(c, str) and c.strip() else DEFAULT_CAPTION

    @property
    def captions(self) -> list[str]:
        """The distinct captions, sorted."""
        return sorted({self.caption(i) for i in range(len(self))})

    def embedding(self, i: int) -> torch.Tensor:
        """float32 ``[D]``: the Face Embed embedding of pair ``i``'s clip."""
        return self.embeddings[int(self.entries[i]["embedding"])]

    def audio(self, i: int) -> Path | None:
        """The audio track of pair ``i``'s clip (a WAV in the dataset), or None when the clip had none."""
        a = self._clip(i)[0].get("audio")
        return self.root / a if a else None

    def frame(self, i: int, resolution: int | None = None) -> np.ndarray:
        """Frame t of pair ``i``: float32 RGB ``[R, R, 3]`` in [0, 1]."""
        c, t, _ = self._clip(i)
        return read_rgb(self.root / c["frames"][t], resolution).astype(np.float32) / 255.0

    def previous(self, i: int, resolution: int | None = None) -> np.ndarray:
        """Frame t−1 of pair ``i``: float32 RGB ``[R, R, 3]`` in [0, 1]."""
        c, _, tp = self._clip(i)
        return read_rgb(self.root / c["frames"][tp], resolution).astype(np.float32) / 255.0

    def structure(self, i: int, resolution: int) -> np.ndarray:
        """Structure condition of pair ``i``: frame t's landmarks drawn at ``resolution`` (Draw Landmarks,
        ControlNet style, as the Temporal Sampler draws them): float32 ``[3, R, R]`` in [0, 1]."""
        from .draw import draw_landmarks
        from .landmarks import FaceLandmarks

        c, t, _ = self._clip(i)
        lm = self.landmarks(c["name"])
        one = FaceLandmarks.from_points(lm.points[t:t + 1], (resolution, resolution), lm.fps, lm.present[t:t + 1])
        img = draw_landmarks(one, style="controlnet")[0]
        return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0

    def identity(self, i: int, resolution: int) -> np.ndarray:
        """Identity condition of pair ``i``: the head contour of frame t−1 (computed with its landmarks when the
        data was prepared) at ``resolution`` (:func:`contour_at`): float32 ``[3, R, R]`` in [0, 1]."""
        import cv2

        c, _, tp = self._clip(i)
        p = self.root / c["contours"][tp]
        edges = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if edges is None:
            raise DatasetError(f"cannot read contour {p}")
        e = contour_at(edges, resolution).astype(np.float32) / 255.0
        return np.ascontiguousarray(np.broadcast_to(e[None], (3,) + e.shape))


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class AnimateTrainConfig:
    """Hyper-parameters of AnimateNet training.

    ``stage``: 1 (no temporal attention) or 2 (everything, with IdentityNet). ``lr`` AdamW learning rate of
    AnimateNet (1e-5); ``identitynet_lr``: of the IdentityNet when stage 2 fine-tunes it (None = ``lr``);
    ``weight_decay`` (not applied to the three-way attention weights w1..w3), ``betas``, ``adam_eps``; ``batch``
    samples per optimiser step (32) by gradient accumulation over ``micro_batch``-sized passes; ``resolution``
    training image side in pixels (multiple of 8); ``max_grad_norm`` gradient clipping (0 = off); ``seed``.
    """

    stage: int = 1
    lr: float = 1e-5
    identitynet_lr: float | None = None
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    batch: int = 32
    micro_batch: int = 4
    resolution: int = 512
    max_grad_norm: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        check_optim_config(self)


#: ``predict(z_t, timesteps, context, control, face_tokens)`` → ε prediction like ``z_t``: the frozen UNet with
#: ``control`` (ComfyUI's ``{"output": [...], "middle": [...]}`` dict, or None = the plain UNet) and, when
#: ``face_tokens`` ``[b, N, 768]`` is not None, the IdentityNet patch fed with them. (ComfyUI adds control
#: residuals to the skip connections in place; when something inside the UNet's input blocks is trained too — a
#: trained IdentityNet — the next block must get a copy: :mod:`ptalk_harness.train_animatenet` adds an
#: ``input_block_patch_after_skip`` that clones.)
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict | None, torch.Tensor | None], torch.Tensor]


class AnimateNetTrainer(DiffusionTrainer):
    """Optimises an AnimateNet with the loss of Eq. 3 against the frozen UNet / VAE / text encoder.

    A :class:`~ptalk_models.training.DiffusionTrainer`: the optimiser step with gradient accumulation
    (:meth:`train_step`), sample order (:meth:`batch_indices`), fixed-batch evaluation (:meth:`evaluate`) and
    exact-resume state (:meth:`state_tensors` / :meth:`load_state_tensors`) are the base's; this class adds the
    loss of a micro-batch (:meth:`micro_batch_loss`), the parameters and the stage in the state.

    Args:
        net: the :class:`~ptalk_models.animatenet.AnimateNet` (moved to ``device``, fp32, train mode; its
            trainable parameters are those of ``config.stage``, :func:`~ptalk_models.animatenet.trainable_parameters`).
        dataset: :class:`AnimateDataset`.
        contexts: caption → frozen text tokens ``[L, 768]`` for every caption of the dataset.
        encode, predict: :data:`~ptalk_models.training.EncodeFn`, :data:`PredictFn`.
        alphas_cumprod: ᾱ ``[T]`` of the model's schedule.
        config: :class:`AnimateTrainConfig`.
        identitynet: stage 2: the IdentityNet whose patch ``predict`` installs (its face tokens are made here
            from the clip embeddings); None = no identity term.
        train_identitynet: also optimise the IdentityNet (AdamW group with ``config.identitynet_lr``).
        device, autocast_dtype: as :class:`~ptalk_models.training.DiffusionTrainer`.
    Parameter names in the trainer state: ``animatenet.<name>``, ``identitynet.<name>``.
    Raises ValueError for an IdentityNet in stage 1 or ``train_identitynet`` without one, and
    :class:`~ptalk_models.identitynet.IdentityNetFormatError` for an IdentityNet of another embedding width.
    """

    TRAINER_FORMAT = TRAINER_FORMAT
    STATE_FILE_KIND = "an AnimateNet trainer state file"
    PARAM_MISMATCH_HINT = "another AnimateNet architecture, stage or --train-identitynet setting"

    def __init__(self, net, dataset: AnimateDataset, contexts: dict[str, torch.Tensor], encode: EncodeFn,
                 predict: PredictFn, alphas_cumprod: torch.Tensor, config: AnimateTrainConfig,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                 identitynet=None, train_identitynet: bool = False):
        from .animatenet import trainable_parameters
        from .identitynet import check_embedding

        if config.stage == 1 and identitynet is not None:
            raise ValueError("IdentityNet is integrated in stage 2 (paper §III-B); stage 1 trains AnimateNet alone")
        if train_identitynet and identitynet is None:
            raise ValueError("train_identitynet needs an IdentityNet")
        if identitynet is not None:
            check_embedding(identitynet, dataset.dim)
        super().__init__(dataset, contexts, encode, predict, alphas_cumprod, config, device, autocast_dtype)
        self.net = net.to(device=self.device, dtype=torch.float32).train()
        trainable = {id(p) for p in trainable_parameters(self.net, config.stage)}
        named = [(n, p) for n, p in self.net.named_parameters() if id(p) in trainable]
        main = [(f"animatenet.{n}", p) for n, p in named if not n.endswith("attn2.weights")]
        mix = [(f"animatenet.{n}", p) for n, p in named if n.endswith("attn2.weights")]
        groups = [(main, float(config.lr), float(config.weight_decay)), (mix, float(config.lr), 0.0)]
        self.identitynet = identitynet
        self.train_identitynet = bool(train_identitynet)
        if identitynet is not None:
            identitynet.to(device=self.device, dtype=torch.float32)
            identitynet.train(self.train_identitynet).requires_grad_(self.train_identitynet)
            if self.train_identitynet:
                lr = float(config.identitynet_lr if config.identitynet_lr is not None else config.lr)
                groups.append(([(f"identitynet.{n}", p) for n, p in identitynet.named_parameters()], lr,
                               float(config.weight_decay)))
        self._set_optimizer([(g, {"lr": lr, "weight_decay": wd}) for g, lr, wd in groups if g])

    @property
    def use_temporal(self) -> bool:
        """Whether the temporal condition is given (stage 2)."""
        return self.config.stage == 2

    def trainable_named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(state name, parameter)`` of everything the optimiser updates, in the state's order."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return list(zip(self.param_names, params))

    # -- the loss
    def eps_prediction(self, indices: Sequence[int], generator: torch.Generator, control: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε prediction, the drawn noise ε) for the pairs ``indices``: frame t → frozen VAE latent z →
        z_t with a drawn timestep and noise → the frozen UNet with the caption's text tokens, AnimateNet's
        control residuals (``control=False``: without them — the plain UNet) and, in stage 2, the IdentityNet
        face term. Draw order from ``generator``: timesteps, then noise."""
        cfg, ds = self.config, self.dataset
        res = cfg.resolution
        frames = torch.from_numpy(np.stack([ds.frame(i, res) for i in indices]))
        b = frames.shape[0]
        t = sample_timesteps(b, generator, self.alphas_cumprod.shape[0])
        with torch.no_grad():
            z0 = self.encode(frames).to(self.device, torch.float32)
            temporal = None
            if self.use_temporal and control:
                prev = torch.from_numpy(np.stack([ds.previous(i, res) for i in indices]))
                temporal = self.encode(prev).to(self.device, torch.float32)
        noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(self.device)
        zt = add_noise(z0, noise, t, self.alphas_cumprod)
        tt = t.to(self.device, torch.float32)
        ctx = self._context([ds.caption(i) for i in indices])
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            face = None
            if self.identitynet is not None:
                emb = torch.stack([ds.embedding(i) for i in indices]).to(self.device)
                face = self.identitynet.face_tokens(emb)
            residuals = None
            if control:
                structure = torch.from_numpy(np.stack([ds.structure(i, res) for i in indices])).to(self.device)
                identity = torch.from_numpy(np.stack([ds.identity(i, res) for i in indices])).to(self.device)
                tokens = self.net.encode_conditions(structure, identity, temporal)
                residuals = self.net(zt, tt, tokens=tokens)
            eps = self.predict(zt, tt, ctx, residuals, face)
        return eps, noise

    def micro_batch_loss(self, indices: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Eq. 3 on one micro-batch (a graph to backpropagate through): MSE(ε, ε_θ) over all elements."""
        eps, noise = self.eps_prediction(indices, generator)
        return noise_prediction_loss(eps, noise)

    # -- state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The base's state layout (format :data:`TRAINER_FORMAT`) with the ``stage`` and ``train_identitynet``."""
        tensors, meta = super().state_tensors()
        meta["stage"] = str(self.config.stage)
        meta["train_identitynet"] = str(int(self.train_identitynet))
        return tensors, meta

    def _check_state_meta(self, meta: dict[str, str], name: str) -> None:
        """:class:`~ptalk_models.training.CheckpointError` for a state file of another stage (checked by
        :meth:`load_state_tensors` after the format, before the parameter set)."""
        if int(meta.get("stage", 0)) != self.config.stage:
            raise CheckpointError(f"{name} was saved by a stage-{meta.get('stage')} run; this is stage "
                                  f"{self.config.stage} (resume with the run's --stage)")


# ------------------------------------------------------------------------------------------- checkpoints
def checkpoint_paths(out_dir: str | os.PathLike, step: int) -> tuple[Path, Path, Path]:
    """(AnimateNet file, trainer state file, IdentityNet file) of step ``step`` in ``<out_dir>/checkpoints``
    (the IdentityNet file exists only when stage 2 fine-tunes it)."""
    d = Path(out_dir) / CHECKPOINTS_DIR
    s = f"{int(step):07d}"
    return (d / f"animatenet_step{s}.safetensors", d / f"trainer_step{s}.safetensors",
            d / f"identitynet_step{s}.safetensors")


def save_checkpoint(out_dir: str | os.PathLike, trainer: AnimateNetTrainer, args: dict | None = None
                    ) -> tuple[Path, Path]:
    """Write the AnimateNet (``save_animatenet``; metadata step, stage, seed, trainer, args, train_config), the
    IdentityNet when it is trained, and the trainer state of ``trainer.step`` to ``<out_dir>/checkpoints``
    (each atomically, the state last: a state file implies the others). Returns (AnimateNet path, state path)."""
    from .animatenet import save_animatenet
    from .identitynet import save_identitynet

    net_path, state_path, id_path = checkpoint_paths(out_dir, trainer.step)
    net_path.parent.mkdir(parents=True, exist_ok=True)
    args_json = json.dumps(args or {}, default=str)
    meta = {"step": trainer.step, "stage": trainer.config.stage, "seed": trainer.config.seed,
            "trainer": TRAINER_FORMAT, "args": args_json, "train_config": json.dumps(asdict(trainer.config))}
    save_animatenet(trainer.net, net_path, meta)
    if trainer.train_identitynet:
        save_identitynet(trainer.identitynet, id_path, meta)
    trainer.save_state(state_path, {"args": args_json, "animatenet": net_path.name})
    return net_path, state_path


def latest_checkpoint(out_dir: str | os.PathLike) -> tuple[int, Path, Path, Path] | None:
    """(step, AnimateNet file, trainer state file, IdentityNet file — may not exist) of the newest checkpoint in
    ``<out_dir>/checkpoints`` with both the AnimateNet and the state file, or None."""
    return newest_checkpoint(out_dir, checkpoint_paths)
