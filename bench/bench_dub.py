"""Benchmark visual dubbing, CPU preview path: frames/s per stage and peak RSS.

    .venv/bin/python bench/bench_dub.py [--policy hold] [--max-frames 0]

Clips from ``../shared/data`` (``$PTALK_SHARED_DATA``): the LatentSync dubbing pair ``video/demo3_video.mp4``
(1080x1920 HEVC, 30 fps) + ``video/demo3_audio.wav`` (a different 18.6 s speech track), and
``video/retalking_face_5.mp4`` (524x524) + ``audio/beckett.wav``. The engine functions the nodes call, in the
same order as workflows/dubbing.json: decode (PyAV) → Face Landmarks (MediaPipe, on_missing keep) → Audio → Dub
Landmarks (smoothing 1, persona, pocketsphinx phone recognition) → Dub Render (lower-face warp + paste-back),
the render streamed frame by frame. Peak RSS is the process maximum so far (``ru_maxrss``), so it only grows
from one clip to the next.
"""
from __future__ import annotations

import argparse
import resource
import time

from _common import require_shared_data  # also appends the repo root to sys.path

from ptalk_models.audio2landmarks import generate_landmarks
from ptalk_models.dub_render import iter_dub
from ptalk_models.dubbing import apply_length_policy, closed_mouth_frame, dub_landmarks, smooth_landmarks
from ptalk_models.face import detect_landmarks
from ptalk_models.landmarks import FaceLandmarks
from ptalk_models.media import read_audio, read_video


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def bench(video, audio, policy: str, max_frames: int) -> None:
    t = time.perf_counter()
    frames, fps = read_video(video)
    if max_frames:
        frames = frames[:max_frames]
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    lm = detect_landmarks(frames, on_missing="keep", fps=fps)
    t_lm = time.perf_counter() - t
    wav, sr = read_audio(audio)
    t = time.perf_counter()
    src = smooth_landmarks(lm, 1.0)
    rest = src.frame(closed_mouth_frame(src))
    driven = generate_landmarks(wav, sr, rest, fps=fps, blink=False, head_motion=False)
    idx = apply_length_policy(len(src), len(driven), policy)
    driven = driven.frames(0, len(idx))
    mapped = FaceLandmarks.from_points(src.points[idx], src.image_size, fps, src.present[idx])
    dub = dub_landmarks(mapped, driven, rest=rest)
    t_dub = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in iter_dub((frames[i] for i in idx), mapped, dub))
    t_render = time.perf_counter() - t
    h, w = frames.shape[1:3]
    total = t_lm + t_dub + t_render
    print(f"{video.name} {w}x{h} @ {fps:.2f} fps, {len(frames)} video frames, {audio.name} → {n} output frames "
          f"({policy}); faces in {int(lm.present.sum())}/{len(lm)} frames")
    print(f"  decode          {t_read:7.2f} s")
    print(f"  face landmarks  {t_lm:7.2f} s  {len(frames) / t_lm:7.1f} frames/s")
    print(f"  dub landmarks   {t_dub:7.2f} s  {n / t_dub:7.1f} frames/s (pocketsphinx + transfer)")
    print(f"  dub render      {t_render:7.2f} s  {n / t_render:7.1f} frames/s")
    print(f"  total (no I/O)  {total:7.2f} s  {n / total:7.1f} frames/s; peak RSS so far {_rss_gb():.2f} GB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="hold", choices=["trim", "loop", "ping-pong", "hold"])
    ap.add_argument("--max-frames", type=int, default=0, help="use only the first N video frames (0 = all)")
    args = ap.parse_args(argv)
    d = require_shared_data()
    bench(d / "video" / "retalking_face_5.mp4", d / "audio" / "beckett.wav", args.policy, args.max_frames)
    bench(d / "video" / "demo3_video.mp4", d / "video" / "demo3_audio.wav", args.policy, args.max_frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
