"""CPU figures for the talking-photo foundation (run: ``make bench`` or ``.venv/bin/python bench/bench_cpu.py``).

Prints, on real media from ``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``:

* Face Landmarks fps (MediaPipe, real GRID video frames, 360x288);
* Audio → Landmarks × real time (jfk.flac 11 s, with and without transcript);
* Landmark Warp Render fps at 512x512 on one core (``cv2.setNumThreads(1)``, process pinned to one CPU);
* whole job (``workflows/talking_photo.json``, the streamed default, and ``workflows/talking_photo_batch.json``,
  the IMAGE batch, through ComfyUI's executor, in a fresh process) wall time ÷ audio duration on a 44 s speech
  track, and its peak RSS;
* a 10-minute speech track through ``workflows/talking_photo.json`` (streamed render → Save Video):
  wall time ÷ duration and peak RSS. (The IMAGE-batch graph cannot hold 10 minutes: 15000 float32
  512x512 frames are 47 GB, which is why the streamed node exists.)

Targets (CPU only): warp ≥ 25 fps at 512² on one core; audio→landmarks ≥ 100× real time; the 44 s job
within real time on 2 cores; 10 minutes with peak RSS ≤ 4 GB.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, require_shared_data

from portraittalk.ptalk_models.audio2landmarks import generate_landmarks
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.media import read_audio, read_image, read_video, write_wav
from portraittalk.ptalk_models.render import render_sequence

JFK_TEXT = ("And so, my fellow Americans: ask not what your country can do for you, ask what you can do for "
            "your country.")


def speech_track(data: Path, seconds: float) -> np.ndarray:
    """Real speech (jfk + beckett, alternating) tiled to ``seconds`` at 16 kHz mono."""
    import soxr

    j, jsr = read_audio(data / "audio" / "jfk.flac")
    b, bsr = read_audio(data / "audio" / "beckett.wav")
    parts = [soxr.resample(j.mean(0), jsr, 16000), soxr.resample(b.mean(0), bsr, 16000)]
    out, n, k = [], 0, 0
    while n < seconds * 16000:
        out.append(parts[k % 2])
        n += len(parts[k % 2])
        k += 1
    return np.concatenate(out)[: int(seconds * 16000)].astype(np.float32)


def run_job(workflow: str, image: Path, audio: Path, out: Path) -> tuple[float, float, float]:
    """Run a workflow in a fresh process; (seconds of the workflow itself, peak RSS in GB, process wall seconds)."""
    cmd = [sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(REPO / "workflows" / workflow),
           "--image", str(image), "--audio", str(audio), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if status != 0:
        sys.exit(f"{workflow} failed:\n{err[-3000:]}")
    wf = [line for line in err.splitlines() if "workflow " in line and " s (" in line]
    job = float(wf[-1].split("workflow ")[1].split(" s")[0]) if wf else wall
    return job, usage.ru_maxrss / 1024 ** 2, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long-minutes", type=float, default=10.0, help="length of the long job (0 = skip)")
    args = ap.parse_args()
    data = require_shared_data()
    import cv2

    print(f"CPU: {os.cpu_count()} cores; OpenCV threads {cv2.getNumThreads()}")

    frames, _ = read_video(data / "video" / "lbax4n.mpg")
    detect_landmarks(frames[:1])
    t = time.perf_counter()
    detect_landmarks(frames)
    dt = time.perf_counter() - t
    print(f"Face Landmarks: {len(frames) / dt:.1f} fps ({len(frames)} GRID frames 360x288, MediaPipe)")

    astro = read_image(data / "photos" / "astronaut.png")
    ref = detect_landmarks(astro)
    wav, sr = read_audio(data / "audio" / "jfk.flac")
    dur = wav.shape[1] / sr
    for label, text in (("phone recognition", ""), ("forced alignment", JFK_TEXT)):
        generate_landmarks(wav[:, : sr // 2], sr, ref, transcript=text)
        t = time.perf_counter()
        seq = generate_landmarks(wav, sr, ref, fps=25.0, seed=0, transcript=text)
        dt = time.perf_counter() - t
        print(f"Audio → Landmarks ({label}): {dur / dt:.0f}x real time ({dur:.1f} s audio in {dt * 1000:.0f} ms)")

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    render_sequence(astro, ref, seq.frame(0))
    t = time.perf_counter()
    out = render_sequence(astro, ref, seq)
    dt = time.perf_counter() - t
    print(f"Landmark Warp Render: {len(out) / dt:.0f} fps at 512x512 on one core ({len(out)} frames)")
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    cv2.setNumThreads(-1)
    del out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_wav(tmp / "speech44.wav", speech_track(data, 44.0), 16000)
        job, rss, wall = run_job("talking_photo_batch.json", data / "photos" / "astronaut.png",
                                 tmp / "speech44.wav", tmp / "out44.mp4")
        print(f"Whole job, talking_photo_batch.json (IMAGE batch), 44 s audio: workflow {job:.1f} s = "
              f"{job / 44:.2f}x audio duration (process incl. ComfyUI boot {wall:.1f} s); peak RSS {rss:.2f} GB")
        job, rss, wall = run_job("talking_photo.json", data / "photos" / "astronaut.png",
                                 tmp / "speech44.wav", tmp / "out44s.mp4")
        print(f"Whole job, talking_photo.json (streamed), 44 s audio: workflow {job:.1f} s = "
              f"{job / 44:.2f}x audio duration (process incl. ComfyUI boot {wall:.1f} s); peak RSS {rss:.2f} GB")
        if args.long_minutes > 0:
            secs = args.long_minutes * 60
            write_wav(tmp / "speech_long.wav", speech_track(data, secs), 16000)
            job, rss, wall = run_job("talking_photo.json", data / "photos" / "astronaut.png",
                                     tmp / "speech_long.wav", tmp / "out_long.mp4")
            print(f"Whole job, talking_photo.json (streamed), {secs / 60:.0f} min audio: workflow {job:.1f} s = "
                  f"{job / secs:.2f}x audio duration; peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
