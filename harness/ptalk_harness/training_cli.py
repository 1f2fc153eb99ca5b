"""The command line the two trainers share (:mod:`.train_identitynet`, :mod:`.train_animatenet`; the data
preparations' shared part is :mod:`.data_prep`):

* the error with an exit status (:class:`TrainError`) and the ``main()`` wrapper that turns it into a message
  and an exit code (:func:`train_main`);
* the common trainer options (:func:`add_io_args`, :func:`add_optim_args`, :func:`add_run_args`,
  :func:`parse_train_args`), the device/precision choice (:func:`device_and_precision`, :func:`autocast_dtype`)
  and booting ComfyUI with this pack on that device (:func:`boot_pack`).

The SD1.5 checkpoint loaded for training is :mod:`.sd15`; the run checks and the run loop are :mod:`.train_loop`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

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
