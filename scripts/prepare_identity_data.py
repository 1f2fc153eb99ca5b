#!/usr/bin/env python3
"""Prepare face frames + Face Embed embeddings for IdentityNet masked fine-tuning (PortraitTalk §III-A).

    python -m scripts.prepare_identity_data --src VIDEOS_OR_IMAGES --out DATA [--captions FILE]
        [--frames-per-video 8] [--size 512] [--backend dlib|insightface] [--insightface-root DIR]
        [--crop-scale 1.8] [--default-caption "a photo of a person"] [--overwrite]

From a folder (searched recursively, in sorted order) of talking-head videos (mp4, mpg, flv, mov, avi, mkv,
webm, m4v) and/or images (png, jpg, jpeg, webp, bmp):

* videos: ``--frames-per-video`` frames evenly spaced over the clip (decoded streaming with PyAV, so long
  or high-resolution clips do not fill memory); images: the image itself;
* the face's 478 MediaPipe landmarks (:func:`ptalk_models.face.detect_landmarks`; in a video the face is
  tracked from frame to frame); frames without a face are skipped and counted;
* a face-centred square crop -- side ``--crop-scale`` x the larger side of the landmarks' bounding box,
  edges replicated where it leaves the image -- resized to ``--size`` (OpenCV area/cubic), written as
  ``frames/<source>_f<frame>.png``;
* the Face Embed identity embedding of the face (:func:`ptalk_models.identity.embed_faces` on the full
  frame with its landmarks, background removed): ``dlib`` 128-D (embedded, offline: the default) or
  ``insightface`` 512-D ArcFace (needs the insightface package and an antelopev2/buffalo_l model pack under
  ``--insightface-root``; 512-D is what IP-Adapter-FaceID weights expect), all rows in
  ``embeddings.safetensors`` (``"embeddings"`` float32 [N, D], metadata format/backend/dim/count/size);
* ``index.jsonl``: one line per frame ``{"frame", "caption", "embedding", "source", "frame_index"}``.

Captions (``--captions``): CSV/TSV rows ``file,caption`` (a header row ``file,caption`` is optional), JSON
lines ``{"file": ..., "caption": ...}`` (``image``/``video``/``path``/``name`` and ``text`` are accepted as
key names), or one JSON object ``{file: caption}``. A file is matched by its path relative to ``--src``, then
its name, then its name without extension; files without a caption get ``--default-caption``.

Exit status: 0 done; 1 nothing usable (no face in any frame, insightface unavailable); 2 bad arguments
(missing/empty ``--src``, unreadable captions file, existing output without ``--overwrite``).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))

import _training_cli as cli  # noqa: E402  (shared with the other training scripts: errors, main(), options)
from _training_cli import PrepareError  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".flv", ".mov", ".avi", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

log = logging.getLogger("ptalk.prepare_identity_data")


def _engine(name: str):
    """``ptalk_models.<name>``: the package already imported (the pack as ComfyUI loaded it, or the tests'
    alias), else this repo's, imported without putting the repo root on sys.path (its ``nodes/`` package
    would shadow ComfyUI's ``nodes`` module)."""
    if "ptalk_models" not in sys.modules:
        try:
            importlib.import_module("ptalk_models")
        except ModuleNotFoundError:
            spec = importlib.util.spec_from_file_location(
                "ptalk_models", REPO_ROOT / "ptalk_models" / "__init__.py",
                submodule_search_locations=[str(REPO_ROOT / "ptalk_models")])
            module = importlib.util.module_from_spec(spec)
            sys.modules["ptalk_models"] = module
            spec.loader.exec_module(module)
    return importlib.import_module(f"ptalk_models.{name}")


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


def read_captions(path: Path) -> dict[str, str]:
    """File key → caption from a CSV/TSV, JSON-lines or JSON-object file (see the module docstring)."""
    if not path.is_file():
        raise PrepareError(f"--captions {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    out: dict[str, str] = {}
    stripped = text.lstrip()
    file_keys, cap_keys = ("file", "image", "video", "path", "name", "filename"), ("caption", "text", "prompt")
    if path.suffix.lower() in (".json", ".jsonl") or stripped.startswith(("{", "[")):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        rows = []
        if isinstance(obj, dict) and not any(k in obj for k in file_keys):
            return {str(k): str(v) for k, v in obj.items()}
        if isinstance(obj, list):
            rows = obj
        elif isinstance(obj, dict):
            rows = [obj]
        else:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PrepareError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict):
                raise PrepareError(f"{path}: entry {n} is not an object with 'file' and 'caption'")
            f = next((r[k] for k in file_keys if k in r), None)
            c = next((r[k] for k in cap_keys if k in r), None)
            if f is None or c is None:
                raise PrepareError(f"{path}: entry {n} needs a file key ({'/'.join(file_keys)}) and a caption key "
                                   f"({'/'.join(cap_keys)}), got {sorted(r)}")
            out[str(f)] = str(c)
        return out
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" or ("\t" in text and "," not in text.split("\n")[0]) \
        else "excel"
    for n, row in enumerate(csv.reader(text.splitlines(), dialect=dialect), 1):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise PrepareError(f"{path}:{n}: expected 'file,caption', got {row!r}")
        if n == 1 and row[0].strip().lower() in file_keys and row[1].strip().lower() in cap_keys:
            continue  # header
        out[row[0].strip()] = ",".join(row[1:]).strip()
    return out


