"""IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1) on a user's SD1.5 checkpoint, headless: the
library behind ``scripts/train_identitynet.py``.

    python scripts/train_identitynet.py --data DATA --checkpoint SD15.safetensors --out RUN
        [--init IDENTITYNET.safetensors | ip-adapter-faceid_sd15.bin] [--steps 1000] [--lr 5e-6] [--batch 32]
        [--micro-batch 4] [--resolution 512] [--mask-area 0.05 0.25] [--mask-shapes 3] [--noise-std 0.5]
        [--face-dropout 0.05] [--precision auto|fp32|bf16] [--save-every 500] [--eval-samples 8]
        [--eval-every 0] [--resume] [--seed 0] [--device auto|cpu|cuda] [--lora-rank 0] [--lora-alpha R]
        [--lora-lr LR]

``DATA`` is what ``python scripts/prepare_identity_data.py`` writes (face crops, Face Embed embeddings,
captions). The real ComfyUI is booted in this process (:func:`ptalk_harness.boot`, no server) with this
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
import json
import logging
import time
from pathlib import Path

from portraittalk.ptalk_models import identity_training as T
from portraittalk.ptalk_models import identitynet as idn
from portraittalk.ptalk_models.training import CheckpointError, DatasetError, alphas_cumprod_from_sigmas

from . import train_loop
from . import training_cli as cli
from .sd15 import load_sd15
from .training_cli import TrainError

log = logging.getLogger("ptalk.train_identitynet")


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(prog="scripts/train_identitynet.py",
                                description="IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1).")
    cli.add_io_args(p, "dataset folder from scripts/prepare_identity_data.py",
                    "run folder (checkpoints/, identitynet.safetensors, train_log.jsonl)")
    p.add_argument("--init", help="start from these IdentityNet weights (ours, or IP-Adapter-FaceID SD1.5 "
                                  ".bin/.safetensors) instead of a new net")
    cli.add_optim_args(p, 5e-6, "AdamW learning rate (5e-6, paper §IV-B)", "AdamW weight decay (0.01)", "samples",
                       batch_source=", paper §IV-B")
    p.add_argument("--mask-area", type=float, nargs=2, default=(0.05, 0.25), metavar=("LO", "HI"),
                   help="fraction of each image corrupted, drawn uniformly in [LO, HI] (0.05 0.25)")
    p.add_argument("--mask-shapes", type=int, default=3, help="most rectangles/ellipses per mask (3)")
    p.add_argument("--noise-std", type=float, default=0.5, help="corruption noise σ in [0,1] pixel units (0.5)")
    cli.add_max_grad_norm_arg(p)
    p.add_argument("--face-dropout", type=float, default=0.05,
                   help="share of samples trained with zero face tokens, for CFG on identity (0.05)")
    p.add_argument("--num-tokens", type=int, default=4, help="face tokens of a new IdentityNet (4)")
    p.add_argument("--hidden", type=int, default=1024, help="projection hidden width of a new IdentityNet (1024)")
    cli.add_run_args(p, "size of the fixed evaluation batch (frames evenly spaced over the dataset, fixed masks, "
                        "noise and timesteps; 0 = no evaluation)",
                     "seed of the init, data order, masks, noise, timesteps")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also train a LoRA of this rank on the UNet attention projections (0 = off)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1)")
    p.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: --lr)")
    a = cli.parse_train_args(p, argv)
    if a.lora_rank < 0:
        p.error("--lora-rank must be >= 0")
    return a


# ------------------------------------------------------------------------------------------------- set-up
def train_config(args) -> T.TrainConfig:
    """The :class:`~ptalk_models.identity_training.TrainConfig` of the options; :class:`TrainError` for a
    ``--mask-area`` / ``--mask-shapes`` that :func:`~ptalk_models.identity_training.random_region_mask`
    rejects."""
    import torch

    config = T.TrainConfig(lr=args.lr, weight_decay=args.weight_decay, batch=args.batch,
                           micro_batch=min(args.micro_batch, args.batch), resolution=args.resolution,
                           mask_area=tuple(args.mask_area), mask_shapes=args.mask_shapes, noise_std=args.noise_std,
                           max_grad_norm=args.max_grad_norm, seed=args.seed,
                           face_dropout=args.face_dropout)
    try:
        T.random_region_mask(1, 8, 8, torch.Generator().manual_seed(0), config.mask_area, config.mask_shapes)
    except ValueError as e:
        raise TrainError(f"--mask-area/--mask-shapes: {e}") from None
    return config


def unet_cross_attention(sd, checkpoint) -> list:
    """``cross_attention_layers`` of the checkpoint's UNet; :class:`TrainError` when it has none (not SD1.5)."""
    from portraittalk.nodes.glue.identity_patch import cross_attention_layers

    layers = cross_attention_layers(sd.model)
    if not layers:
        raise TrainError(f"--checkpoint {Path(checkpoint).name}: the UNet has no cross-attention layers "
                         "(not SD1.5)")
    return layers


