#!/usr/bin/env python3
"""IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1) on a user's SD1.5 checkpoint, headless.

    python -m scripts.train_identitynet --data DATA --checkpoint SD15.safetensors --out RUN
        [--init IDENTITYNET.safetensors | ip-adapter-faceid_sd15.bin] [--steps 1000] [--lr 5e-6] [--batch 32]
        [--micro-batch 4] [--resolution 512] [--mask-area 0.05 0.25] [--mask-shapes 3] [--noise-std 0.5]
        [--face-dropout 0.05] [--precision auto|fp32|bf16] [--save-every 500] [--eval-samples 8]
        [--eval-every 0] [--resume] [--seed 0] [--device auto|cpu|cuda] [--lora-rank 0] [--lora-alpha R]
        [--lora-lr LR]

``DATA`` is what ``python -m scripts.prepare_identity_data`` writes (face crops, Face Embed embeddings,
captions). The real ComfyUI is booted in this process (``scripts/comfy_headless.py``, no server) with this
pack loaded; the checkpoint is loaded by ComfyUI itself (``comfy.sd.load_checkpoint_guess_config``: MODEL,
CLIP, VAE). Then:

* IdentityNet: a new one (face projection of the dataset's embedding width -- 128 dlib / 512 insightface --
  ``--num-tokens`` tokens, face K/V of every UNet cross-attention layer initialised from that layer's text
  K/V, IP-Adapter's initialisation), or ``--init`` weights (our safetensors, or IP-Adapter-FaceID SD1.5; its
  projection must take the dataset's embedding width). It is installed with the pack's own
  ``apply_identitynet`` (attn2 replace patches: decoupled cross-attention);
* captions → frozen CLIP text tokens, computed once;
* each step: ``--batch`` samples in ``--micro-batch`` chunks (gradient accumulation); per sample random
  rectangles/ellipses (``--mask-area`` fraction) of the face crop get Gaussian noise (``--noise-std``, pixel
  units) BEFORE the frozen VAE encodes it (``latent_format.process_in`` scaling); a DDPM timestep and noise
  are drawn with the model's own schedule (``model_sampling.sigmas`` → ᾱ); the frozen UNet with the
  trainable IdentityNet predicts ε (a direct ``diffusion_model(...)`` call, each row with its own face
  tokens via ``with_row_tokens``; ``--face-dropout`` of the samples get zero face tokens, i.e. no face term,
  as a negative at inference, so CFG can contrast identity); loss = MSE(ε, ε̂) (Eq. 1); AdamW (``--lr``
  5e-6, §IV-B);
* bf16 autocast on CUDA (``--precision auto``), fp32 on CPU; UNet, CLIP and VAE are frozen (requires_grad
  False); only the IdentityNet (projection + face K/V) is optimised -- plus, with ``--lora-rank R`` (off by
  default; not part of the paper's IdentityNet stage), a rank-R LoRA on the UNet's attention projections,
  saved as a ComfyUI LoRA file (``unet_lora.safetensors``; load it with LoraLoader next to the IdentityNet).

Output in ``RUN``: ``checkpoints/identitynet_step<N>.safetensors`` (loadable by the IdentityNet Loader node:
copy it to ComfyUI/models/portraittalk) + ``checkpoints/trainer_step<N>.safetensors`` (AdamW state, step,
random-generator states) every ``--save-every`` steps and at the end, ``identitynet.safetensors`` (the final
net), ``train_log.jsonl`` (one line per step: loss, seconds; eval lines). ``--resume`` continues from the
newest checkpoint in ``RUN`` and reproduces an uninterrupted run exactly (same settings and device).

Exit status: 0 done; 1 training failed; 2 bad arguments or inputs (missing files, wrong dataset, an
IdentityNet for another UNet or embedding width, ``RUN`` already holding checkpoints without ``--resume``).

Not done here: dropout of the text condition (the captions are always given).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

import comfy_headless as ch  # noqa: E402  (top-level name: the same module object the tests and run_workflow use)

log = logging.getLogger("ptalk.train_identitynet")


class TrainError(Exception):
    """A failure with a message for the user; ``code`` is the exit status (2 = bad arguments/inputs)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------- ComfyUI side
