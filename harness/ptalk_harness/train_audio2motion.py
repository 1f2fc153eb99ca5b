"""Train the neural audio→motion VAE (``ptalk_models.audio2motion``, paper §III-B) on the clips prepared by
:mod:`.audio2motion_data`, seeded and resumable, on the CPU.

Data (:func:`load_split`): each clip's landmarks become lower-face offsets relative to its neutral mesh
(``ptalk_models.mouth_motion.clip_offsets``), resampled to the model's 25 Hz (frame ``t`` ↔ time
``(t + 0.5) / 25`` s, linear interpolation over the clip's own frame times; a frame is valid when both neighbours
have a face); the speech becomes mel power at 100 Hz (``ptalk_models.audio_features.mel_power``).

Batches (:class:`Batches`): ``batch`` windows of ``window`` frames, SPEAKER-balanced (a speaker uniformly, then a
clip in proportion to its length, then an offset), so GRID s1's 500+ clips do not swamp the other speakers.
Augmentation in the mel power domain: gain U(-20, +6) dB; with probability 0.2 the bands above 4 kHz removed
(8 kHz / telephone audio); with probability 1/2 white noise at U(-80, -35) dBFS (``white_noise_mel``).

Loss: reconstruction of the offsets (squared error in vertex space, divided by the data's total variance so
that predicting the mean scores 1) + the same on frame-to-frame velocities + ``beta`` × KL(q(z|motion,audio) ‖
N(0, I)) per latent element.

Checkpoints (``<out>/checkpoint.safetensors``, every ``--save-every`` steps and at the end) hold the model,
the optimiser moments, the step and both random generators, so a run resumed with the SAME arguments ends
bit-identical to an uninterrupted one (tested); ``--steps`` also sets the cosine learning-rate schedule, so resuming
with another ``--steps`` continues on a different schedule (a warning says so). The final model is
``<out>/audio2motion.safetensors`` (``ptalk_models.audio2motion.save_audio2motion``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from portraittalk.ptalk_models.audio_features import MEL_RATE, log_compress, mel_centres, mel_power, white_noise_mel
from portraittalk.ptalk_models.audio2motion import Audio2Motion, Audio2MotionConfig, save_audio2motion
from portraittalk.ptalk_models.mouth_motion import clip_offsets, face_axes
from portraittalk.ptalk_models.weights import read_safetensors, write_safetensors

from .audio2motion_data import DEFAULT_CACHE, load_clip

log = logging.getLogger("ptalk.train_audio2motion")

MOTION_RATE = 25.0
SUBNASALE = 2
LOWER_FACE_MARGIN_IOD = 0.05    # points lower than 0.05 IOD above the subnasale are "lower face"


NARROWBAND_P, NARROWBAND_HZ = 0.2, 4000.0
MEL_CENTRES_HZ = mel_centres()


class TrainError(Exception):
    """A run that cannot start (exit status 2)."""


# -------------------------------------------------------------------------------------------------- data
def resample_offsets(offsets: np.ndarray, present: np.ndarray, times: np.ndarray, rate: float = MOTION_RATE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Offsets ``[N, 478, 3]`` at the clip's frame times ``[N]`` (s, frame k shown from times[k]) → (``[T, 478, 3]``
    at ``rate``, valid bool ``[T]``), T = frames whose centre lies inside the clip."""
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / rate
    centres = times + 0.5 * dt
    T = int(np.floor((times[-1] + dt) * rate))
    tc = (np.arange(T) + 0.5) / rate
    j = np.clip(np.searchsorted(centres, tc) - 1, 0, len(times) - 2)
    w = np.clip((tc - centres[j]) / np.maximum(centres[j + 1] - centres[j], 1e-9), 0.0, 1.0)[:, None, None]
    out = (1 - w) * offsets[j] + w * offsets[j + 1]
    return out.astype(np.float32), present[j] & present[j + 1]