def load_trainable_identitynet(path: Path, widths, token_dim: int):
    """The IdentityNet of ``path`` (ours or IP-Adapter-FaceID SD1.5) checked against the UNet's cross-attention
    widths and token width; :class:`TrainError` when it does not fit. Keys it does not use (the FaceID LoRA) are
    reported with a warning."""
    try:
        net = idn.load_identitynet(path)
        net.check_layers(widths, token_dim)
    except idn.IdentityNetFormatError as e:
        raise TrainError(f"IdentityNet {path}: {e}") from None
    if net.ignored_keys:
        log.warning("%s: %d keys not used by IdentityNet (e.g. the FaceID LoRA: %s); training without them",
                    path.name, len(net.ignored_keys), net.ignored_keys[0])
    return net


def initial_net(args, data, sd, layers, found):
    """The IdentityNet to train: the run's newest checkpoint (``found``), ``--init`` weights, or a new one for
    the dataset's embedding width with face K/V initialised from the UNet's text K/V."""
    widths, token_dim = [w for _, w, _ in layers], layers[0][2]
    if found is not None:
        return load_trainable_identitynet(found[1], widths, token_dim)
    if args.init:
        return load_trainable_identitynet(Path(args.init).expanduser(), widths, token_dim)
    cfg = idn.IdentityNetConfig(kind="faceid", id_dim=data.dim, hidden=args.hidden, token_dim=token_dim,
                                num_tokens=args.num_tokens, layer_dims=widths, embed_backend=data.backend)
    return idn.new_identitynet(cfg, seed=args.seed, text_kv=sd.text_kv(layers))


def identity_predict(sd, net) -> T.PredictFn:
    """:data:`~ptalk_models.identity_training.PredictFn` of the frozen UNet with the pack's IdentityNet patch
    (``apply_identitynet``): a direct ``diffusion_model(...)`` call, each row with its own face tokens."""
    from portraittalk.nodes.glue.identity_patch import apply_identitynet, with_row_tokens

    patched = apply_identitynet(sd.model, net, strength=1.0, node="train_identitynet")
    base_opts = patched.model_options.get("transformer_options", {})
    dm = sd.dm

    def predict(zt, t, ctx, tokens):
        return dm(zt, t, context=ctx, transformer_options=with_row_tokens(base_opts, tokens))

    return predict


def unet_lora(args, dm, out: Path, found) -> T.UNetLoRA | None:
    """With ``--lora-rank``: the :class:`~ptalk_models.identity_training.UNetLoRA` on the UNet's attention
    projections (restored from the run's checkpoint when resuming; :class:`TrainError` when that file is missing
    or of another rank); else None."""
    import torch

    if not args.lora_rank:
        return None
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
        except CheckpointError as e:
            raise TrainError(str(e)) from None
    return lora