def caption_for(rel: str, captions: dict[str, str], default: str) -> tuple[str, str | None]:
    """(caption, the captions key that matched or None) for a source file path relative to --src."""
    name = rel.rsplit("/", 1)[-1]
    for key in (rel, name, name.rsplit(".", 1)[0]):
        if key in captions:
            return captions[key], key
    return default, None


def sample_video_frames(path: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` frames evenly spaced over a video (all frames when it has fewer): ``[(frame index, uint8
    RGB [H, W, 3])]``. Decodes streaming with PyAV (one pass to count frames when the container does not
    say, one to pick), so memory holds only the picked frames."""
    import av

    with av.open(str(path)) as c:
        total = int(c.streams.video[0].frames or 0)
    if total <= 0:
        with av.open(str(path)) as c:
            total = sum(1 for _ in c.decode(c.streams.video[0]))
    if total <= 0:
        return []
    want = sorted({int(round(x)) for x in np.linspace(0, total - 1, min(count, total))})
    picked, wanted = [], set(want)
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i in wanted:
                picked.append((i, f.to_ndarray(format="rgb24")))
            if i >= want[-1]:
                break
    return picked


def face_crop(image: np.ndarray, pts_px: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Face-centred square crop of ``image`` (uint8 RGB) resized to ``size``: centre = centre of the
    landmarks' bounding box, side = ``scale`` x its larger side; edges replicated outside the image."""
    lo, hi = pts_px.min(0), pts_px.max(0)
    cx, cy = (lo + hi) / 2.0
    side = max(int(round(float(max(hi - lo)) * scale)), 8)
    return crop_frame(image, (int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side), size)


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


def _safe_name(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__"))


def check_inputs(src: Path, what: str, size: int, crop_scale: float, backend: str, identity) -> None:
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


def check_insightface(identity, backend: str, root, model: str) -> None:
    """With ``backend`` insightface: fail (:class:`PrepareError`, code 1) before any work when its models are
    not there."""
    if backend == "insightface":
        try:
            identity.insightface_model_file(root, model)
        except identity.InsightFaceUnavailable as e:
            raise PrepareError(str(e), code=1) from None


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


# ------------------------------------------------------------------------------------------------ main work
def prepare_dataset(src, out, captions: str | Path | None = None, frames_per_video: int = 8, size: int = 512,
                    backend: str = "dlib", insightface_root: str | Path | None = None,
                    insightface_model: str = "antelopev2", crop_scale: float = 1.8,
                    default_caption: str | None = None, overwrite: bool = False) -> dict:
    """Build the dataset (module docstring) in ``out`` from the media in ``src``; returns a summary dict
    (sources, videos, images, frames, faceless, unreadable, backend, dim, seconds).

    Raises :class:`PrepareError` (``code`` 2 for bad arguments, 1 when no frame has a face) and
    ``InsightFaceUnavailable`` (insightface backend without its package/models)."""
    import cv2

    training = _engine("identity_training")
    face, identity = _engine("face"), _engine("identity")
    default_caption = default_caption or training.DEFAULT_CAPTION
    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    check_inputs(src, "videos/images", size, crop_scale, backend, identity)
    if frames_per_video < 1:
        raise PrepareError(f"--frames-per-video must be >= 1, got {frames_per_video}")
    videos, images = find_media(src)
    if not videos and not images:
        raise PrepareError(f"no videos or images found in {src} (looked recursively for "
                           f"{', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)})")
    check_insightface(identity, backend, insightface_root, insightface_model)
    caps = read_captions(Path(captions)) if captions else {}
    frames_dir = out / training.FRAMES_DIR
    prepare_output(out, frames_dir, (training.INDEX_FILE,), (training.EMBEDDINGS_FILE,), overwrite)

    entries, embeddings, used_keys = [], [], set()
    faceless = unreadable = 0
    sources = [(p, True) for p in videos] + [(p, False) for p in images]
    for p, is_video in sources:
        rel = p.relative_to(src).as_posix()
        try:
            if is_video:
                picked = sample_video_frames(p, frames_per_video)
            else:
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                picked = [] if img is None else [(0, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))]
        except Exception as e:  # PyAV/FFmpeg errors on a broken file: skip it, say so
            log.warning("%s: cannot decode (%s: %s); skipped", rel, type(e).__name__, e)
            unreadable += 1
            continue
        if not picked:
            log.warning("%s: no frames could be read; skipped", rel)
            unreadable += 1
            continue
        frames = [f for _, f in picked]
        try:
            if is_video:
                lm = face.detect_landmarks(np.stack(frames), on_missing="keep")
                lms = [lm.frame(i) for i in range(len(frames))]
            else:
                lms = [face.detect_landmarks(frames[0], on_missing="error")]
        except face.NoFaceError:
            lms = [None] * len(frames)
        keep = [i for i, lm in enumerate(lms) if lm is not None and bool(lm.present[0])]
        n_skip = len(frames) - len(keep)
        faceless += n_skip
        if not keep:
            log.info("%s: %d frame(s), no face; skipped", rel, len(frames))
            continue
        emb = identity.embed_faces([frames[i] for i in keep], landmarks=[lms[i] for i in keep], backend=backend,
                                   insightface_root=insightface_root, insightface_model=insightface_model)
        caption, key = caption_for(rel, caps, default_caption)
        if key is not None:
            used_keys.add(key)
        written = 0
        for j, i in enumerate(keep):
            if not bool(emb.present[j]) or not np.isfinite(emb.embeddings[j]).all():
                faceless += 1
                continue
            crop = face_crop(frames[i], lms[i].pixels(0), size, crop_scale)
            idx = picked[i][0]
            name = f"{_safe_name(rel)}_f{idx:05d}.png" if is_video else f"{_safe_name(rel)}.png"
            if not cv2.imwrite(str(frames_dir / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {frames_dir / name}")
            entries.append({"frame": f"{training.FRAMES_DIR}/{name}", "caption": caption,
                            "embedding": len(embeddings), "source": rel, "frame_index": int(idx)})
            embeddings.append(np.asarray(emb.embeddings[j], np.float32))
            written += 1
        log.info("%s: %d frame(s) sampled, %d written, %d without a face", rel, len(frames), written,
                 len(frames) - written)
    unused = sorted(set(caps) - used_keys)
    if unused:
        log.warning("%d caption(s) matched no source file, e.g. %s", len(unused), ", ".join(unused[:3]))
    if not entries:
        raise PrepareError(f"no face found in any of the sampled frames of the {len(sources)} file(s) in {src} "
                           f"({faceless} faceless frame(s), {unreadable} unreadable file(s))", code=1)
    dim = int(embeddings[0].shape[0])
    meta = {"format": training.DATA_FORMAT, "backend": backend, "dim": str(dim), "count": str(len(entries)),
            "size": str(size), "crop_scale": str(crop_scale), "frames_per_video": str(frames_per_video),
            "source": str(src)}
    write_embeddings(out / training.EMBEDDINGS_FILE, embeddings, meta)
    write_jsonl(out / training.INDEX_FILE, entries)
    summary = {"sources": len(sources), "videos": len(videos), "images": len(images), "frames": len(entries),
               "faceless": faceless, "unreadable": unreadable, "backend": backend, "dim": dim,
               "captioned_sources": len(used_keys), "seconds": round(time.perf_counter() - t0, 2)}
    log.info("wrote %d frame(s) from %d source(s) (%d video(s), %d image(s)) to %s; skipped %d faceless frame(s), "
             "%d unreadable file(s); %s %d-D embeddings", len(entries), len(sources), len(videos), len(images), out,
             faceless, unreadable, backend, dim)
    return summary


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m scripts.prepare_identity_data",
        description="Face crops + Face Embed embeddings + captions for IdentityNet masked fine-tuning.")
    p.add_argument("--src", required=True, help="folder of talking-head videos and/or face images (recursive)")
    p.add_argument("--out", required=True, help="dataset folder to write (frames/, embeddings.safetensors, "
                                                "index.jsonl)")
    p.add_argument("--captions", help="CSV/TSV (file,caption), JSON lines or JSON object: file name → caption")
    p.add_argument("--default-caption", default=None, help='caption of files without one (default "a photo of '
                                                           'a person")')
    p.add_argument("--frames-per-video", type=int, default=8, help="frames sampled evenly from each video (8)")
    p.add_argument("--size", type=int, default=512, help="side of the square face crops in pixels (512)")
    p.add_argument("--crop-scale", type=float, default=1.8,
                   help="crop side as a multiple of the face landmarks' bounding box (1.8)")
    cli.add_face_embed_args(p)
    return cli.parse_prepare_args(p, argv)


def main(argv=None) -> int:
    args = _parse(argv)
    return cli.prepare_main("prepare_identity_data", args.quiet, lambda: prepare_dataset(
        args.src, args.out, captions=args.captions, frames_per_video=args.frames_per_video, size=args.size,
        backend=args.backend, insightface_root=args.insightface_root, insightface_model=args.insightface_model,
        crop_scale=args.crop_scale, default_caption=args.default_caption, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