def lower_face_indices(neutral_px: np.ndarray) -> np.ndarray:
    """Landmarks of the lower face on a neutral mesh ``[478, 3]`` px: lower than ``LOWER_FACE_MARGIN_IOD`` above the
    subnasale (landmark 2) along the face's down axis -- lips, mouth corners, chin, jaw line and lower cheeks."""
    ua, ub, iod = face_axes(neutral_px)
    b = (neutral_px[:, :2] - neutral_px[SUBNASALE, :2]) @ ub / iod
    return np.flatnonzero(b > -LOWER_FACE_MARGIN_IOD)


def clip_example(path: Path, encoder=None) -> dict:
    """One cached clip → dict(name, speaker, split, offsets ``[T, 478, 3]``, valid ``[T]``, neutral ``[478, 3]`` px,
    audio mono 16 kHz) + its speech features: ``mel`` (``[F, 80]`` mel power at 100 Hz) without ``encoder``, else
    ``enc`` = ``encoder(audio)[0]`` (``[F, dim]`` audio-encoder features; see :mod:`.audio2motion_encoder`)."""
    d = load_clip(path)
    off, neutral = clip_offsets(d["points"], d["present"], tuple(d["size"]))
    off25, valid = resample_offsets(off, d["present"], d["times"])
    c = {"name": d["name"], "speaker": d["speaker"], "split": d["split"], "offsets": off25, "valid": valid,
         "neutral": neutral, "audio": d["audio"]}
    if encoder is None:
        c["mel"] = mel_power(d["audio"])
    else:
        c["enc"] = encoder(d["audio"])[0]
    return c


def window_features(c: dict, f0: int, f1: int, rng: np.random.Generator | None = None, noise_shape=None
                    ) -> np.ndarray:
    """Model input features ``[f1 - f0, dim]`` of clip ``c`` (zero-padded past its end): log-mel (with random
    gain and noise when ``rng`` is given) or the clip's audio-encoder features."""
    src = c["mel"] if "mel" in c else c["enc"]
    m = src[f0:f1]
    if len(m) < f1 - f0:
        m = np.pad(m, ((0, f1 - f0 - len(m)), (0, 0)))
    if "enc" in c:
        return m.astype(np.float32)
    if rng is not None:
        m = m * 10 ** (rng.uniform(-20, 6) / 10)
        if rng.random() < NARROWBAND_P:
            m = m * (MEL_CENTRES_HZ < NARROWBAND_HZ)          # telephone / 8 kHz audio: nothing above 4 kHz
        if rng.random() < 0.5:
            m = m + noise_shape * 10 ** (rng.uniform(-80, -35) / 10)
    return log_compress(m)


def load_split(cache: Path, split: str, limit: int | None = None, encoder=None) -> list[dict]:
    """:func:`clip_example` of every cached clip of ``split`` ("train" / "heldout"); clips whose face was found in
    fewer than half of the frames are left out."""
    out = []
    for p in sorted(Path(cache).glob("*.npz")):
        with np.load(p) as z:
            if str(z["split"]) != split or z["present"].mean() < 0.5:
                continue
        out.append(clip_example(p, encoder))
        if limit and len(out) >= limit:
            break
    if not out:
        raise TrainError(f"no {split} clips in {cache}: run `python -m ptalk_harness.audio2motion_data` first")
    return out


