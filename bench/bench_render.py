"""Benchmark the landmark warp renderer and the landmark drawer (CPU).

    .venv/bin/python bench/bench_render.py [--frames 200]

Prints frames per second of ``WarpRenderer.render`` on the 512x512 astronaut portrait (real MediaPipe
landmarks, driven by the Audio → Landmarks engine on jfk.flac), a 512x512 close-up of it (the face
crop then covers the whole frame: the worst case at that size) and a 1080x1920 canvas, on ONE core
(``cv2.setNumThreads(1)`` and the process pinned to one CPU) and with OpenCV's default threads, plus
``draw_landmarks`` figures. The target is >= 25 fps at 512x512 on one
core. Media: ``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from _common import require_shared_data

from portraittalk.ptalk_models.draw import draw_landmarks
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks
from portraittalk.ptalk_models.media import read_audio, read_image
from portraittalk.ptalk_models.render import WarpRenderer
from portraittalk.ptalk_models.audio2landmarks import generate_landmarks


def driving_sequence(ref: FaceLandmarks, n: int, fps: float = 25.0) -> FaceLandmarks:
    """The real Audio → Landmarks engine on jfk.flac (speech, blinks, head motion), first ``n`` frames."""
    wav, sr = read_audio(require_shared_data() / "audio" / "jfk.flac")
    seq = generate_landmarks(wav, sr, ref, fps=fps, seed=0)
    return seq.with_points(seq.points[np.arange(n) % len(seq)])


def fps_of(fn, items) -> float:
    fn(items[0])  # warm-up (layout build, caches)
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()

    img = read_image(require_shared_data() / "photos" / "astronaut.png")
    ref = detect_landmarks(img)
    seq = driving_sequence(ref, args.frames)
    frames = list(seq.points)

    # 1080x1920 portrait: the astronaut scaled x2 on a padded canvas (face ~4x the pixels)
    big = cv2.copyMakeBorder(cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC),
                             448, 448, 28, 28, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    big_pts = ref.points.copy()
    big_pts[..., :2] = (ref.pixels() * 2.0 + np.array([28, 448], np.float32)) / np.array([1080, 1920], np.float32)
    big_ref = FaceLandmarks.from_points(big_pts, (1080, 1920))
    big_frames = list(driving_sequence(big_ref, args.frames).points)

    # 512x512 close-up: the face region (x 120..376, y 0..256) scaled x2, so the face crop covers ~the frame
    close = cv2.resize(img[0:256, 120:376], (512, 512), interpolation=cv2.INTER_CUBIC)
    close_pts = ref.points.copy()
    close_pts[..., :2] = (ref.pixels() - np.array([120, 0], np.float32)) * 2.0 / 512.0
    close_ref = FaceLandmarks.from_points(close_pts, (512, 512))
    close_frames = list(driving_sequence(close_ref, args.frames).points)

    default_threads = cv2.getNumThreads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    results = []

    def run(label, threads, one_cpu):
        cv2.setNumThreads(threads)
        if one_cpu and affinity:
            os.sched_setaffinity(0, {min(affinity)})
        try:
            r = WarpRenderer(img, ref)
            out = np.empty_like(img)
            results.append((f"warp render 512x512, {label}", fps_of(lambda p: r.render(p, out=out), frames)))
            rc = WarpRenderer(close, close_ref)
            outc = np.empty_like(close)
            results.append((f"warp render 512x512 close-up, {label}",
                            fps_of(lambda p: rc.render(p, out=outc), close_frames)))
            rb = WarpRenderer(big, big_ref)
            outb = np.empty_like(big)
            results.append((f"warp render 1080x1920, {label}", fps_of(lambda p: rb.render(p, out=outb), big_frames)))
            one = [seq.frame(i) for i in range(len(frames))]
            results.append((f"draw controlnet 512x512, {label}", fps_of(lambda lm: draw_landmarks(lm), one)))
            results.append((f"draw mesh 512x512, {label}", fps_of(lambda lm: draw_landmarks(lm, style="mesh"), one)))
        finally:
            cv2.setNumThreads(default_threads)
            if one_cpu and affinity:
                os.sched_setaffinity(0, affinity)

    run("1 core (cv2.setNumThreads(1), pinned)", 1, True)
    run(f"default threads ({default_threads})", default_threads, False)
    print(f"{args.frames} frames each; face crop (x0, y0, x1, y1): 512x512 {WarpRenderer(img, ref).crop_box()}, "
          f"close-up {WarpRenderer(close, close_ref).crop_box()}, 1080x1920 {WarpRenderer(big, big_ref).crop_box()}")
    for name, fps in results:
        print(f"{name:66s} {fps:8.1f} fps")


if __name__ == "__main__":
    main()
