"""Prepare consecutive frame pairs of talking-head videos for AnimateNet training (PortraitTalk §III-B): the
library behind ``scripts/prepare_animatenet_data.py``.

    python scripts/prepare_animatenet_data.py --src VIDEOS --out DATA [--size 512] [--max-frames N] [--stride K]
        [--crop-scale 1.8] [--backend dlib|insightface] [--insightface-root DIR] [--embed-frames 8]
        [--contour-detail 128] [--caption "a photo of a person talking"] [--overwrite] [-q]

For every video under ``--src`` (searched recursively, sorted; mp4, mpg, flv, mov, avi, mkv, webm, m4v):

* frames ``0, K, 2K, …`` (``--stride`` K), at most ``--max-frames`` of them, decoded streaming with PyAV (two
  passes: landmarks, then crops — memory holds a few frames, not the clip);
* the face's 478 MediaPipe landmarks per frame (:func:`ptalk_models.face.detect_landmarks`, the face tracked
  from frame to frame); frames without a face are kept but flagged (no pair uses them);
* ONE face-centred square crop box per clip, fixed over the clip so the head motion stays in the data: centre =
  the middle of the range of the per-frame landmark-box centres, side = ``--crop-scale`` x the largest
  per-frame landmark box + the range the face centre moves over (edges replicated where the box leaves the
  image); every frame cropped with it and resized to ``--size`` (OpenCV area/cubic) →
  ``clips/<clip>/frames/NNNNN.png``;
* the landmarks transformed into the crop (exact: shift and scale of the normalised points; z scaled like x)
  → ``clips/<clip>/landmarks.npz``;
* the head contour (Contour Guide: :func:`ptalk_models.contour.head_contour` with the frame's landmarks,
  ``--contour-detail``) of every crop → ``clips/<clip>/contours/NNNNN.png``;
* the Face Embed identity embedding of the clip (:func:`ptalk_models.identity.embed_faces` on up to
  ``--embed-frames`` full frames spread over the clip, their mean; dlib 128-D by default, insightface 512-D
  with its models) → a row of ``embeddings.safetensors``;
* the clip's audio track → ``clips/<clip>/audio.wav`` (16-bit PCM at the source's rate; frame i of the source is
  at i / fps seconds); clips without audio get ``"audio": null``;
* ``clips.jsonl`` (one line per clip) and ``index.jsonl`` (one line per pair of consecutive sampled frames
  (t, t−1) that both show a face; see :mod:`ptalk_models.animatenet_training` for every field).

Exit status: 0 done; 1 nothing usable (no video with two consecutive face frames, insightface unavailable);
2 bad arguments (missing or empty ``--src``, bad sizes, existing output without ``--overwrite``).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portraittalk.ptalk_models import animatenet_training as T
from portraittalk.ptalk_models import contour, face, identity, media
from portraittalk.ptalk_models.landmarks import NUM_LANDMARKS, FaceLandmarks

from .data_prep import (VIDEO_SUFFIXES, PrepareError, add_face_embed_args, check_insightface, check_inputs,
                        crop_frame, find_media, parse_prepare_args, prepare_main, prepare_output, safe_name,
                        write_embeddings, write_jsonl)

log = logging.getLogger("ptalk.prepare_animatenet_data")
#: Frames per landmark-detection call (a multi-frame batch: MediaPipe tracks the face, no tile search).
DETECT_CHUNK = 32


# ------------------------------------------------------------------------------------------------ decoding
def iter_video_frames(path: Path, stride: int = 1, max_frames: int | None = None):
    """Yield ``(source frame index, uint8 RGB [H, W, 3])`` of frames ``0, stride, 2·stride, …`` (at most
    ``max_frames``), decoded streaming with PyAV."""
    import av

    taken = 0
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if max_frames is not None and taken >= max_frames:
                break
            if i % stride:
                continue
            taken += 1
            yield i, f.to_ndarray(format="rgb24")


def video_fps(path: Path) -> float:
    """Average frame rate of a video's first video stream (0.0 when unknown)."""
    import av

    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def detect_clip_landmarks(path: Path, stride: int, max_frames: int | None):
    """Pass 1: (source frame indices, normalised points ``[T, 478, 3]``, present ``[T]``, (W, H)) of the sampled
    frames; the face is tracked across frames (nearest to the previous frame's)."""
    n_lm = NUM_LANDMARKS
    indices, points, present, chunk, size, previous = [], [], [], [], None, None

    def flush():
        nonlocal previous
        if not chunk:
            return
        batch = np.stack([f for _, f in chunk])
        try:
            lm = face.detect_landmarks(batch, on_missing="keep", previous=previous)
            pts, pres = lm.points, lm.present
        except face.NoFaceError:
            pts, pres = np.zeros((len(chunk), n_lm, 3), np.float32), np.zeros(len(chunk), bool)
        for k, (i, _) in enumerate(chunk):
            indices.append(i)
            points.append(pts[k])
            present.append(bool(pres[k]))
        if pres.any():
            previous = pts[np.flatnonzero(pres)[-1]]
        chunk.clear()

    for i, frame in iter_video_frames(path, stride, max_frames):
        size = (frame.shape[1], frame.shape[0])
        chunk.append((i, frame))
        if len(chunk) >= DETECT_CHUNK:
            flush()
    flush()
    if not indices:
        return [], np.zeros((0, n_lm, 3), np.float32), np.zeros(0, bool), size
    return indices, np.stack(points).astype(np.float32), np.asarray(present, bool), size