# ----------------------------------------------------------------------------------------------- batches
class Batches:
    """Speaker-balanced random windows with gain/noise augmentation (module docstring); ``rng`` is a numpy
    Generator whose state is part of the checkpoint."""

    def __init__(self, clips: list[dict], indices: np.ndarray, window: int, stride: int, seed: int):
        self.clips = [c for c in clips if len(c["offsets"]) >= window]
        self.indices, self.window, self.stride = indices, window, stride
        self.speakers = sorted({c["speaker"] for c in self.clips})
        self.by_speaker = {s: [i for i, c in enumerate(self.clips) if c["speaker"] == s] for s in self.speakers}
        self.rng = np.random.default_rng(seed)
        self.noise_shape = white_noise_mel(1.0)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features ``[n, window·stride, dim]``, offsets ``[n, window, K, 3]``, valid ``[n, window]``)."""
        W, s = self.window, self.stride
        feats, offs, valid = [], [], []
        for _ in range(n):
            spk = self.speakers[self.rng.integers(len(self.speakers))]
            ids = self.by_speaker[spk]
            lens = np.array([len(self.clips[i]["offsets"]) - W + 1 for i in ids], float)
            c = self.clips[ids[self.rng.choice(len(ids), p=lens / lens.sum())]]
            t0 = int(self.rng.integers(len(c["offsets"]) - W + 1))
            feats.append(window_features(c, t0 * s, (t0 + W) * s, self.rng, self.noise_shape))
            offs.append(c["offsets"][t0:t0 + W][:, self.indices])
            valid.append(c["valid"][t0:t0 + W])
        return (torch.from_numpy(np.stack(feats)).float(), torch.from_numpy(np.stack(offs)).float(),
                torch.from_numpy(np.stack(valid)))


# ------------------------------------------------------------------------------------------- statistics
def fit_statistics(model: Audio2Motion, clips: list[dict], indices: np.ndarray, seed: int) -> None:
    """Fill the model's normalisation buffers from the training clips: log-mel mean/std and the PCA of the
    lower-face offsets (``n_pc`` components of the valid frames, speakers weighted equally)."""
    rng = np.random.default_rng(seed)
    mel = np.concatenate([window_features(c, 0, len(c["mel"] if "mel" in c else c["enc"])) for c in clips])
    model.feat_mean.copy_(torch.from_numpy(mel.mean(0)))
    model.feat_std.copy_(torch.from_numpy(mel.std(0) + 1e-3))
    speakers = sorted({c["speaker"] for c in clips})
    rows = []
    for s in speakers:
        x = np.concatenate([c["offsets"][c["valid"]][:, indices].reshape(-1, 3 * len(indices))
                            for c in clips if c["speaker"] == s])
        rows.append(x[rng.choice(len(x), min(len(x), 4000), replace=False)])
    X = np.concatenate(rows).astype(np.float64)
    mean = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    k = model.config.n_pc
    scale = S[:k] / np.sqrt(len(X))
    model.pc_mean.copy_(torch.from_numpy(mean).float())
    model.pc_basis.copy_(torch.from_numpy(Vt[:k]).float())
    model.pc_scale.copy_(torch.from_numpy(scale).float())
    model.indices.copy_(torch.from_numpy(indices))
    model.explained_variance = float((S[:k] ** 2).sum() / (S ** 2).sum())


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Model + Adam + the two generators; :meth:`train_step`, :meth:`state` / :meth:`load_state` for exact resume."""

    def __init__(self, model: Audio2Motion, batches: Batches, lr: float, beta: float, steps: int, batch: int,
                 seed: int):
        self.model, self.batches, self.lr, self.beta, self.steps, self.batch = model, batches, lr, beta, steps, batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        self.gen = torch.Generator().manual_seed(seed)
        self.step = 0
        w = (model.pc_scale ** 2)
        self.var_weight = w / w.sum()

    def loss(self, feats, offs, valid, generator=None, sample=True):
        """(total, parts dict) of a batch; ``sample`` False uses the posterior mean (evaluation)."""
        m = self.model
        target = m.to_coeffs(offs)
        h = m.audio_context(feats, offs.shape[1])
        mu, logvar = m.encode(h, target)
        z = mu + torch.randn(mu.shape, generator=generator) * torch.exp(0.5 * logvar) if sample else mu
        pred = m.decode(h, z)
        v = valid.float()[..., None]
        err = (pred - target) ** 2 * self.var_weight
        rec = (err * v).sum() / v.sum().clamp(min=1)
        vv = v[:, 1:] * v[:, :-1]
        derr = ((pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])) ** 2 * self.var_weight
        vel = (derr * vv).sum() / vv.sum().clamp(min=1) * 4.0
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()
        return rec + vel + self.beta * kl, {"rec": float(rec.detach()), "vel": float(vel.detach()),
                                             "kl": float(kl.detach())}

    def train_step(self) -> dict:
        self.model.train()
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, self.step / max(1, self.steps))))
        for g in self.opt.param_groups:
            g["lr"] = lr
        feats, offs, valid = self.batches.sample(self.batch)
        total, parts = self.loss(feats, offs, valid, self.gen)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return {"loss": float(total.detach()), **parts, "lr": lr}

    def state(self) -> tuple[dict, dict]:
        t = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                t[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        t["gen"] = self.gen.get_state()
        meta = {"step": str(self.step), "rng": json.dumps(self.batches.rng.bit_generator.state),
                "config": json.dumps(asdict(self.model.config))}
        return t, meta

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        sd = self.opt.state_dict()
        for i in range(len(sd["param_groups"][0]["params"])):
            if f"opt.{i}.step" in tensors:
                sd["state"][i] = {k: tensors[f"opt.{i}.{k}"] for k in ("step", "exp_avg", "exp_avg_sq")}
        self.opt.load_state_dict(sd)
        self.gen.set_state(tensors["gen"])
        self.step = int(meta["step"])
        self.batches.rng.bit_generator.state = json.loads(meta["rng"])


@torch.no_grad()
def heldout_loss(trainer: Trainer, clips: list[dict], window: int) -> float:
    """Reconstruction loss (no augmentation, z = prior mean 0: what generation sees) over every full window of
    the held-out clips."""
    m = trainer.model.eval()
    s = m.config.stride
    tot, n = 0.0, 0
    for c in clips:
        T = len(c["offsets"])
        for t0 in range(0, max(1, T - window + 1), window):
            W = min(window, T)
            feats = torch.from_numpy(window_features(c, t0 * s, (t0 + W) * s))[None]
            offs = torch.from_numpy(c["offsets"][t0:t0 + W][:, trainer.batches.indices]).float()[None]
            target = m.to_coeffs(offs)
            h = m.audio_context(feats, W)
            z = torch.zeros((1, m.config.latent, int(np.ceil(W / m.config.latent_stride))))
            pred = m.decode(h, z)
            v = torch.from_numpy(c["valid"][t0:t0 + W]).float()[None, :, None]
            tot += float(((pred - target) ** 2 * trainer.var_weight * v).sum() / v.sum().clamp(min=1))
            n += 1
    return tot / max(n, 1)


# ------------------------------------------------------------------------------------------------- main
def build(args) -> tuple[Trainer, list[dict]]:
    torch.manual_seed(args.seed)
    encoder = None
    spec = {"feature_kind": "log-mel", "feature_dim": 80, "feature_rate": MEL_RATE}
    if args.audio_encoder:
        from .audio2motion_encoder import load_encoder

        try:
            encoder = load_encoder(args.audio_encoder)
        except (OSError, ValueError) as e:
            raise TrainError(f"--audio-encoder: {e}") from None
        spec = {"feature_kind": "audio-encoder", "feature_dim": encoder.dim, "feature_rate": encoder.rate}
    train = load_split(args.cache, "train", args.limit, encoder)
    heldout = load_split(args.cache, "heldout", encoder=encoder) if args.heldout else []
    first = next(c for c in train if c["speaker"] == "grid_s1") if any(c["speaker"] == "grid_s1" for c in train) else train[0]
    indices = lower_face_indices(first["neutral"])
    cfg = Audio2MotionConfig(n_points=len(indices), n_pc=args.n_pc, channels=args.channels,
                             motion_rate=MOTION_RATE, **spec)
    model = Audio2Motion(cfg)
    fit_statistics(model, train, indices, args.seed)
    batches = Batches(train, indices, args.window, cfg.stride, args.seed)
    log.info("%d train clips (%d speakers: %s), %d held-out clips; %d lower-face points, %d PCs explain %.1f %%; "
             "%d parameters", len(train), len(batches.speakers), ", ".join(batches.speakers), len(heldout),
             len(indices), cfg.n_pc, 100 * model.explained_variance, sum(p.numel() for p in model.parameters()))
    return Trainer(model, batches, args.lr, args.beta, args.steps, args.batch, args.seed), heldout


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists() and not args.resume:
        raise TrainError(f"{ckpt} exists: pass --resume to continue that run or choose another --out")
    trainer, heldout = build(args)
    if args.resume:
        if not ckpt.exists():
            raise TrainError(f"--resume: no {ckpt}")
        tensors, meta = read_safetensors(ckpt, TrainError)
        trainer.load_state(tensors, meta)
        log.info("resumed at step %d", trainer.step)
        saved = json.loads(meta.get("args", "{}"))
        changed = {k: (saved[k], v) for k, v in _run_args(args).items() if k in saved and saved[k] != v}
        if changed:
            log.warning("resuming with other settings than the saved run (the result will not equal an "
                        "uninterrupted run): %s", ", ".join(f"{k} {a} → {b}" for k, (a, b) in changed.items()))
    history = []
    t_start = time.perf_counter()
    with open(out / "train_log.jsonl", "a", encoding="utf-8") as logf:
        while trainer.step < args.steps:
            rec = trainer.train_step()
            rec["step"] = trainer.step
            if trainer.step % args.log_every == 0 or trainer.step == args.steps:
                if heldout and (trainer.step % args.save_every == 0 or trainer.step == args.steps):
                    rec["heldout"] = heldout_loss(trainer, heldout, args.window)
                rec["elapsed_s"] = round(time.perf_counter() - t_start, 1)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info("step %d %s", trainer.step, {k: round(v, 5) if isinstance(v, float) else v for k, v in rec.items()})
            history.append(rec["loss"])
            if trainer.step % args.save_every == 0 or trainer.step == args.steps:
                _save_ckpt(trainer, ckpt, args)
    final = out / "audio2motion.safetensors"
    save_audio2motion(trainer.model, final, {"trained_steps": trainer.step, "seed": args.seed,
                                             "speakers": ",".join(trainer.batches.speakers)})
    return {"step": trainer.step, "final": str(final), "losses_first_last": [history[:1], history[-1:]],
            "seconds": round(time.perf_counter() - t_start, 1)}


def _run_args(args) -> dict:
    """The options that shape a run's result (compared on ``--resume``)."""
    return {k: getattr(args, k) for k in ("steps", "batch", "window", "lr", "beta", "n_pc", "channels", "seed", "limit")}


def _save_ckpt(trainer: Trainer, path: Path, args=None) -> None:
    tensors, meta = trainer.state()
    if args is not None:
        meta["args"] = json.dumps(_run_args(args))
    write_safetensors(tensors, path, meta)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_audio2motion", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="prepared clips (ptalk_harness.audio2motion_data)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, final model)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--window", type=int, default=64, help="motion frames per training window (25 Hz)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=0.02, help="KL weight")
    p.add_argument("--n-pc", type=int, default=24)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training clips (tests)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-heldout", dest="heldout", action="store_false", help="skip the held-out loss")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: fastest per core when other jobs share the machine)")
    p.add_argument("--audio-encoder", type=Path, default=None,
                   help="train on ComfyUI audio-encoder features (a wav2vec2/whisper file of models/audio_encoders) "
                        "instead of log-mel; the model then needs that encoder's AUDIO_ENCODER_OUTPUT at run time")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        summary = run(args)
    except TrainError as e:
        print(f"train_audio2motion: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