# ---------------------------------------------------------------------------------------------------- run
def describer(tuner: T.MaskedFineTuner, layers, contexts, device, precision: str):
    """``describe(setup seconds)`` for :func:`~ptalk_harness.train_loop.run_loop`: the run's banner."""
    net, data, config = tuner.net, tuner.dataset, tuner.config

    def describe(setup_s):
        if tuner.lora is not None:
            n_lora = sum(p.numel() for p in tuner.lora.parameters())
            print(f"UNet LoRA: rank {tuner.lora.rank}, alpha {tuner.lora.alpha:g}, {len(tuner.lora.modules_by_key)} "
                  f"attention projections, {n_lora / 1e6:.2f} M trainable parameters", flush=True)
        n_params = sum(p.numel() for p in net.parameters())
        print(f"IdentityNet {net.config.kind}: {n_params / 1e6:.2f} M trainable parameters, {len(layers)} "
              f"cross-attention layers; dataset {len(data)} frames ({data.backend} {data.dim}-D, {len(contexts)} "
              f"caption(s)); device {device}, precision {precision}; {train_loop.batch_text(config)}; "
              f"setup {setup_s:.1f} s", flush=True)

    return describe


def final_saver(tuner: T.MaskedFineTuner, out: Path):
    """``save_final(run args)`` for :func:`~ptalk_harness.train_loop.run_loop`: ``identitynet.safetensors``
    (and ``unet_lora.safetensors``) in ``out``, and the summary's entries."""

    def save_final(run_args):
        final = out / "identitynet.safetensors"
        final_meta = {"step": tuner.step, "seed": tuner.config.seed, "trainer": T.TRAINER_FORMAT,
                      "args": json.dumps(run_args, default=str)}
        idn.save_identitynet(tuner.net, final, final_meta)
        final_lora = None
        if tuner.lora is not None:
            final_lora = out / "unet_lora.safetensors"
            T.save_lora(tuner.lora, final_lora, final_meta)
        return ({"identitynet": str(final), "net": tuner.net, "unet_lora": str(final_lora) if final_lora else None,
                 "lora": tuner.lora}, f"IdentityNet → {final}")

    return save_final


def train(args) -> dict:
    """Run training as parsed by the CLI (``argparse.Namespace``). Returns a summary dict: ``step`` (steps
    done in total), ``start_step``, ``losses`` (per step of this run), ``eval`` (list of ``{step, loss}``),
    ``seconds_per_step``, ``samples_per_second`` (optimiser steps only, without evaluation and checkpoint
    writing), ``identitynet`` (final file), ``checkpoints`` (written),
    ``net`` (the trained IdentityNet module), ``device``, ``precision``, ``unet_lora`` (final LoRA file or
    None), ``lora`` (the :class:`UNetLoRA` or None; detached from the UNet on return).
    Raises :class:`TrainError`."""
    device, precision = cli.device_and_precision(args)
    cli.boot_pack(device.type)
    out, data, found = train_loop.open_run(args, T.IdentityDataset, T.latest_checkpoint, log)
    config = train_config(args)
    t_load = time.perf_counter()
    sd = load_sd15(args.checkpoint, device)
    layers = unet_cross_attention(sd, args.checkpoint)
    net = initial_net(args, data, sd, layers, found)
    contexts = {c: sd.text_context(c) for c in data.captions}
    sd.place()
    predict = identity_predict(sd, net)
    lora = unet_lora(args, sd.dm, out, found)
    try:
        tuner = T.MaskedFineTuner(net, data, contexts, sd.encode, predict, alphas_cumprod_from_sigmas(sd.sigmas()),
                                  config, device=device, autocast_dtype=cli.autocast_dtype(precision),
                                  lora=lora, lora_lr=args.lora_lr)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    try:
        return train_loop.run_loop(
            args, tuner, save_checkpoint=T.save_checkpoint, out=out, config=config, precision=precision,
            device=device, state_path=found[2] if found is not None else None, t_load=t_load, log=log,
            describe=describer(tuner, layers, contexts, device, precision), eval_unit="samples",
            save_final=final_saver(tuner, out))
    finally:
        if lora is not None:
            lora.detach()  # the cached UNet computes exactly what it did before


def main(argv=None) -> int:
    return cli.train_main("train_identitynet", _parse(argv), train)