def clip_crop_box(points: np.ndarray, present: np.ndarray, size_wh: tuple[int, int], scale: float
                  ) -> tuple[int, int, int]:
    """The clip's fixed square crop ``(x0, y0, side)`` in source pixels (module docstring): from the landmark
    boxes of the frames with a face."""
    w, h = size_wh
    px = points[present, :, :2] * np.array([w, h], np.float32)          # [T', 478, 2]
    lo, hi = px.min(1), px.max(1)                                        # per-frame boxes
    centres = (lo + hi) / 2.0
    face_side = float((hi - lo).max())
    c_lo, c_hi = centres.min(0), centres.max(0)
    cx, cy = (c_lo + c_hi) / 2.0
    side = max(int(round(scale * face_side + float((c_hi - c_lo).max()))), 8)
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def crop_landmarks(points: np.ndarray, size_wh: tuple[int, int], box: tuple[int, int, int]) -> np.ndarray:
    """Normalised points ``[..., 478, 3]`` of the source frames → normalised points of the crop ``box``:
    ``x' = (x·W − x0) / side``, ``y' = (y·H − y0) / side``, ``z' = z·W / side`` (MediaPipe's z is on x's scale)."""
    w, h = size_wh
    x0, y0, side = box
    out = np.empty_like(points, dtype=np.float32)
    out[..., 0] = (points[..., 0] * w - x0) / side
    out[..., 1] = (points[..., 1] * h - y0) / side
    out[..., 2] = points[..., 2] * w / side
    return out


# ------------------------------------------------------------------------------------------------ main work
@dataclass
class _Run:
    """The settings of one :func:`prepare_dataset` and what it collects: the ``clips`` and ``pairs`` entries,
    the ``embeddings`` rows, the counts of faceless frames, frames written and clips without audio, and the
    skipped sources."""

    src: Path
    out: Path
    size: int
    max_frames: int | None
    stride: int
    crop_scale: float
    embed_frames: int
    contour_detail: int
    caption: str
    embed_options: dict
    clips: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    faceless: int = 0
    frames_written: int = 0
    no_audio: int = 0
    skipped: list[str] = field(default_factory=list)


def check_options(stride: int, max_frames: int | None, embed_frames: int, contour_detail: int) -> None:
    """:class:`PrepareError` for a ``--stride`` below 1, ``--max-frames`` below 2, ``--embed-frames`` below 1 or a
    ``--contour-detail`` outside 32–512."""
    if stride < 1:
        raise PrepareError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 2:
        raise PrepareError(f"--max-frames must be >= 2 (a pair needs two frames), got {max_frames}")
    if embed_frames < 1:
        raise PrepareError(f"--embed-frames must be >= 1, got {embed_frames}")
    if not 32 <= contour_detail <= 512:
        raise PrepareError(f"--contour-detail must be 32–512, got {contour_detail}")


