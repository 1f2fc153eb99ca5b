"""What the two trainers share (:mod:`.train_identitynet`, :mod:`.train_animatenet`; the data preparations'
shared part is :mod:`.data_prep`):

* the error with an exit status (:class:`TrainError`) and the ``main()`` wrapper that turns it into a message
  and an exit code (:func:`train_main`);
* the common trainer options (:func:`add_io_args`, :func:`add_optim_args`, :func:`add_run_args`,
  :func:`parse_train_args`), the device/precision choice (:func:`device_and_precision`);
* booting ComfyUI with this pack (:func:`boot_pack`) and the SD1.5 checkpoint loaded for training
  (:class:`SD15`, :func:`load_sd15`, cached per process);
* the run checks (:func:`open_run`) and the run loop with resume, evaluation, logging, checkpoints and the
  summary (:func:`run_loop`).
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
from typing import Callable

from portraittalk.ptalk_models.training import (CHECKPOINTS_DIR, CheckpointError, DatasetError, eval_indices,
                                                read_trainer_state)

from .comfy import boot, prepare

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class TrainError(Exception):
    """A failure with a message for the user; ``code`` is the exit status (2 = bad arguments/inputs)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------- main()
def train_main(prog: str, args, train: Callable) -> int:
    """``main()`` of a trainer: WARNING logging (unless the caller configured it), ``train(args)``; exit status
    0, ``TrainError.code`` (message on stderr) or 130 on Ctrl-C."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        train(args)
    except TrainError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; resume from the last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------------------------------------------------------ trainer options
def add_io_args(p: argparse.ArgumentParser, data_help: str, out_help: str) -> None:
    """``--data``, ``--checkpoint``, ``--out`` (all required)."""
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint (.safetensors/.ckpt) with UNet, CLIP, VAE")
    p.add_argument("--out", required=True, help=out_help)


def add_optim_args(p: argparse.ArgumentParser, lr: float, lr_help: str, wd_help: str, unit: str,
                   batch_source: str = "") -> None:
    """``--steps``, ``--lr`` (default ``lr``), ``--weight-decay``, ``--batch`` (32), ``--micro-batch`` (4),
    ``--resolution`` (512); ``unit`` names a sample in the help ("samples", "pairs"), ``batch_source`` is added
    to the default in ``--batch``'s help (", paper §IV-B")."""
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps in total (1000)")
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--weight-decay", type=float, default=1e-2, help=wd_help)
    p.add_argument("--batch", type=int, default=32, help=f"{unit} per optimiser step (32{batch_source})")
    p.add_argument("--micro-batch", type=int, default=4, help=f"{unit} per forward/backward pass (4)")
    p.add_argument("--resolution", type=int, default=512, help="training image side in pixels, multiple of 8 (512)")


def add_max_grad_norm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="gradient clipping norm (0 = off)")


def add_run_args(p: argparse.ArgumentParser, eval_help: str, seed_help: str) -> None:
    """``--precision``, ``--save-every``, ``--eval-samples``, ``--eval-every``, ``--resume``, ``--seed``,
    ``--device``."""
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on CUDA (if supported), fp32 on CPU")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    p.add_argument("--eval-samples", type=int, default=8, help=eval_help)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N steps (0: only before the first and after the last step)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def parse_train_args(p: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Add ``-q/--quiet``, parse ``argv`` and check ``--steps`` / ``--save-every`` (>= 1)."""
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step lines")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.save_every < 1:
        p.error("--save-every must be >= 1")
    return a


def device_and_precision(args):
    """``(torch.device, "bf16" | "fp32")`` of ``--device`` / ``--precision`` (auto: CUDA when available, bf16
    autocast there when supported). Raises :class:`TrainError` for an impossible choice."""
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


def autocast_dtype(precision: str):
    """``torch.bfloat16`` for ``"bf16"``, else None (full precision)."""
    import torch

    return torch.bfloat16 if precision == "bf16" else None


# ----------------------------------------------------------------------------------------------- ComfyUI side
def boot_pack(device: str = "auto") -> None:
    """Boot ComfyUI headless with this pack (then ``portraittalk.nodes`` is importable). ``device="cpu"`` on a
    CUDA machine sets ComfyUI's ``--cpu`` first (only possible before ComfyUI's model management is imported)."""
    prepare()
    if device == "cpu" and "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    boot(load_pack=True)


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

    def sigmas(self):
        """The model's own noise schedule (``model_sampling.sigmas``)."""
        return self.model.get_model_object("model_sampling").sigmas

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


