"""AnimateNet training (PortraitTalk §III-B, loss Eq. 3) on a user's SD1.5 checkpoint, headless: the library
behind ``scripts/train_animatenet.py``.

    python scripts/train_animatenet.py --data DATA --checkpoint SD15.safetensors --out RUN --stage 1|2
        [--init ANIMATENET.safetensors] [--identitynet FILE] [--train-identitynet] [--identitynet-lr LR]
        [--steps 1000] [--lr 1e-5] [--batch 32] [--micro-batch 4] [--resolution 512]
        [--precision auto|fp32|bf16] [--save-every 500] [--eval-samples 8] [--eval-every 0]
        [--caption TEXT] [--cond-dim 256] [--token-grid 16] [--resume] [--seed 0] [--device auto|cpu|cuda]

``DATA`` is what ``python scripts/prepare_animatenet_data.py`` writes (consecutive face-crop frame pairs,
landmarks, contour guides, Face Embed embeddings). The real ComfyUI is booted in this process
(:func:`ptalk_harness.boot`, no server) with this pack loaded; the checkpoint is loaded by ComfyUI itself
(``comfy.sd.load_checkpoint_guess_config``; the loading is :mod:`ptalk_harness.sd15`, the options common to both
trainers :mod:`ptalk_harness.training_cli`, the run loop :mod:`ptalk_harness.train_loop`, all shared with
:mod:`ptalk_harness.train_identitynet`). Then:

* **stage 1** (``--stage 1``): a new AnimateNet built for the checkpoint's UNet
  (``AnimateNetConfig.from_unet_config`` with ``use_temporal=True``, so stage 2 continues from this file; its
  encoder copied from the UNet, zero convolutions zero, ``--cond-dim`` / ``--token-grid`` condition tokens) or
  ``--init`` weights; trained WITHOUT temporal attention (no temporal condition; the temporal encoder and
  temporal K/V frozen);
* **stage 2** (``--stage 2 --init STAGE1.safetensors``): every AnimateNet parameter trained, with the temporal
  condition (the VAE latent of frame t−1), and IdentityNet integrated when ``--identitynet`` is given (the
  pack's own ``apply_identitynet`` patch on the UNet, face tokens of each clip's Face Embed embedding through
  ``with_row_tokens``): frozen by default, also fine-tuned with ``--train-identitynet`` (own learning rate
  ``--identitynet-lr``, default ``--lr``);
* each step: ``--batch`` pairs in ``--micro-batch`` chunks (gradient accumulation); frame t → frozen VAE latent
  (``latent_format.process_in``), a DDPM timestep and noise from the model's own schedule; the frozen UNet with
  the caption's CLIP tokens (``--caption`` overrides the dataset's) and AnimateNet's control residuals predicts
  ε (a direct ``diffusion_model(x, t, context=…, control=…, transformer_options=…)`` call); loss = MSE(ε, ε̂)
  (Eq. 3). Conditions: structure = Draw Landmarks of frame t (drawn at ``--resolution``), identity = head
  contour of frame t−1, temporal (stage 2) = latent of frame t−1;
* AdamW (``--lr`` 1e-5; the three-way attention weights w1..w3 without weight decay), batch 32, bf16 autocast
  on CUDA (``--precision auto``), fp32 on CPU. The paper's §IV-B values for AnimateNet could not be read when
  this was written: these defaults are the brief's (lr 1e-5, batch 32 by accumulation, AdamW, bf16 on CUDA),
  the usual ControlNet-training settings.

Output in ``RUN``: ``checkpoints/animatenet_step<N>.safetensors`` (loadable by the AnimateNet Loader node: copy it
to ComfyUI/models/portraittalk; metadata step, stage, seed, args), ``checkpoints/trainer_step<N>.safetensors``
(AdamW state, step, random-generator states) and, with ``--train-identitynet``,
``checkpoints/identitynet_step<N>.safetensors``, every ``--save-every`` steps and at the end;
``animatenet.safetensors`` (+ ``identitynet.safetensors``) — the final nets; ``train_log.jsonl``. ``--resume``
continues from the newest checkpoint in ``RUN`` and reproduces an uninterrupted run exactly (same settings and
device).

Exit status: 0 done; 1 training failed; 2 bad arguments or inputs (missing files, wrong dataset, an AnimateNet
or IdentityNet for another UNet, stage 2 without --init, ``RUN`` already holding checkpoints without --resume).

Not done here: dropout of the text or motion conditions (classifier-free guidance on them), multi-frame
(window) training of the Temporal Sampler's step-lagged temporal condition, audio in the loss.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from portraittalk.ptalk_models import animatenet as A
from portraittalk.ptalk_models import animatenet_training as T
from portraittalk.ptalk_models import identitynet as idn
from portraittalk.ptalk_models.training import alphas_cumprod_from_sigmas

from . import train_loop
from . import training_cli as cli
from .train_identitynet import load_trainable_identitynet
from .sd15 import load_sd15
from .training_cli import TrainError

log = logging.getLogger("ptalk.train_animatenet")


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(prog="scripts/train_animatenet.py",
                                description="AnimateNet training (PortraitTalk §III-B, Eq. 3), two stages.")
    cli.add_io_args(p, "dataset folder from scripts/prepare_animatenet_data.py",
                    "run folder (checkpoints/, animatenet.safetensors, train_log.jsonl)")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True,
                   help="1: without temporal attention; 2: everything, with the temporal condition and IdentityNet")
    p.add_argument("--init", help="start from these AnimateNet weights (stage 2: the stage-1 output, required)")
    p.add_argument("--identitynet", help="stage 2: IdentityNet weights (ours or IP-Adapter-FaceID SD1.5) whose face "
                                         "term is on the UNet during training")
    p.add_argument("--train-identitynet", action="store_true", help="stage 2: fine-tune the IdentityNet too "
                                                                     "(frozen by default)")
    p.add_argument("--identitynet-lr", type=float, default=None, help="IdentityNet learning rate (default: --lr)")
    cli.add_optim_args(p, 1e-5, "AdamW learning rate (1e-5)", "AdamW weight decay (0.01; not on w1..w3)", "pairs")
    cli.add_max_grad_norm_arg(p)
    p.add_argument("--caption", default=None, help="caption for every pair instead of the dataset's")
    p.add_argument("--cond-dim", type=int, default=None, help="width of the condition tokens of a new AnimateNet "
                                                              "(AnimateNetConfig default 256)")
    p.add_argument("--token-grid", type=int, default=None, help="G: G² tokens per condition of a new AnimateNet "
                                                                "(AnimateNetConfig default 16)")
    cli.add_run_args(p, "size of the fixed evaluation batch (pairs evenly spaced over the dataset, fixed noise and "
                        "timesteps; 0 = no evaluation)", "seed of the init, data order, noise, timesteps")
    a = cli.parse_train_args(p, argv)
    if a.stage == 1 and (a.identitynet or a.train_identitynet):
        p.error("--identitynet / --train-identitynet belong to stage 2 (paper §III-B: stage 1 trains AnimateNet "
                "alone, without temporal attention)")
    if a.train_identitynet and not a.identitynet:
        p.error("--train-identitynet needs --identitynet")
    if a.stage == 2 and not a.init and not a.resume:
        p.error("--stage 2 starts from the stage-1 AnimateNet: pass --init RUN1/animatenet.safetensors")
    return a


# ------------------------------------------------------------------------------------------------- set-up
def train_config(args) -> T.AnimateTrainConfig:
    """The :class:`~ptalk_models.animatenet_training.AnimateTrainConfig` of the options (:class:`TrainError`
    for a value it rejects)."""
    try:
        return T.AnimateTrainConfig(stage=args.stage, lr=args.lr, identitynet_lr=args.identitynet_lr,
                                    weight_decay=args.weight_decay, batch=args.batch,
                                    micro_batch=min(args.micro_batch, args.batch), resolution=args.resolution,
                                    max_grad_norm=args.max_grad_norm, seed=args.seed)
    except ValueError as e:
        raise TrainError(str(e)) from None


def load_trainable_animatenet(path: Path, unet_cfg: dict, stage: int):
    """The AnimateNet of ``path`` checked against the UNet's config (and, in stage 2, to have temporal
    attention); :class:`TrainError` when it does not fit."""
    try:
        net = A.load_animatenet(path)
        A.check_compatible(net, unet_cfg)
    except A.AnimateNetFormatError as e:
        raise TrainError(f"AnimateNet {path}: {e}") from None
    if stage == 2 and not net.has_temporal:
        raise TrainError(f"AnimateNet {path.name} has no temporal attention (use_temporal False) and cannot be "
                         "trained in stage 2; start stage 1 with this script (it builds use_temporal=True nets)")
    return net


def initial_net(args, sd, found):
    """The AnimateNet to train: the run's newest checkpoint (``found``), ``--init`` weights, or a new one built
    for the checkpoint's UNet (``use_temporal=True``, encoder copied from the UNet)."""
    from portraittalk.nodes.glue.patcher import unet_config

    unet_cfg = unet_config(sd.model)
    if found is not None:
        return load_trainable_animatenet(found[1], unet_cfg, args.stage)
    if args.init:
        return load_trainable_animatenet(Path(args.init).expanduser(), unet_cfg, args.stage)
    overrides = {k: v for k, v in (("cond_dim", args.cond_dim), ("token_grid", args.token_grid)) if v}
    try:
        cfg = A.AnimateNetConfig.from_unet_config(unet_cfg, use_temporal=True, **overrides)
        return A.new_animatenet(cfg, seed=args.seed, unet_sd=sd.dm.state_dict())
    except A.AnimateNetFormatError as e:
        raise TrainError(f"--checkpoint {Path(args.checkpoint).name}: {e}") from None


