"""Benchmark visual dubbing, CPU preview path: frames/s per stage and peak RSS.

    .venv/bin/python bench/bench_dub.py [--policy hold] [--max-frames 0] [--streamed]

Clips from ``../shared/data`` (``$PTALK_SHARED_DATA``): the LatentSync dubbing pair ``video/demo3_video.mp4``
(1080x1920 HEVC, 30 fps) + ``video/demo3_audio.wav`` (a different 18.6 s speech track), and
``video/retalking_face_5.mp4`` (524x524) + ``audio/beckett.wav``. The engine functions the nodes call, in the
same order as workflows/dubbing.json: decode (PyAV) → Face Landmarks (MediaPipe, on_missing keep) → Audio → Dub
Landmarks (smoothing 1, persona, pocketsphinx phone recognition) → Dub Render (lower-face warp + paste-back),
the render streamed frame by frame. Peak RSS is the process maximum so far (``ru_maxrss``), so it only grows
from one clip to the next.

``--streamed`` instead runs workflows/dubbing_long.json (Load Video → Dub Video → Save Video) headless in a fresh
process per clip, as ``make dub`` does: wall time of the whole job (ComfyUI boot, decoding twice, landmarks,
render, H.264 + AAC encode) and that process's peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import require_shared_data

REPO = Path(__file__).resolve().parent.parent

from portraittalk.ptalk_models.dub_render import iter_dub
from portraittalk.ptalk_models.dubbing import plan_dub
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.media import iter_video, read_audio, read_video, video_info


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
    plan = plan_dub(lm, wav, sr, policy)  # fps: the landmarks' (detect_landmarks(..., fps=fps))
    t_dub = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in iter_dub((frames[i] for i in plan.source_index), plan.source, plan.target))
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


def bench_streamed(video, audio, out_dir) -> None:
    out = out_dir / f"{video.stem}_dub.mp4"
    t = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(REPO / "workflows" /
                    "dubbing_long.json"), "--video", str(video), "--audio", str(audio), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    w, h, fps, _ = video_info(out)
    n = sum(1 for _ in iter_video(out))
    print(f"{video.name} + {audio.name}: {n} frames {w}x{h} @ {fps:g} fps in {wall:.1f} s wall (boot included) = "
          f"{n / wall:.1f} frames/s end to end; peak RSS of the largest run so far {rss:.2f} GB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="hold", choices=["trim", "loop", "ping-pong", "hold"])
    ap.add_argument("--max-frames", type=int, default=0, help="use only the first N video frames (0 = all)")
    ap.add_argument("--streamed", action="store_true", help="time workflows/dubbing_long.json end to end instead")
    args = ap.parse_args(argv)
    d = require_shared_data()
    if args.streamed:
        with tempfile.TemporaryDirectory() as tmp:
            bench_streamed(d / "video" / "retalking_face_5.mp4", d / "audio" / "beckett.wav", Path(tmp))
            bench_streamed(d / "video" / "demo3_video.mp4", d / "video" / "demo3_audio.wav", Path(tmp))
        return 0
    bench(d / "video" / "retalking_face_5.mp4", d / "audio" / "beckett.wav", args.policy, args.max_frames)
    bench(d / "video" / "demo3_video.mp4", d / "video" / "demo3_audio.wav", args.policy, args.max_frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