def write_crops(run: _Run, path: Path, rel: str, name: str, indices: list[int], box: tuple[int, int, int],
                lm, embed_at: set[int], pts: np.ndarray, size_wh: tuple[int, int]):
    """Pass 2 over a clip: every sampled frame cropped with ``box`` and its head contour (with the crop's
    landmarks ``lm``) written to ``clips/<name>/frames|contours/NNNNN.png``. Returns (frame files, contour files,
    the full frames at ``embed_at``, their landmarks in the source frame). :class:`PrepareError` (code 1) when the
    second decoding does not give the frames of the first."""
    import cv2

    cdir = run.out / T.CLIPS_DIR / name
    (cdir / "frames").mkdir(parents=True, exist_ok=True)
    (cdir / "contours").mkdir(parents=True, exist_ok=True)
    frame_files, contour_files, full, full_lm = [], [], [], []
    k = 0
    for i, frame in iter_video_frames(path, run.stride, run.max_frames):
        if k >= len(indices):
            break
        if i != indices[k]:
            raise PrepareError(f"{rel}: the second decoding pass gave frame {i}, expected {indices[k]} "
                               "(a non-deterministic decoder?)", code=1)
        crop = crop_frame(frame, box, run.size)
        edges, _ = contour.head_contour(crop, lm.frame(k), detail=run.contour_detail, on_missing="empty")
        f_rel = f"{T.CLIPS_DIR}/{name}/frames/{k:05d}.png"
        c_rel = f"{T.CLIPS_DIR}/{name}/contours/{k:05d}.png"
        if not (cv2.imwrite(str(run.out / f_rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                and cv2.imwrite(str(run.out / c_rel), edges[0])):
            raise OSError(f"could not write {run.out / f_rel}")
        frame_files.append(f_rel)
        contour_files.append(c_rel)
        if k in embed_at:
            full.append(frame)
            full_lm.append(FaceLandmarks.from_points(pts[k], size_wh))
        k += 1
    if k != len(indices):
        raise PrepareError(f"{rel}: the second decoding pass gave {k} frames, the first {len(indices)}", code=1)
    return frame_files, contour_files, full, full_lm


def clip_embedding(run: _Run, full: list[np.ndarray], full_lm: list) -> np.ndarray | None:
    """The clip's Face Embed embedding: the mean over the frames where a face is embedded (L2-normalised for
    insightface), or None when there is none."""
    emb = identity.embed_faces(full, landmarks=full_lm, **run.embed_options)
    ok = emb.present & np.isfinite(emb.embeddings).all(1)
    if not ok.any():
        return None
    vec = emb.embeddings[ok].mean(0)
    if run.embed_options["backend"] == "insightface":
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    return vec


def write_audio(run: _Run, path: Path, rel: str, name: str) -> str | None:
    """The clip's audio track as ``clips/<name>/audio.wav`` (its path in the dataset), or None (with a warning)
    when the source has no usable audio."""
    try:
        wave, rate = media.read_audio(path)
        audio_rel = f"{T.CLIPS_DIR}/{name}/audio.wav"
        media.write_wav(run.out / audio_rel, wave, rate)
    except Exception as e:  # no audio stream (IndexError), no samples (ValueError), undecodable audio
        log.warning("%s: no usable audio track (%s: %s); the clip is kept without audio", rel,
                    type(e).__name__, e)
        run.no_audio += 1
        return None
    return audio_rel


def clip_pairs(clip: dict, present: np.ndarray) -> list[dict]:
    """The ``index.jsonl`` entries of a clip: one per pair of consecutive sampled frames (t, t−1) both with a
    face."""
    name, frames, indices, fps = clip["name"], clip["frames"], clip["frame_indices"], clip["fps"]
    return [{"clip": name, "t": t, "t_prev": t - 1, "frame": frames[t], "previous": frames[t - 1],
             "contour_previous": clip["contours"][t - 1], "embedding": clip["embedding"], "caption": clip["caption"],
             "audio": clip["audio"], "time": indices[t] / fps if fps else None}
            for t in range(1, len(indices)) if present[t] and present[t - 1]]


def add_clip(run: _Run, path: Path) -> None:
    """Both passes over one video and its files (module docstring) into ``run``; a video that cannot be decoded,
    has fewer than two face frames, or whose face Face Embed cannot embed is skipped (with a warning)."""
    rel = path.relative_to(run.src).as_posix()
    name = safe_name(rel.rsplit(".", 1)[0])
    try:
        fps = video_fps(path)
        indices, pts, present, size_wh = detect_clip_landmarks(path, run.stride, run.max_frames)
    except Exception as e:  # PyAV/FFmpeg errors on a broken file: skip it, say so
        log.warning("%s: cannot decode (%s: %s); skipped", rel, type(e).__name__, e)
        run.skipped.append(rel)
        return
    n_faces = int(present.sum())
    run.faceless += len(indices) - n_faces
    if len(indices) < 2 or n_faces < 2:
        log.warning("%s: %d sampled frame(s), %d with a face: no pair; skipped", rel, len(indices), n_faces)
        run.skipped.append(rel)
        return
    box = clip_crop_box(pts, present, size_wh, run.crop_scale)
    crop_pts = crop_landmarks(pts, size_wh, box)
    lm = FaceLandmarks.from_points(crop_pts, (run.size, run.size), fps / run.stride if fps else 0.0, present,
                                   {"source": rel, "crop": list(box)})
    present_idx = np.flatnonzero(present)
    embed_at = {int(present_idx[int(round(x))]) for x in np.linspace(0, len(present_idx) - 1,
                                                                      min(run.embed_frames, len(present_idx)))}
    frame_files, contour_files, full, full_lm = write_crops(run, path, rel, name, indices, box, lm, embed_at, pts,
                                                            size_wh)
    cdir = run.out / T.CLIPS_DIR / name
    vec = clip_embedding(run, full, full_lm)
    if vec is None:
        log.warning("%s: Face Embed found no face in the %d frame(s) it was given; skipped", rel, len(full))
        shutil.rmtree(cdir, ignore_errors=True)
        run.skipped.append(rel)
        return
    np.savez(cdir / "landmarks.npz", points=crop_pts, present=present, fps=np.float64(lm.fps),
             image_size=np.array([run.size, run.size]), frame_indices=np.asarray(indices))
    audio_rel = write_audio(run, path, rel, name)
    row = len(run.embeddings)
    run.embeddings.append(np.asarray(vec, np.float32))
    clip = {"name": name, "source": rel, "fps": fps, "stride": run.stride, "crop": list(box),
            "source_size": list(size_wh), "size": run.size, "frames": frame_files, "contours": contour_files,
            "frame_indices": [int(i) for i in indices], "landmarks": f"{T.CLIPS_DIR}/{name}/landmarks.npz",
            "present": [bool(p) for p in present], "embedding": row, "caption": run.caption,
            "audio": audio_rel, "audio_source": rel if audio_rel else None}
    run.clips.append(clip)
    pairs = clip_pairs(clip, present)
    run.pairs.extend(pairs)
    run.frames_written += len(indices)
    log.info("%s: %d frame(s) (stride %d), %d without a face, crop %s, %d pair(s)", rel, len(indices), run.stride,
             len(indices) - n_faces, box, len(pairs))


def prepare_dataset(src, out, size: int = 512, max_frames: int | None = None, stride: int = 1,
                    crop_scale: float = 1.8, backend: str = "dlib", insightface_root=None,
                    insightface_model: str = "antelopev2", embed_frames: int = 8, contour_detail: int = 128,
                    caption: str | None = None, overwrite: bool = False) -> dict:
    """Build the dataset (module docstring) in ``out`` from the videos in ``src``; returns a summary dict
    (videos, clips, frames, pairs, faceless, skipped, no_audio, backend, dim, seconds).

    Raises :class:`PrepareError` (``code`` 2 for bad arguments, 1 when no clip gives a pair)."""
    t0 = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    check_inputs(src, "videos", size, crop_scale, backend)
    check_options(stride, max_frames, embed_frames, contour_detail)
    videos, images = find_media(src)
    if not videos:
        extra = f" (found {len(images)} image(s): AnimateNet needs videos — consecutive frames)" if images else ""
        raise PrepareError(f"no videos found in {src} (looked recursively for {', '.join(VIDEO_SUFFIXES)}){extra}")
    check_insightface(backend, insightface_root, insightface_model)
    prepare_output(out, out / T.CLIPS_DIR, (T.INDEX_FILE, T.CLIPS_FILE), (T.EMBEDDINGS_FILE,), overwrite)
    run = _Run(src, out, size, max_frames, stride, crop_scale, embed_frames, contour_detail,
               caption or T.DEFAULT_CAPTION, {"backend": backend, "insightface_root": insightface_root,
                                              "insightface_model": insightface_model})
    for path in videos:
        add_clip(run, path)
    if not run.pairs:
        raise PrepareError(f"no usable clip among the {len(videos)} video(s) in {src}: none has two consecutive "
                           f"sampled frames with a face ({run.faceless} faceless frame(s), {len(run.skipped)} "
                           "skipped)", code=1)
    dim = int(run.embeddings[0].shape[0])
    meta = {"format": T.DATA_FORMAT, "backend": backend, "dim": str(dim), "count": str(len(run.embeddings)),
            "size": str(size), "crop_scale": str(crop_scale), "stride": str(stride),
            "max_frames": str(max_frames or 0), "contour_detail": str(contour_detail), "source": str(src)}
    write_embeddings(out / T.EMBEDDINGS_FILE, run.embeddings, meta)
    write_jsonl(out / T.CLIPS_FILE, run.clips)
    write_jsonl(out / T.INDEX_FILE, run.pairs)
    summary = {"videos": len(videos), "clips": len(run.clips), "frames": run.frames_written,
               "pairs": len(run.pairs), "faceless": run.faceless, "skipped": run.skipped, "no_audio": run.no_audio,
               "backend": backend, "dim": dim, "size": size, "seconds": round(time.perf_counter() - t0, 2)}
    log.info("wrote %d clip(s), %d frame(s), %d pair(s) to %s; %d faceless frame(s), %d video(s) skipped",
             len(run.clips), run.frames_written, len(run.pairs), out, run.faceless, len(run.skipped))
    return summary


# --------------------------------------------------------------------------------------------------- CLI
def _parse(argv):
    p = argparse.ArgumentParser(prog="scripts/prepare_animatenet_data.py",
                                description="Consecutive face-crop frame pairs, landmarks, contour guides, Face Embed "
                                            "embeddings and audio for AnimateNet training (PortraitTalk §III-B).")
    p.add_argument("--src", required=True, help="folder of talking-head videos (recursive)")
    p.add_argument("--out", required=True, help="dataset folder to write (clips/, clips.jsonl, index.jsonl, "
                                                "embeddings.safetensors)")
    p.add_argument("--size", type=int, default=512, help="side of the square crops in pixels (512)")
    p.add_argument("--max-frames", type=int, default=None, help="at most this many sampled frames per clip (all)")
    p.add_argument("--stride", type=int, default=1, help="take every K-th frame; a pair is (t, t−K) (1)")
    p.add_argument("--crop-scale", type=float, default=1.8,
                   help="crop side as a multiple of the largest per-frame landmark box, plus the head's motion (1.8)")
    add_face_embed_args(p)
    p.add_argument("--embed-frames", type=int, default=8, help="frames per clip averaged into its embedding (8)")
    p.add_argument("--contour-detail", type=int, default=128, help="Contour Guide work-image side, 32–512 (128)")
    p.add_argument("--caption", default=None, help='caption of every clip (default "a photo of a person talking")')
    return parse_prepare_args(p, argv)


def main(argv=None) -> int:
    args = _parse(argv)
    return prepare_main("prepare_animatenet_data", args.quiet, lambda: prepare_dataset(
        args.src, args.out, size=args.size, max_frames=args.max_frames, stride=args.stride,
        crop_scale=args.crop_scale, backend=args.backend, insightface_root=args.insightface_root,
        insightface_model=args.insightface_model, embed_frames=args.embed_frames,
        contour_detail=args.contour_detail, caption=args.caption, overwrite=args.overwrite))