def stage2_identitynet(args, sd, data, found):
    """The ``--identitynet`` (the run's own checkpoint of it when resuming with ``--train-identitynet``), checked
    against the UNet and the dataset's embedding width (:class:`TrainError`), or None (a warning in stage 2)."""
    from portraittalk.nodes.glue.identity_patch import cross_attention_layers

    if not args.identitynet:
        if args.stage == 2:
            log.warning("stage 2 without --identitynet: the UNet has no identity term during training")
        return None
    layers = cross_attention_layers(sd.model)
    id_path = Path(args.identitynet).expanduser()
    if found is not None and args.train_identitynet:
        if not found[3].is_file():
            raise TrainError(f"--resume with --train-identitynet: {found[3].name} is missing (was the run started "
                             "without --train-identitynet?)")
        id_path = found[3]
    idnet = load_trainable_identitynet(id_path, [w for _, w, _ in layers], layers[0][2])
    try:
        idn.check_embedding(idnet, data.dim)
    except idn.IdentityNetFormatError as e:
        raise TrainError(f"--identitynet {id_path.name}: {e} (the dataset's embeddings are {data.backend} "
                         f"{data.dim}-D)") from None
    return idnet


def _copy_for_next_block(h, transformer_options):
    """``input_block_patch_after_skip``: the next input block gets a copy of ``h`` (see :func:`control_predict`)."""
    return h.clone()


