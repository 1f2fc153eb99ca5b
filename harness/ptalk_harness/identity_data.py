"""Prepare face frames + Face Embed embeddings for IdentityNet masked fine-tuning (PortraitTalk §III-A): the
library behind ``scripts/prepare_identity_data.py``.

    python scripts/prepare_identity_data.py --src VIDEOS_OR_IMAGES --out DATA [--captions FILE]
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
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portraittalk.ptalk_models import face, identity
from portraittalk.ptalk_models import identity_training as T

from .data_prep import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, PrepareError, add_face_embed_args, check_insightface,
                        check_inputs, crop_frame, find_media, parse_prepare_args, prepare_main, prepare_output,
                        safe_name, write_embeddings, write_jsonl)

log = logging.getLogger("ptalk.prepare_identity_data")


# ------------------------------------------------------------------------------------------------ captions
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


# ------------------------------------------------------------------------------------------------ frames
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


def read_source(path: Path, is_video: bool, frames_per_video: int) -> list[tuple[int, np.ndarray]]:
    """``[(frame index, uint8 RGB [H, W, 3])]`` of one source: ``frames_per_video`` frames evenly spaced over a
    video (:func:`sample_video_frames`; PyAV raises on a broken file), or ``[(0, image)]`` of an image (``[]``
    when OpenCV cannot read it)."""
    import cv2

    if is_video:
        return sample_video_frames(path, frames_per_video)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return [] if img is None else [(0, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))]


def source_landmarks(frames: list[np.ndarray], is_video: bool) -> list:
    """One-frame :class:`~ptalk_models.landmarks.FaceLandmarks` per frame (the face tracked over a video's frames;
    an image alone), or None for every frame when MediaPipe finds no face."""
    try:
        if is_video:
            lm = face.detect_landmarks(np.stack(frames), on_missing="keep")
            return [lm.frame(i) for i in range(len(frames))]
        return [face.detect_landmarks(frames[0], on_missing="error")]
    except face.NoFaceError:
        return [None] * len(frames)


# ------------------------------------------------------------------------------------------------ main work
@dataclass
class _Run:
    """The settings of one :func:`prepare_dataset` and what it collects: index ``entries``, ``embeddings`` rows,
    the caption keys used, the counts of faceless frames and unreadable sources."""

    src: Path
    frames_dir: Path
    captions: dict[str, str]
    default_caption: str
    frames_per_video: int
    size: int
    crop_scale: float
    embed_options: dict
    entries: list[dict] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    used_keys: set[str] = field(default_factory=set)
    faceless: int = 0
    unreadable: int = 0


def add_source(run: _Run, path: Path, is_video: bool) -> None:
    """Sample, detect, embed, crop and write the frames of one source into ``run`` (a source that cannot be
    decoded, or shows no face, is counted and skipped)."""
    rel = path.relative_to(run.src).as_posix()
    try:
        picked = read_source(path, is_video, run.frames_per_video)
    except Exception as e:  # PyAV/FFmpeg errors on a broken file: skip it, say so
        log.warning("%s: cannot decode (%s: %s); skipped", rel, type(e).__name__, e)
        run.unreadable += 1
        return
    if not picked:
        log.warning("%s: no frames could be read; skipped", rel)
        run.unreadable += 1
        return
    frames = [f for _, f in picked]
    lms = source_landmarks(frames, is_video)
    keep = [i for i, lm in enumerate(lms) if lm is not None and bool(lm.present[0])]
    run.faceless += len(frames) - len(keep)
    if not keep:
        log.info("%s: %d frame(s), no face; skipped", rel, len(frames))
        return
    emb = identity.embed_faces([frames[i] for i in keep], landmarks=[lms[i] for i in keep], **run.embed_options)
    caption, key = caption_for(rel, run.captions, run.default_caption)
    if key is not None:
        run.used_keys.add(key)
    written = 0
    for j, i in enumerate(keep):
        if not bool(emb.present[j]) or not np.isfinite(emb.embeddings[j]).all():
            run.faceless += 1
            continue
        name = f"{safe_name(rel)}_f{picked[i][0]:05d}.png" if is_video else f"{safe_name(rel)}.png"
        write_frame(run, face_crop(frames[i], lms[i].pixels(0), run.size, run.crop_scale), name)
        run.entries.append({"frame": f"{T.FRAMES_DIR}/{name}", "caption": caption,
                            "embedding": len(run.embeddings), "source": rel, "frame_index": int(picked[i][0])})
        run.embeddings.append(np.asarray(emb.embeddings[j], np.float32))
        written += 1
    log.info("%s: %d frame(s) sampled, %d written, %d without a face", rel, len(frames), written,
             len(frames) - written)


def write_frame(run: _Run, crop: np.ndarray, name: str) -> None:
    """Write a face crop (uint8 RGB) as ``<frames dir>/<name>`` (PNG); OSError when OpenCV cannot."""
    import cv2

    if not cv2.imwrite(str(run.frames_dir / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {run.frames_dir / name}")


def prepare_dataset(src, out, captions: str | Path | None = None, frames_per_video: int = 8, size: int = 512,
                    backend: str = "dlib", insightface_root: str | Path | None = None,
                    insightface_model: str = "antelopev2", crop_scale: float = 1.8,
                    default_caption: str | None = None, overwrite: bool = False) -> dict:
    """Build the dataset (module docstring) in ``out`` from the media in ``src``; returns a summary dict
    (sources, videos, images, frames, faceless, unreadable, backend, dim, seconds).

    Raises :class:`PrepareError` (``code`` 2 for bad arguments, 1 when no frame has a face) and
    ``InsightFaceUnavailable`` (insightface backend without its package/models)."""
    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    check_inputs(src, "videos/images", size, crop_scale, backend)
    if frames_per_video < 1:
        raise PrepareError(f"--frames-per-video must be >= 1, got {frames_per_video}")
    videos, images = find_media(src)
    if not videos and not images:
        raise PrepareError(f"no videos or images found in {src} (looked recursively for "
                           f"{', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)})")
    check_insightface(backend, insightface_root, insightface_model)
    caps = read_captions(Path(captions)) if captions else {}
    run = _Run(src, out / T.FRAMES_DIR, caps, default_caption or T.DEFAULT_CAPTION, frames_per_video, size,
               crop_scale, {"backend": backend, "insightface_root": insightface_root,
                            "insightface_model": insightface_model})
    prepare_output(out, run.frames_dir, (T.INDEX_FILE,), (T.EMBEDDINGS_FILE,), overwrite)
    sources = [(p, True) for p in videos] + [(p, False) for p in images]
    for p, is_video in sources:
        add_source(run, p, is_video)
    unused = sorted(set(caps) - run.used_keys)
    if unused:
        log.warning("%d caption(s) matched no source file, e.g. %s", len(unused), ", ".join(unused[:3]))
    if not run.entries:
        raise PrepareError(f"no face found in any of the sampled frames of the {len(sources)} file(s) in {src} "
                           f"({run.faceless} faceless frame(s), {run.unreadable} unreadable file(s))", code=1)
    dim = int(run.embeddings[0].shape[0])
    meta = {"format": T.DATA_FORMAT, "backend": backend, "dim": str(dim), "count": str(len(run.entries)),
            "size": str(size), "crop_scale": str(crop_scale), "frames_per_video": str(frames_per_video),
            "source": str(src)}
    write_embeddings(out / T.EMBEDDINGS_FILE, run.embeddings, meta)
    write_jsonl(out / T.INDEX_FILE, run.entries)
    summary = {"sources": len(sources), "videos": len(videos), "images": len(images), "frames": len(run.entries),
               "faceless": run.faceless, "unreadable": run.unreadable, "backend": backend, "dim": dim,
               "captioned_sources": len(run.used_keys), "seconds": round(time.perf_counter() - t0, 2)}
    log.info("wrote %d frame(s) from %d source(s) (%d video(s), %d image(s)) to %s; skipped %d faceless frame(s), "
             "%d unreadable file(s); %s %d-D embeddings", len(run.entries), len(sources), len(videos), len(images),
             out, run.faceless, run.unreadable, backend, dim)
    return summary


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(
        prog="scripts/prepare_identity_data.py",
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
    add_face_embed_args(p)
    return parse_prepare_args(p, argv)


def main(argv=None) -> int:
    args = _parse(argv)
    return prepare_main("prepare_identity_data", args.quiet, lambda: prepare_dataset(
        args.src, args.out, captions=args.captions, frames_per_video=args.frames_per_video, size=args.size,
        backend=args.backend, insightface_root=args.insightface_root, insightface_model=args.insightface_model,
        crop_scale=args.crop_scale, default_caption=args.default_caption, overwrite=args.overwrite))
