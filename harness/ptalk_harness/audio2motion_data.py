"""Training/evaluation data of the neural audio→motion model: MediaPipe landmarks + 16 kHz speech per clip.

The clips are the real talking-face videos of the shared data (``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``,
see its MANIFEST.md), split by SPEAKER (:data:`HELD_OUT` are never trained on):

=============================  ======================================================  =========
clips                          speakers                                                split
=============================  ======================================================  =========
``grid_s1/*.mp4``               GRID s1                                                 train
``talking/styletalk/*``         Kristi Noem, Obama, Fei-Fei Li, Reagan (mp4 silent +    train
                                the ``.wav`` of the same name)
``talking/retalking/face_1..4`` 4 speakers                                              train
``video/demo3_video.mp4``       the seated young man (its own audio track)              train
``talking/styletalk/andrew_*``  Andrew Ng                                               held out
``video/{brbk7n,lbax4n,lwbsza,  5 GRID speakers other than s1 (``bbaf2n`` IS s1 and is  held out
sbwe5n,id2_vcd_swwp2s}.mpg``    skipped)
``video/crema-d/*.flv``         CREMA-D actor 1001                                      held out
``video/retalking_face_5.mp4``  retalking speaker 5                                     held out
=============================  ======================================================  =========

Per clip :func:`extract_clip` stores ``<cache>/<name>.npz``: ``points`` float32 ``[T, 478, 3]`` (MediaPipe
normalised x/W, y/H, z/W; the FaceLandmarker in VIDEO mode, i.e. tracked), ``present`` bool ``[T]``,
``times`` float64 ``[T]`` (s, each frame's presentation time: some clips have a variable frame rate), ``size``
(W, H), ``audio`` float32 mono 16 kHz (``ptalk_models.audio.prepare_audio``), ``speaker``, ``split``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from portraittalk.ptalk_models.audio import TARGET_SR, prepare_audio
from portraittalk.ptalk_models.face import resolve_model_path
from portraittalk.ptalk_models.landmarks import NUM_LANDMARKS
from portraittalk.ptalk_models.media import read_audio

from .comfy import shared_data_dir

log = logging.getLogger("ptalk.audio2motion_data")

HELD_OUT = ("andrew", "grid_video", "crema_1001", "retalking_5")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "portraittalk" / "audio2motion"


@dataclass(frozen=True)
class Clip:
    name: str      # unique file stem in the cache
    video: Path
    audio: Path    # the video itself when it carries its speech
    speaker: str

    @property
    def split(self) -> str:
        return "heldout" if self.speaker in HELD_OUT or self.speaker.startswith("grid_video") else "train"


def list_clips(data: Path | None = None, grid_clips: int | None = None) -> list[Clip]:
    """Every clip of the table above (GRID s1 limited to its first ``grid_clips`` in name order, if given)."""
    d = Path(data) if data else shared_data_dir()
    clips = []
    grid = sorted((d / "grid_s1").glob("*.mp4"))
    for p in grid[:grid_clips] if grid_clips else grid:
        clips.append(Clip(f"grid_s1_{p.stem}", p, p, "grid_s1"))
    for p in sorted((d / "talking" / "styletalk").glob("*.mp4")):
        who = p.stem.split("_")[0].lower()
        clips.append(Clip(f"styletalk_{p.stem}", p, p.with_suffix(".wav"), who))
    for p in sorted((d / "talking" / "retalking").glob("face_*.mp4")):
        clips.append(Clip(f"retalking_{p.stem}", p, p, f"retalking_{p.stem.split('_')[1]}"))
    clips.append(Clip("demo3", d / "video" / "demo3_video.mp4", d / "video" / "demo3_video.mp4", "demo3"))
    for stem in ("brbk7n", "lbax4n", "lwbsza", "sbwe5n", "id2_vcd_swwp2s"):
        p = d / "video" / f"{stem}.mpg"
        clips.append(Clip(f"grid_video_{stem}", p, p, f"grid_video_{stem}"))
    for p in sorted((d / "video" / "crema-d").glob("*.flv")):
        clips.append(Clip(f"crema_{p.stem}", p, p, "crema_1001"))
    p = d / "video" / "retalking_face_5.mp4"
    clips.append(Clip("retalking_face_5", p, p, "retalking_5"))
    return [c for c in clips if c.video.is_file() and c.audio.is_file()]


def _landmarker():
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=resolve_model_path()),
                                        running_mode=vision.RunningMode.VIDEO, num_faces=1)
    return vision.FaceLandmarker.create_from_options(opts)


def extract_clip(clip: Clip, cache: Path) -> Path:
    """Landmarks of every frame + the clip's speech → ``<cache>/<clip.name>.npz`` (skipped when it exists)."""
    import av
    import mediapipe as mp

    Path(cache).mkdir(parents=True, exist_ok=True)
    out = Path(cache) / f"{clip.name}.npz"
    if out.is_file():
        return out
    pts, present, times, size = [], [], [], None
    with _landmarker() as fl, av.open(str(clip.video)) as c:
        last_ms = -1
        for f in c.decode(c.streams.video[0]):
            rgb = f.to_ndarray(format="rgb24")
            size = (rgb.shape[1], rgb.shape[0])
            t = float(f.time) if f.time is not None else len(times) / 25.0
            ms = max(last_ms + 1, int(round(t * 1000)))
            last_ms = ms
            r = fl.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)), ms)
            if r.face_landmarks and len(r.face_landmarks[0]) == NUM_LANDMARKS:
                pts.append([[p.x, p.y, p.z] for p in r.face_landmarks[0]])
                present.append(True)
            else:
                pts.append(np.zeros((NUM_LANDMARKS, 3)))
                present.append(False)
            times.append(t)
    times = np.asarray(times, np.float64)
    times -= times[0]
    wav, sr = read_audio(clip.audio)
    audio = prepare_audio(wav, sr).samples.astype(np.float32)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, points=np.asarray(pts, np.float32), present=np.asarray(present, bool), times=times,
             size=np.asarray(size, np.int32), audio=audio, sample_rate=TARGET_SR, speaker=clip.speaker,
             split=clip.split)
    os.replace(tmp, out)
    return out


def _extract(args):
    clip, cache = args
    try:
        extract_clip(clip, cache)
        return clip.name, None
    except Exception as e:  # noqa: BLE001 -- one unreadable clip must not stop the others; reported below
        return clip.name, f"{type(e).__name__}: {e}"


def extract_all(clips: list[Clip], cache: Path, workers: int = 2) -> dict:
    """:func:`extract_clip` for every clip, ``workers`` processes; returns a summary (failures named)."""
    Path(cache).mkdir(parents=True, exist_ok=True)
    failed = {}
    with Pool(workers) as pool:
        for i, (name, err) in enumerate(pool.imap_unordered(_extract, [(c, cache) for c in clips]), 1):
            if err:
                failed[name] = err
                log.warning("%s: %s", name, err)
            if i % 50 == 0:
                log.info("%d/%d clips", i, len(clips))
    return {"clips": len(clips), "failed": failed, "cache": str(cache)}


def load_clip(path: Path) -> dict:
    """One cached clip as a dict of arrays (``speaker`` and ``split`` as str)."""
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    d["speaker"], d["split"] = str(d["speaker"]), str(d["split"])
    d["name"] = Path(path).stem
    return d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="prepare_audio2motion_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default $PTALK_SHARED_DATA or ../shared/data)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"output folder (default {DEFAULT_CACHE})")
    p.add_argument("--grid-clips", type=int, default=None, help="use only the first N GRID s1 clips")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = extract_all(list_clips(a.data, a.grid_clips), a.cache, a.workers)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
