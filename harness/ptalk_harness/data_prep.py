"""What the two data preparations share (:mod:`.identity_data` for IdentityNet, :mod:`.animatenet_data` for
AnimateNet): the error with an exit status (:class:`PrepareError`) and the ``main()`` wrapper
(:func:`prepare_main`), the common options (:func:`add_face_embed_args`, :func:`parse_prepare_args`), finding the
media (:func:`find_media`), the input checks (:func:`check_inputs`, :func:`check_insightface`), square face crops
(:func:`crop_frame`), file names (:func:`safe_name`) and the output files (:func:`prepare_output`,
:func:`write_embeddings`, :func:`write_jsonl`).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from portraittalk.ptalk_models import identity

from .training_cli import LOG_FORMAT

VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".flv", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class PrepareError(ValueError):
    """Bad input to a data preparation (``prepare_dataset``; exit status ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------- main()
def prepare_main(prog: str, quiet: bool, prepare: Callable[[], dict]) -> int:
    """``main()`` of a data preparation: INFO logging (WARNING with ``quiet``), ``prepare()``, its summary as a
    JSON line on stdout; exit status 0, ``PrepareError.code`` or 1 for other runtime failures (message on
    stderr)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format=LOG_FORMAT)
    try:
        summary = prepare()
    except PrepareError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except RuntimeError as e:  # InsightFaceUnavailable and other runtime failures with a message
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def add_face_embed_args(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--insightface-root``, ``--insightface-model`` of the data preparations."""
    p.add_argument("--backend", choices=("dlib", "insightface"), default="dlib",
                   help="Face Embed backend: dlib 128-D (embedded, offline) or insightface 512-D ArcFace (what "
                        "IP-Adapter-FaceID weights expect; needs the insightface package and models)")
    p.add_argument("--insightface-root", help="folder holding models/<antelopev2|buffalo_l>/ (ComfyUI's "
                                              "models/insightface; default ~/.insightface)")
    p.add_argument("--insightface-model", choices=("antelopev2", "buffalo_l"), default="antelopev2")


def parse_prepare_args(p: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Add ``--overwrite`` and ``-q/--quiet`` (the last options of a data preparation) and parse ``argv``."""
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ inputs
def find_media(src: Path) -> tuple[list[Path], list[Path]]:
    """(videos, images) under ``src``, recursively, sorted by relative path."""
    videos, images = [], []
    for p in sorted(src.rglob("*"), key=lambda q: q.relative_to(src).as_posix()):
        if not p.is_file() or p.name.startswith("."):
            continue
        s = p.suffix.lower()
        if s in VIDEO_SUFFIXES:
            videos.append(p)
        elif s in IMAGE_SUFFIXES:
            images.append(p)
    return videos, images


def crop_frame(image: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """``image`` (uint8 RGB) cropped to ``box`` = (x0, y0, side), edges replicated outside the image, resized to
    ``size`` x ``size`` (INTER_AREA when shrinking, INTER_CUBIC when enlarging)."""
    import cv2

    x0, y0, side = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    crop = image[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interp))


def safe_name(rel: str) -> str:
    """A file name made of a relative source path: ``/`` → ``__``, every run of other characters than letters,
    digits, ``.``, ``_``, ``-`` → ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__"))


def check_inputs(src: Path, what: str, size: int, crop_scale: float, backend: str) -> None:
    """:class:`PrepareError` for a missing ``src`` (or not a folder: "put the <what> in a folder"), a ``--size``
    that is not a positive multiple of 8, a ``--crop-scale`` below 1 or an unknown ``--backend``."""
    if not src.exists():
        raise PrepareError(f"--src {src} does not exist")
    if not src.is_dir():
        raise PrepareError(f"--src {src} is not a folder; put the {what} in a folder")
    if size < 8 or size % 8:
        raise PrepareError(f"--size must be a positive multiple of 8, got {size}")
    if crop_scale < 1.0:
        raise PrepareError(f"--crop-scale must be >= 1 (the crop must contain the face), got {crop_scale}")
    if backend not in identity.BACKENDS:
        raise PrepareError(f"--backend must be one of {identity.BACKENDS}, got {backend!r}")


def check_insightface(backend: str, root, model: str) -> None:
    """With ``backend`` insightface: fail (:class:`PrepareError`, code 1) before any work when its models are
    not there."""
    if backend == "insightface":
        try:
            identity.insightface_model_file(root, model)
        except identity.InsightFaceUnavailable as e:
            raise PrepareError(str(e), code=1) from None


# ------------------------------------------------------------------------------------------------ outputs
def prepare_output(out: Path, folder: Path, markers: tuple[str, ...], other_files: tuple[str, ...],
                   overwrite: bool) -> None:
    """Make ``out`` ready for a new dataset: when one of the ``markers`` files exists or ``folder`` is not empty,
    refuse without ``overwrite`` (:class:`PrepareError`), else remove ``folder`` and the ``markers`` and
    ``other_files``; then create ``folder``."""
    if any((out / m).exists() for m in markers) or (folder.is_dir() and any(folder.iterdir())):
        if not overwrite:
            raise PrepareError(f"{out} already holds a dataset; pass --overwrite to replace it")
        shutil.rmtree(folder, ignore_errors=True)
        for name in markers + other_files:
            (out / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)


def write_embeddings(path: Path, embeddings: list[np.ndarray], meta: dict[str, str]) -> None:
    """``{"embeddings": float32 [N, D]}`` with ``meta`` as safetensors at ``path`` (atomically)."""
    import torch
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"embeddings": torch.from_numpy(np.stack(embeddings))}, str(tmp), metadata=meta)
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