def pack_modules(device: str = "auto"):
    """Boot ComfyUI headless with this pack and return ``(comfy_adapter, identitynet, identity_training)``
    -- the modules of the pack as ComfyUI loaded it. ``device="cpu"`` on a CUDA machine sets ComfyUI's
    ``--cpu`` first (only possible before ComfyUI's model management is imported)."""
    ch.prepare()
    if device == "cpu" and "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    st = ch.boot(load_pack=True)
    pkg = st.pack_module
    return (importlib.import_module(f"{pkg}.nodes.comfy_adapter"),
            importlib.import_module(f"{pkg}.ptalk_models.identitynet"),
            importlib.import_module(f"{pkg}.ptalk_models.identity_training"))


class SD15:
    """A ComfyUI SD1.5 checkpoint loaded for training: ``model`` (ModelPatcher), ``clip``, ``vae``, the frozen
    UNet ``diffusion_model`` on ``device`` (fp32 weights; bf16 autocast does the low-precision compute), and
    a cache of text contexts (caption → ``[77·k, 768]``)."""

    def __init__(self, path: Path, device):
        import comfy.sd
        import torch

        self.path, self.device = Path(path), torch.device(device)
        try:
            out = comfy.sd.load_checkpoint_guess_config(str(self.path), output_vae=True, output_clip=True,
                                                        model_options={"dtype": torch.float32})
        except RuntimeError as e:
            raise TrainError(f"--checkpoint {self.path.name}: ComfyUI could not load it as a model ({e})") from None
        self.model, self.clip, self.vae = out[:3]
        if self.model is None or self.clip is None or self.vae is None:
            raise TrainError(f"--checkpoint {self.path.name} lacks a UNet, text encoder or VAE; IdentityNet training "
                             "needs a full SD1.5 checkpoint")
        self.dm = self.model.model.diffusion_model
        self.dm.requires_grad_(False).eval()
        for m in (getattr(self.clip, "cond_stage_model", None), getattr(self.vae, "first_stage_model", None)):
            if m is not None:
                m.requires_grad_(False).eval()
        self._contexts: dict[str, "torch.Tensor"] = {}
        self._placed = False

    def text_context(self, caption: str):
        """Frozen CLIP tokens ``[L, 768]`` (float32, CPU) of a caption (ComfyUI's own tokenizer/encoder)."""
        import torch

        c = self._contexts.get(caption)
        if c is None:
            with torch.no_grad():
                c = self.clip.encode_from_tokens(self.clip.tokenize(caption))[0].float().cpu()
            self._contexts[caption] = c
        return c

    def place(self):
        """Free ComfyUI's loaded models (the text encoder) and put the frozen UNet on the training device."""
        import comfy.model_management as mm

        if not self._placed:
            mm.unload_all_models()
            mm.soft_empty_cache()
            self.dm.to(self.device)
            self._placed = True

    def encode(self, frames):
        """float32 ``[b, H, W, 3]`` in [0, 1] → scaled latents ``[b, 4, H/8, W/8]`` on the device (frozen VAE,
        then ``latent_format.process_in``)."""
        import torch

        with torch.no_grad():
            z = self.vae.encode(frames)
            return self.model.model.process_latent_in(z.to(self.device, torch.float32))

    def text_kv(self, layers):
        """The UNet's text ``(to_k.weight, to_v.weight)`` of each cross-attention layer in ``layers`` (the
        order of ``cross_attention_layers``)."""
        out = []
        for (name, block_id, t), width, _ in layers:
            block = self.dm.middle_block if name == "middle" else getattr(self.dm, f"{name}_blocks")[block_id]
            tbs = [tb for m in block for tb in getattr(m, "transformer_blocks", ())]
            attn2 = tbs[t].attn2
            if attn2.to_k.out_features != width:
                raise TrainError(f"cross-attention layer {(name, block_id, t)}: width {attn2.to_k.out_features} "
                                 f"≠ {width}", code=1)
            out.append((attn2.to_k.weight.detach().float().cpu(), attn2.to_v.weight.detach().float().cpu()))
        return out


_LOADED: dict = {}


