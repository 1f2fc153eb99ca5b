#!/usr/bin/env python3
"""AnimateNet training (PortraitTalk §III-B, loss Eq. 3) on a user's SD1.5 checkpoint, headless.

    python -m scripts.train_animatenet --data DATA --checkpoint SD15.safetensors --out RUN --stage 1|2
        [--init ANIMATENET.safetensors] [--identitynet FILE] [--train-identitynet] [--identitynet-lr LR]
        [--steps 1000] [--lr 1e-5] [--batch 32] [--micro-batch 4] [--resolution 512]
        [--precision auto|fp32|bf16] [--save-every 500] [--eval-samples 8] [--eval-every 0]
        [--caption TEXT] [--cond-dim 256] [--token-grid 16] [--resume] [--seed 0] [--device auto|cpu|cuda]

``DATA`` is what ``python -m scripts.prepare_animatenet_data`` writes (consecutive face-crop frame pairs,
landmarks, contour guides, Face Embed embeddings). The real ComfyUI is booted in this process
(``scripts/comfy_headless.py``, no server) with this pack loaded; the checkpoint is loaded by ComfyUI itself
(``comfy.sd.load_checkpoint_guess_config``; the loading, the options common to both trainers and the run loop are
``scripts/_training_cli.py``, shared with ``scripts/train_identitynet.py``). Then:

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
import importlib
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

import _training_cli as cli  # noqa: E402  (shared with train_identitynet: options, SD1.5 loading, run loop)
import train_identitynet as tid  # noqa: E402  (IdentityNet loading)
from _training_cli import TrainError  # noqa: E402

log = logging.getLogger("ptalk.train_animatenet")


def pack_modules(device: str = "auto"):
    """Boot ComfyUI headless with this pack; return ``(comfy_adapter, animatenet, animatenet_training,
    identitynet)`` — the pack's modules as ComfyUI loaded them."""
    pkg = cli.boot_pack(device)
    return tuple(importlib.import_module(f"{pkg}.{m}") for m in (
        "nodes.comfy_adapter", "ptalk_models.animatenet", "ptalk_models.animatenet_training",
        "ptalk_models.identitynet"))


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m scripts.train_animatenet",
                                description="AnimateNet training (PortraitTalk §III-B, Eq. 3), two stages.")
    cli.add_io_args(p, "dataset folder from scripts.prepare_animatenet_data",
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


def _copy_for_next_block(h, transformer_options):
    """``input_block_patch_after_skip``: the next input block gets a copy of ``h`` (see :func:`train`)."""
    return h.clone()


def _load_animatenet(A, path: Path, unet_cfg: dict, stage: int):
    try:
        net = A.load_animatenet(path)
        A.check_compatible(net, unet_cfg)
    except A.AnimateNetFormatError as e:
        raise TrainError(f"AnimateNet {path}: {e}") from None
    if stage == 2 and not net.has_temporal:
        raise TrainError(f"AnimateNet {path.name} has no temporal attention (use_temporal False) and cannot be "
                         "trained in stage 2; start stage 1 with this script (it builds use_temporal=True nets)")
    return net


def train(args) -> dict:
    """Run training as parsed by the CLI (``argparse.Namespace``). Returns a summary dict: ``step``,
    ``start_step``, ``losses`` (per step of this run), ``eval`` (``[{step, loss}]``), ``seconds_per_step``,
    ``samples_per_second`` (optimiser steps only), ``animatenet`` (final file), ``identitynet`` (final file when
    trained, else None), ``checkpoints``, ``net`` (the trained AnimateNet), ``identitynet_net`` (the IdentityNet
    used or None), ``trainer``, ``device``, ``precision``. Raises :class:`TrainError`."""
    import torch

    device, precision = cli.device_and_precision(args)
    adapter, A, T, idn = pack_modules(device.type)
    out, data, found = cli.open_run(args, T, T.AnimateDataset, log)
    try:
        config = T.AnimateTrainConfig(stage=args.stage, lr=args.lr, identitynet_lr=args.identitynet_lr,
                                      weight_decay=args.weight_decay, batch=args.batch,
                                      micro_batch=min(args.micro_batch, args.batch), resolution=args.resolution,
                                      max_grad_norm=args.max_grad_norm, seed=args.seed)
    except ValueError as e:
        raise TrainError(str(e)) from None

    t_load = time.perf_counter()
    sd = cli.load_sd15(args.checkpoint, device)
    unet_cfg = adapter.unet_config(sd.model)
    if found is not None:
        net = _load_animatenet(A, found[1], unet_cfg, args.stage)
    elif args.init:
        net = _load_animatenet(A, Path(args.init).expanduser(), unet_cfg, args.stage)
    else:
        overrides = {k: v for k, v in (("cond_dim", args.cond_dim), ("token_grid", args.token_grid)) if v}
        try:
            cfg = A.AnimateNetConfig.from_unet_config(unet_cfg, use_temporal=True, **overrides)
            net = A.new_animatenet(cfg, seed=args.seed, unet_sd=sd.dm.state_dict())
        except A.AnimateNetFormatError as e:
            raise TrainError(f"--checkpoint {Path(args.checkpoint).name}: {e}") from None

    idnet = None
    if args.identitynet:
        layers = adapter.cross_attention_layers(sd.model)
        id_path = Path(args.identitynet).expanduser()
        if found is not None and args.train_identitynet:
            if not found[3].is_file():
                raise TrainError(f"--resume with --train-identitynet: {found[3].name} is missing (was the run started "
                                 "without --train-identitynet?)")
            id_path = found[3]
        idnet = tid._load_net(idn, id_path, [w for _, w, _ in layers], layers[0][2])
        try:
            idn.check_embedding(idnet, data.dim)
        except idn.IdentityNetFormatError as e:
            raise TrainError(f"--identitynet {id_path.name}: {e} (the dataset's embeddings are {data.backend} "
                             f"{data.dim}-D)") from None
    elif args.stage == 2:
        log.warning("stage 2 without --identitynet: the UNet has no identity term during training")

    if args.caption:
        for e in data.entries:
            e["caption"] = args.caption
    contexts = {c: sd.text_context(c) for c in data.captions}
    sd.place()
    dm = sd.dm
    base_opts = {}
    if idnet is not None:
        patched = adapter.apply_identitynet(sd.model, idnet, strength=1.0, node="train_animatenet")
        base_opts = patched.model_options.get("transformer_options", {})
    if args.train_identitynet:
        # ComfyUI adds control residuals to the UNet's skip connections IN PLACE (apply_control: ``hsp += ctrl``).
        # When something inside the input blocks is trained (here the IdentityNet's face K/V), the next block's
        # GroupNorm has saved that same tensor for backward, so the in-place add would break autograd: hand the
        # next block a copy (the skip connection keeps the original, which nothing else saved).
        base_opts = dict(base_opts)
        patches = {k: list(v) for k, v in base_opts.get("patches", {}).items()}
        patches.setdefault("input_block_patch_after_skip", []).append(_copy_for_next_block)
        base_opts["patches"] = patches

    def predict(zt, t, ctx, control, face_tokens):
        opts = base_opts if face_tokens is None else adapter.with_row_tokens(base_opts, face_tokens)
        kwargs = {"control": control} if control is not None else {}
        return dm(zt, t, context=ctx, transformer_options=opts, **kwargs)

    try:
        trainer = T.AnimateNetTrainer(net, data, contexts, sd.encode, predict,
                                      T.alphas_cumprod_from_sigmas(sd.sigmas()), config, device=device,
                                      autocast_dtype=cli.autocast_dtype(precision),
                                      identitynet=idnet, train_identitynet=args.train_identitynet)
    except (ValueError, idn.IdentityNetFormatError) as e:
        raise TrainError(str(e)) from None

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
              f"{cli.batch_text(config)}; {config.resolution} px; setup {setup_s:.1f} s", flush=True)

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

    return cli.run_loop(args, T, trainer, out=out, config=config, precision=precision, device=device,
                        state_path=found[2] if found is not None else None, t_load=t_load, log=log,
                        describe=describe, eval_unit="pairs", save_final=save_final,
                        done_prefix=f"stage {config.stage}, ")


def main(argv=None) -> int:
    return cli.train_main("train_animatenet", _parse(argv), train)


if __name__ == "__main__":
    sys.exit(main())