def control_predict(sd, idnet, train_identitynet: bool) -> T.PredictFn:
    """:data:`~ptalk_models.animatenet_training.PredictFn` of the frozen UNet: a direct
    ``diffusion_model(x, t, context=…, control=…, transformer_options=…)`` call, with the pack's IdentityNet patch
    (``apply_identitynet``, each row its own face tokens) when ``idnet`` is given."""
    from portraittalk.nodes.glue.identity_patch import apply_identitynet, with_row_tokens

    dm = sd.dm
    base_opts = {}
    if idnet is not None:
        patched = apply_identitynet(sd.model, idnet, strength=1.0, node="train_animatenet")
        base_opts = patched.model_options.get("transformer_options", {})
    if train_identitynet:
        # ComfyUI adds control residuals to the UNet's skip connections IN PLACE (apply_control: ``hsp += ctrl``).
        # When something inside the input blocks is trained (here the IdentityNet's face K/V), the next block's
        # GroupNorm has saved that same tensor for backward, so the in-place add would break autograd: hand the
        # next block a copy (the skip connection keeps the original, which nothing else saved).
        base_opts = dict(base_opts)
        patches = {k: list(v) for k, v in base_opts.get("patches", {}).items()}
        patches.setdefault("input_block_patch_after_skip", []).append(_copy_for_next_block)
        base_opts["patches"] = patches

    def predict(zt, t, ctx, control, face_tokens):
        opts = base_opts if face_tokens is None else with_row_tokens(base_opts, face_tokens)
        kwargs = {"control": control} if control is not None else {}
        return dm(zt, t, context=ctx, transformer_options=opts, **kwargs)

    return predict