def load_sd15(path, device) -> SD15:
    """:class:`SD15` of ``path`` on ``device``, cached per (path, mtime, device) within the process (the
    frozen weights are never modified, so repeated runs in one process share them)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise TrainError(f"--checkpoint {path} does not exist")
    key = (str(p), p.stat().st_mtime_ns, str(device))
    sd = _LOADED.get(key)
    if sd is None:
        _LOADED.clear()
        sd = _LOADED[key] = SD15(p, device)
    return sd


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m scripts.train_identitynet",
                                description="IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1).")
    p.add_argument("--data", required=True, help="dataset folder from scripts.prepare_identity_data")
    p.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint (.safetensors/.ckpt) with UNet, CLIP, VAE")
    p.add_argument("--out", required=True, help="run folder (checkpoints/, identitynet.safetensors, train_log.jsonl)")
    p.add_argument("--init", help="start from these IdentityNet weights (ours, or IP-Adapter-FaceID SD1.5 "
                                  ".bin/.safetensors) instead of a new net")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps in total (1000)")
    p.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate (5e-6, paper §IV-B)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (0.01)")
    p.add_argument("--batch", type=int, default=32, help="samples per optimiser step (32, paper §IV-B)")
    p.add_argument("--micro-batch", type=int, default=4, help="samples per forward/backward pass (4)")
    p.add_argument("--resolution", type=int, default=512, help="training image side in pixels, multiple of 8 (512)")
    p.add_argument("--mask-area", type=float, nargs=2, default=(0.05, 0.25), metavar=("LO", "HI"),
                   help="fraction of each image corrupted, drawn uniformly in [LO, HI] (0.05 0.25)")
    p.add_argument("--mask-shapes", type=int, default=3, help="most rectangles/ellipses per mask (3)")
    p.add_argument("--noise-std", type=float, default=0.5, help="corruption noise σ in [0,1] pixel units (0.5)")
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="gradient clipping norm (0 = off)")
    p.add_argument("--face-dropout", type=float, default=0.05,
                   help="share of samples trained with zero face tokens, for CFG on identity (0.05)")
    p.add_argument("--num-tokens", type=int, default=4, help="face tokens of a new IdentityNet (4)")
    p.add_argument("--hidden", type=int, default=1024, help="projection hidden width of a new IdentityNet (1024)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on CUDA (if supported), fp32 on CPU")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-samples", type=int, default=8,
                   help="size of the fixed evaluation batch (frames evenly spaced over the dataset, fixed masks, "
                        "noise and timesteps; 0 = no evaluation)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N steps (0: only before the first and after the last step)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, data order, masks, noise, timesteps")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also train a LoRA of this rank on the UNet attention projections (0 = off)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1)")
    p.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: --lr)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step lines")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.save_every < 1:
        p.error("--save-every must be >= 1")
    if a.lora_rank < 0:
        p.error("--lora-rank must be >= 0")
    return a


def _device_and_precision(args):
    import torch

    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    prec = args.precision
    if prec == "auto":
        prec = "bf16" if dev == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if prec == "bf16" and dev != "cuda":
        raise TrainError("--precision bf16 is bf16 autocast on CUDA; use fp32 on the CPU")
    return torch.device(dev), prec


def train(args) -> dict:
    """Run training as parsed by the CLI (``argparse.Namespace``). Returns a summary dict: ``step`` (steps
    done in total), ``start_step``, ``losses`` (per step of this run), ``eval`` (list of ``{step, loss}``),
    ``seconds_per_step``, ``samples_per_second`` (optimiser steps only, without evaluation and checkpoint
    writing), ``identitynet`` (final file), ``checkpoints`` (written),
    ``net`` (the trained IdentityNet module), ``device``, ``precision``, ``unet_lora`` (final LoRA file or
    None), ``lora`` (the :class:`UNetLoRA` or None; detached from the UNet on return).
    Raises :class:`TrainError`."""
    import torch

    device, precision = _device_and_precision(args)
    adapter, idn, T = pack_modules(device.type)
    out = Path(args.out).expanduser()
    try:
        data = T.IdentityDataset(args.data)
    except T.DatasetError as e:
        raise TrainError(str(e)) from None
    found = T.latest_checkpoint(out)
    if args.resume and found is None:
        raise TrainError(f"--resume: {out / T.CHECKPOINTS_DIR} holds no checkpoint to resume from")
    if not args.resume and found is not None:
        raise TrainError(f"{out} already holds checkpoints (newest: step {found[0]}); pass --resume to continue "
                         "that run or choose another --out")
    if args.init and args.resume:
        log.warning("--init is ignored with --resume (the run's own checkpoint is loaded)")
    config = T.TrainConfig(lr=args.lr, weight_decay=args.weight_decay, batch=args.batch,
                           micro_batch=min(args.micro_batch, args.batch), resolution=args.resolution,
                           mask_area=tuple(args.mask_area), mask_shapes=args.mask_shapes, noise_std=args.noise_std,
                           max_grad_norm=args.max_grad_norm, seed=args.seed,
                           face_dropout=args.face_dropout)
    try:
        T.random_region_mask(1, 8, 8, torch.Generator().manual_seed(0), config.mask_area, config.mask_shapes)
    except ValueError as e:
        raise TrainError(f"--mask-area/--mask-shapes: {e}") from None

    t_load = time.perf_counter()
    sd = load_sd15(args.checkpoint, device)
    layers = adapter.cross_attention_layers(sd.model)
    if not layers:
        raise TrainError(f"--checkpoint {Path(args.checkpoint).name}: the UNet has no cross-attention layers "
                         "(not SD1.5)")
    widths, token_dim = [w for _, w, _ in layers], layers[0][2]

    if found is not None:
        step0, net_path, state_path = found
        net = _load_net(idn, net_path, widths, token_dim)
    elif args.init:
        net = _load_net(idn, Path(args.init).expanduser(), widths, token_dim)
    else:
        cfg = idn.IdentityNetConfig(kind="faceid", id_dim=data.dim, hidden=args.hidden, token_dim=token_dim,
                                    num_tokens=args.num_tokens, layer_dims=widths, embed_backend=data.backend)
        net = idn.new_identitynet(cfg, seed=args.seed, text_kv=sd.text_kv(layers))
    contexts = {c: sd.text_context(c) for c in data.captions}
    sd.place()
    patched = adapter.apply_identitynet(sd.model, net, strength=1.0, node="train_identitynet")
    base_opts = patched.model_options.get("transformer_options", {})
    dm = sd.dm

    def predict(zt, t, ctx, tokens):
        return dm(zt, t, context=ctx, transformer_options=adapter.with_row_tokens(base_opts, tokens))

    sigmas = sd.model.get_model_object("model_sampling").sigmas
    lora = None
    if args.lora_rank:
        lora = T.UNetLoRA({n: m for n, m in dm.named_modules()
                           if T.LORA_TARGETS.search(n) and isinstance(m, torch.nn.Linear)},
                          args.lora_rank, args.lora_alpha, seed=args.seed)
        if found is not None:
            lpath = T.lora_checkpoint_path(out, found[0])
            if not lpath.is_file():
                raise TrainError(f"--resume with --lora-rank {args.lora_rank}: {lpath.name} is missing (was the run "
                                 "started without --lora-rank?)")
            try:
                lora.load_kohya_state_dict(T.read_lora(lpath), lpath.name)
            except T.CheckpointError as e:
                raise TrainError(str(e)) from None
    try:
        tuner = T.MaskedFineTuner(net, data, contexts, sd.encode, predict, T.alphas_cumprod_from_sigmas(sigmas),
                                  config, device=device,
                                  autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
                                  lora=lora, lora_lr=args.lora_lr)
    except T.DatasetError as e:
        raise TrainError(str(e)) from None
    try:
        return _run(args, T, idn, tuner, data, contexts, layers, net, out, config, precision, device, found,
                    state_path if found is not None else None, t_load)
    finally:
        if lora is not None:
            lora.detach()  # the cached UNet computes exactly what it did before


def _run(args, T, idn, tuner, data, contexts, layers, net, out, config, precision, device, found, state_path,
         t_load) -> dict:
    """The loop of :func:`train` (resume, evaluation, logging, checkpoints, final files)."""
    import numpy as np

    run_args = {k: v for k, v in vars(args).items()}
    run_args.update(precision=precision, device=str(device))
    if found is not None:
        tensors, meta = T.read_trainer_state(state_path)
        try:
            tuner.load_state_tensors(tensors, meta, state_path.name)
        except T.CheckpointError as e:
            raise TrainError(str(e)) from None
        saved = json.loads(meta.get("config", "{}"))
        diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(asdict(config))).items()
                if k in saved and saved[k] != v}
        if diff:
            log.warning("resuming with settings that differ from the saved run (the result will not equal an "
                        "uninterrupted run): %s", ", ".join(f"{k} {a} → {b}" for k, (a, b) in diff.items()))
        print(f"resumed {state_path.name} at step {tuner.step}", flush=True)
    t_load = time.perf_counter() - t_load
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in net.parameters())
    if tuner.lora is not None:
        n_lora = sum(p.numel() for p in tuner.lora.parameters())
        print(f"UNet LoRA: rank {tuner.lora.rank}, alpha {tuner.lora.alpha:g}, {len(tuner.lora.modules_by_key)} "
              f"attention projections, {n_lora / 1e6:.2f} M trainable parameters", flush=True)
    print(f"IdentityNet {net.config.kind}: {n_params / 1e6:.2f} M trainable parameters, {len(layers)} cross-attention "
          f"layers; dataset {len(data)} frames ({data.backend} {data.dim}-D, {len(contexts)} caption(s)); "
          f"device {device}, precision {precision}; batch {config.batch} = {math.ceil(config.batch / config.micro_batch)}"
          f" x {config.micro_batch}; setup {t_load:.1f} s", flush=True)

    k = min(max(args.eval_samples, 0), len(data))
    eval_idx = sorted({int(round(x)) for x in np.linspace(0, len(data) - 1, k)}) if k else []
    evals, losses, written, step_seconds = [], [], [], []
    log_f = open(out / "train_log.jsonl", "a", encoding="utf-8")

    def evaluate():
        if eval_idx:
            v = tuner.evaluate(eval_idx, seed=args.seed + 99991)
            evals.append({"step": tuner.step, "loss": v})
            log_f.write(json.dumps({"step": tuner.step, "eval_loss": v}) + "\n")
            log_f.flush()
            print(f"eval step {tuner.step}: fixed-batch loss {v:.6f} ({len(eval_idx)} samples)", flush=True)

    start = tuner.step
    try:
        if tuner.step >= args.steps:
            print(f"already at step {tuner.step} >= --steps {args.steps}; nothing to train", flush=True)
        else:
            evaluate()
        while tuner.step < args.steps:
            t0 = time.perf_counter()
            loss = tuner.train_step()
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise TrainError(f"loss became {loss} at step {tuner.step}; lower --lr", code=1)
            losses.append(loss)
            step_seconds.append(dt)
            log_f.write(json.dumps({"step": tuner.step, "loss": loss, "seconds": round(dt, 4)}) + "\n")
            log_f.flush()
            if not args.quiet:
                print(f"step {tuner.step}/{args.steps}  loss {loss:.6f}  {dt:.2f} s  "
                      f"{config.batch / dt:.2f} samples/s", flush=True)
            if args.eval_every and tuner.step % args.eval_every == 0 and tuner.step < args.steps:
                evaluate()
            if tuner.step % args.save_every == 0 or tuner.step == args.steps:
                written.append(T.save_checkpoint(out, tuner, run_args))
        if losses:
            evaluate()
    finally:
        log_f.close()
    final = out / "identitynet.safetensors"
    final_meta = {"step": tuner.step, "seed": config.seed, "trainer": T.TRAINER_FORMAT,
                  "args": json.dumps(run_args, default=str)}
    idn.save_identitynet(tuner.net, final, final_meta)
    final_lora = None
    if tuner.lora is not None:
        final_lora = out / "unet_lora.safetensors"
        T.save_lora(tuner.lora, final_lora, final_meta)
    steps_run, train_s = len(losses), sum(step_seconds)
    summary = {"step": tuner.step, "start_step": start, "losses": losses, "eval": evals,
               "seconds_per_step": train_s / steps_run if steps_run else None,
               "samples_per_second": steps_run * config.batch / train_s if steps_run and train_s > 0 else None,
               "identitynet": str(final), "checkpoints": [str(a) for a, _ in written],
               "device": str(device), "precision": precision, "net": tuner.net,
               "unet_lora": str(final_lora) if final_lora else None, "lora": tuner.lora}
    print(f"done: step {tuner.step}; {steps_run} step(s) in this run"
          + (f", {summary['seconds_per_step']:.2f} s/step, {summary['samples_per_second']:.2f} samples/s"
             if steps_run else "") + f"; IdentityNet → {final}", flush=True)
    return summary


def _load_net(idn, path: Path, widths, token_dim):
    try:
        net = idn.load_identitynet(path)
        net.check_layers(widths, token_dim)
    except idn.IdentityNetFormatError as e:
        raise TrainError(f"IdentityNet {path}: {e}") from None
    if net.ignored_keys:
        log.warning("%s: %d keys not used by IdentityNet (e.g. the FaceID LoRA: %s); training without them",
                    path.name, len(net.ignored_keys), net.ignored_keys[0])
    return net


def main(argv=None) -> int:
    args = _parse(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(args)
    except TrainError as e:
        print(f"train_identitynet: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("train_identitynet: interrupted; resume from the last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
