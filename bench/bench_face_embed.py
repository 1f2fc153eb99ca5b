"""Benchmark Face Embed (dlib backend, CPU): milliseconds per image.

    .venv/bin/python bench/bench_face_embed.py [--images 24] [--repeats 3]

Embeds ``--images`` real frames (GRID ``video/*.mpg`` 360x288, spread over the six speakers, plus
``retalking_face_5.mp4`` 524x524 frames) with :func:`ptalk_models.identity.embed_faces`:

* *given landmarks*: MediaPipe landmarks computed beforehand (what the ADFD identity metric does when it has
  landmarks): dlib 5-point predictor + face chip + background removal + ResNet descriptor;
* *with detection*: landmarks detected inside (MediaPipe Face Landmarker) on top of that;
* *no background removal*, given landmarks, for comparison.

Each figure is the best of ``--repeats`` runs (after one warm-up), in ms per image, with OpenCV's default
threads and on ONE core (``cv2.setNumThreads(1)`` and the process pinned to one CPU). Media:
``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from _common import require_shared_data

from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.identity import embed_faces
from portraittalk.ptalk_models.media import read_video


def load_frames(n: int) -> dict[str, np.ndarray]:
    d = require_shared_data() / "video"
    grid = sorted(d.glob("*.mpg"))
    per = max(1, n // len(grid))
    g = np.concatenate([f[np.linspace(0, len(f) - 1, per).astype(int)] for f in (read_video(p)[0] for p in grid)])
    r = read_video(d / "retalking_face_5.mp4")[0]
    return {"GRID 360x288": g[:n], "retalking 524x524": r[np.linspace(0, len(r) - 1, min(n, len(r))).astype(int)]}


def best_ms(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up: model loading, MediaPipe graph start
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / n_images


def run(sets: dict[str, np.ndarray], repeats: int) -> None:
    for name, frames in sets.items():
        lm = detect_landmarks(frames, on_missing="keep")
        rows = {
            "given landmarks": lambda: embed_faces(frames, landmarks=lm),
            "with MediaPipe detection": lambda: embed_faces(frames),
            "given landmarks, no background removal": lambda: embed_faces(frames, landmarks=lm,
                                                                          remove_background=False),
        }
        for label, fn in rows.items():
            print(f"  {name:18s} {label:40s} {best_ms(fn, len(frames), repeats):7.1f} ms/image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24, help="images per set")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sets = load_frames(args.images)
    print(f"Face Embed, dlib backend, {', '.join(f'{k}: {len(v)} images' for k, v in sets.items())}")
    print(f"default threads (cv2 {cv2.getNumThreads()}, {os.cpu_count()} CPUs):")
    run(sets, args.repeats)
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print("one core:")
    run(sets, args.repeats)


if __name__ == "__main__":
    main()