# ---------------------------------------------------------------------------------------------------- run
def describer(trainer: T.AnimateNetTrainer, device, precision: str):
    """``describe(setup seconds)`` for :func:`~ptalk_harness.train_loop.run_loop`: the run's banner."""
    config, data = trainer.config, trainer.dataset

    def describe(setup_s):
        n_train = sum(p.numel() for n, p in trainer.trainable_named_parameters() if n.startswith("animatenet."))
        n_all = sum(p.numel() for p in trainer.net.parameters())
        ident = "none"
        if trainer.identitynet is not None:
            n_id = sum(p.numel() for p in trainer.identitynet.parameters())
            ident = (f"{trainer.identitynet.source} ({n_id / 1e6:.2f} M parameters, "
                     f"{'trained' if trainer.train_identitynet else 'frozen'})")
        print(f"AnimateNet stage {config.stage}: {n_train / 1e6:.2f} M of {n_all / 1e6:.2f} M parameters trained "
              f"({len(trainer.net.three_way_layers())} three-way attention layers, temporal "
              f"{'on' if trainer.use_temporal else 'off'}); IdentityNet {ident}; dataset {len(data)} pairs from "
              f"{len(data.clips)} clip(s) ({data.backend} {data.dim}-D); device {device}, precision {precision}; "
              f"{train_loop.batch_text(config)}; {config.resolution} px; setup {setup_s:.1f} s", flush=True)

    return describe


def final_saver(trainer: T.AnimateNetTrainer, out: Path):
    """``save_final(run args)`` for :func:`~ptalk_harness.train_loop.run_loop`: ``animatenet.safetensors``
    (and ``identitynet.safetensors`` when it is trained) in ``out``, and the summary's entries."""
    config = trainer.config

    def save_final(run_args):
        final = out / "animatenet.safetensors"
        final_meta = {"step": trainer.step, "stage": config.stage, "seed": config.seed, "trainer": T.TRAINER_FORMAT,
                      "args": json.dumps(run_args, default=str)}
        A.save_animatenet(trainer.net, final, final_meta)
        final_id = None
        if trainer.train_identitynet:
            final_id = out / "identitynet.safetensors"
            idn.save_identitynet(trainer.identitynet, final_id, final_meta)
        return ({"animatenet": str(final), "identitynet": str(final_id) if final_id else None, "net": trainer.net,
                 "identitynet_net": trainer.identitynet, "trainer": trainer}, f"AnimateNet → {final}")

    return save_final


def train(args) -> dict:
    """Run training as parsed by the CLI (``argparse.Namespace``). Returns a summary dict: ``step``,
    ``start_step``, ``losses`` (per step of this run), ``eval`` (``[{step, loss}]``), ``seconds_per_step``,
    ``samples_per_second`` (optimiser steps only), ``animatenet`` (final file), ``identitynet`` (final file when
    trained, else None), ``checkpoints``, ``net`` (the trained AnimateNet), ``identitynet_net`` (the IdentityNet
    used or None), ``trainer``, ``device``, ``precision``. Raises :class:`TrainError`."""
    device, precision = cli.device_and_precision(args)
    cli.boot_pack(device.type)
    out, data, found = train_loop.open_run(args, T.AnimateDataset, T.latest_checkpoint, log)
    config = train_config(args)
    t_load = time.perf_counter()
    sd = load_sd15(args.checkpoint, device)
    net = initial_net(args, sd, found)
    idnet = stage2_identitynet(args, sd, data, found)
    if args.caption:
        for e in data.entries:
            e["caption"] = args.caption
    contexts = {c: sd.text_context(c) for c in data.captions}
    sd.place()
    predict = control_predict(sd, idnet, args.train_identitynet)
    try:
        trainer = T.AnimateNetTrainer(net, data, contexts, sd.encode, predict,
                                      alphas_cumprod_from_sigmas(sd.sigmas()), config, device=device,
                                      autocast_dtype=cli.autocast_dtype(precision),
                                      identitynet=idnet, train_identitynet=args.train_identitynet)
    except (ValueError, idn.IdentityNetFormatError) as e:
        raise TrainError(str(e)) from None
    return train_loop.run_loop(args, trainer, save_checkpoint=T.save_checkpoint, out=out, config=config,
                               precision=precision, device=device,
                               state_path=found[2] if found is not None else None, t_load=t_load, log=log,
                               describe=describer(trainer, device, precision), eval_unit="pairs",
                               save_final=final_saver(trainer, out), done_prefix=f"stage {config.stage}, ")


def main(argv=None) -> int:
    return cli.train_main("train_animatenet", _parse(argv), train)