# ---------------------------------------------------------------------------------------------------- runs
def open_run(args, dataset_cls, latest_checkpoint: Callable, log: logging.Logger):
    """``(out folder, dataset, newest checkpoint or None)`` of a run: the dataset ``dataset_cls(--data)``
    (``DatasetError`` → :class:`TrainError`) and the checkpoints in ``--out`` checked against ``--resume``
    (``latest_checkpoint(out)``; none to resume from, or some without ``--resume``: :class:`TrainError`)."""
    out = Path(args.out).expanduser()
    try:
        data = dataset_cls(args.data)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    found = latest_checkpoint(out)
    if args.resume and found is None:
        raise TrainError(f"--resume: {out / CHECKPOINTS_DIR} holds no checkpoint to resume from")
    if not args.resume and found is not None:
        raise TrainError(f"{out} already holds checkpoints (newest: step {found[0]}); pass --resume to continue "
                         "that run or choose another --out")
    if args.init and args.resume:
        log.warning("--init is ignored with --resume (the run's own checkpoint is loaded)")
    return out, data, found


def run_loop(args, tuner, *, save_checkpoint: Callable, out: Path, config, precision: str, device,
             state_path: Path | None, t_load: float, log: logging.Logger, describe: Callable[[float], None],
             eval_unit: str, save_final: Callable[[dict], tuple[dict, str]], done_prefix: str = "") -> dict:
    """The loop of a trainer's ``train``: resume (``state_path``: the trainer state to restore, with a warning
    when the saved config differs), the banner (``describe(setup seconds)``), the fixed-batch evaluation
    (``eval_indices`` of ``--eval-samples``; before the first and after the last step, every ``--eval-every``),
    one ``train_log.jsonl`` line per step and evaluation, ``save_checkpoint(out, tuner, run args)`` (the
    network's) every ``--save-every`` steps and at the end, then ``save_final(run_args)`` → ``(summary entries, "what → file" for the last line)``.

    Returns the summary: ``step``, ``start_step``, ``losses`` (per step of this run), ``eval``
    (``[{step, loss}]``), ``seconds_per_step``, ``samples_per_second`` (optimiser steps only, without
    evaluation and checkpoint writing), ``checkpoints`` (written), ``device``, ``precision`` + ``save_final``'s.
    A non-finite loss raises :class:`TrainError` (code 1)."""
    run_args = dict(vars(args))
    run_args.update(precision=precision, device=str(device))
    if state_path is not None:
        tensors, meta = read_trainer_state(state_path)
        try:
            tuner.load_state_tensors(tensors, meta, state_path.name)
        except CheckpointError as e:
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
    describe(t_load)

    eval_idx = eval_indices(len(tuner.dataset), args.eval_samples)
    evals, losses, written, step_seconds = [], [], [], []
    log_f = open(out / "train_log.jsonl", "a", encoding="utf-8")

    def evaluate():
        if eval_idx:
            v = tuner.evaluate(eval_idx, seed=args.seed + 99991)
            evals.append({"step": tuner.step, "loss": v})
            log_f.write(json.dumps({"step": tuner.step, "eval_loss": v}) + "\n")
            log_f.flush()
            print(f"eval step {tuner.step}: fixed-batch loss {v:.6f} ({len(eval_idx)} {eval_unit})", flush=True)

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
                written.append(save_checkpoint(out, tuner, run_args))
        if losses:
            evaluate()
    finally:
        log_f.close()
    extra, final_text = save_final(run_args)
    steps_run, train_s = len(losses), sum(step_seconds)
    summary = {"step": tuner.step, "start_step": start, "losses": losses, "eval": evals,
               "seconds_per_step": train_s / steps_run if steps_run else None,
               "samples_per_second": steps_run * config.batch / train_s if steps_run and train_s > 0 else None,
               "checkpoints": [str(a) for a, _ in written], "device": str(device), "precision": precision}
    summary.update(extra)
    print(f"done: {done_prefix}step {tuner.step}; {steps_run} step(s) in this run"
          + (f", {summary['seconds_per_step']:.2f} s/step, {summary['samples_per_second']:.2f} samples/s"
             if steps_run else "") + f"; {final_text}", flush=True)
    return summary


def batch_text(config) -> str:
    """``"batch B = n x m"`` of a train config (``n`` micro-batches of ``m``)."""
    return f"batch {config.batch} = {math.ceil(config.batch / config.micro_batch)} x {config.micro_batch}"
