"""Memory and time of the whole talking-photo job (memory target), each run in a fresh process with ComfyUI's boot.

    .venv/bin/python bench/bench_memory.py [--workflow WORKFLOW.json] [--minutes 10]
                                          [--skip memory,speed,large] [--repo DIR]

Every figure is one ``scripts/run_workflow.py WORKFLOW --image … --audio …`` child process: its peak RSS
(``os.wait4``'s ``ru_maxrss``), its wall time (Python start, ComfyUI boot, the workflow, exit) and its CPU time
(user + system; steadier than wall time on a shared machine).

* ``memory``: a 970x2204 "phone" portrait with 10 s and ``--minutes`` (default 10) of speech: peak RSS
  (bound 2.5 GB for 10 minutes) and how much it grew with the speech length;
* ``speed``: jfk.flac (11 s) and a 44 s speech track on the 512x512 astronaut: wall time incl. boot ÷ audio
  duration (target ≤ 0.5x on 2 cores);
* ``large``: the 44 s track on the 970x2204 portrait vs on the 512x512 one, next to what the final H.264
  encode alone costs more at 970x2204 (the same talking-photo frames rendered first, then only
  :func:`ptalk_models.media.write_mp4` timed, in this process): rendering only the face crop keeps the rest
  about equal.

Media (none stored in the repository): the 970x2204 portrait is ``photos/astronaut.png`` upscaled to 970x970
with OpenCV (bicubic) and extended to 2204 rows by replicating its top and bottom rows (a plain backdrop;
MediaPipe still finds the one face); speech tracks are ``audio/jfk.flac`` and ``audio/beckett.wav``
alternated (resampled to 16 kHz mono) up to the length asked — real speech, repeated. ``--workflow`` is the
graph to measure (default: :data:`WORKFLOW`, the streamed talking-photo graph, found by its nodes);
``--repo`` runs another checkout's ``scripts/run_workflow.py`` and workflow (e.g. a ``git archive`` of an
older commit, for before/after figures).
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

from portraittalk.ptalk_models.media import read_audio, read_image, write_wav

#: The graph measured by default: the streamed talking photo (Landmark Warp Render → Video → Save Video), the
#: default graph of ``make demo``.
WORKFLOW = REPO / "workflows" / "talking_photo.json"
#: Peak-RSS target for 10 minutes of speech on a 970x2204 photo.
BOUND_GB = 2.5
LARGE_SIZE = (970, 2204)  # width, height


def large_portrait(data: Path, size: tuple[int, int] = LARGE_SIZE) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: photos/astronaut.png upscaled (OpenCV bicubic) to ``W x W`` and extended to
    ``H`` rows by replicating its top and bottom rows (needs ``H >= W``)."""
    import cv2

    w, h = size
    img = cv2.resize(read_image(data / "photos" / "astronaut.png"), (w, w), interpolation=cv2.INTER_CUBIC)
    top = (h - w) // 2
    return cv2.copyMakeBorder(img, top, h - w - top, 0, 0, cv2.BORDER_REPLICATE)


def speech_track(data: Path, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """float32 ``[N]``: jfk.flac and beckett.wav alternated (mono, resampled with soxr) to ``seconds``."""
    import soxr

    parts = []
    for name in ("jfk.flac", "beckett.wav"):
        wav, sr = read_audio(data / "audio" / name)
        parts.append(soxr.resample(wav.mean(0), sr, sample_rate).astype(np.float32))
    out, n, k = [], 0, 0
    while n < seconds * sample_rate:
        out.append(parts[k % 2])
        n += len(parts[k % 2])
        k += 1
    return np.concatenate(out)[: int(seconds * sample_rate)]


def run_job(workflow: Path, image: Path, audio: Path, out: Path, repo: Path = REPO) -> dict:
    """Run ``workflow`` in a fresh ``run_workflow.py`` process: {"wall": s, "cpu": s, "rss_gb": peak RSS
    (GB = 10^9 bytes), "boot": s, "workflow": s (as the script reports them)}. Exits with the script's stderr when it fails."""
    cmd = [sys.executable, str(repo / "scripts" / "run_workflow.py"), str(workflow), "--image", str(image),
           "--audio", str(audio), "--out", str(out)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        log = err.read()
    if status != 0:
        sys.exit(f"{workflow.name} failed:\n{log[-3000:]}")
    res = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_gb": usage.ru_maxrss * 1024 / 1e9}
    for line in log.splitlines():
        if "boot " in line and "workflow " in line:
            res["boot"] = float(line.split("boot ")[1].split(" s")[0])
            res["workflow"] = float(line.split("workflow ")[1].split(" s")[0])
    return res


def encode_cost(photo: np.ndarray, speech: np.ndarray, sample_rate: int = 16000) -> float:
    """CPU seconds of the final H.264 encode alone (:func:`write_mp4`) of the talking photo of ``photo`` on
    ``speech``: the frames (face-crop patches) are rendered first, then only the encode is timed."""
    from portraittalk.ptalk_models.audio2landmarks import generate_landmarks
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import write_mp4
    from portraittalk.ptalk_models.render import WarpRenderer, iter_render

    ref = detect_landmarks(photo)
    seq = generate_landmarks(speech[None], sample_rate, ref, fps=25.0, seed=0)
    frames = list(iter_render(WarpRenderer(photo, ref), seq, even_size=True, patches=True))
    h, w = frames[0].shape[:2]
    c0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        write_mp4(Path(tmp) / "e.mp4", frames, 25.0, w, h)
    return time.process_time() - c0


def _line(label: str, r: dict, seconds: float) -> str:
    return (f"{label}: wall {r['wall']:.1f} s incl. boot = {r['wall'] / seconds:.2f}x real time "
            f"(boot {r.get('boot', float('nan')):.1f} s, workflow {r.get('workflow', float('nan')):.1f} s), "
            f"CPU {r['cpu']:.1f} s, peak RSS {r['rss_gb']:.2f} GB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", type=Path, default=None,
                    help=f"graph to run (default: the streamed talking-photo graph, now {WORKFLOW.name})")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose run_workflow.py runs it")
    ap.add_argument("--minutes", type=float, default=10.0, help="speech length of the long memory run")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: memory, speed, large")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    workflow = args.workflow or args.repo / "workflows" / "talking_photo.json"
    data = require_shared_data()
    print(f"{os.cpu_count()} CPUs; workflow {workflow}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import cv2

        big = large_portrait(data)
        cv2.imwrite(str(tmp / "large.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        astro = data / "photos" / "astronaut.png"
        write_wav(tmp / "s44.wav", speech_track(data, 44.0), 16000)

        if "memory" not in skip:
            write_wav(tmp / "s10.wav", speech_track(data, 10.0), 16000)
            write_wav(tmp / "long.wav", speech_track(data, args.minutes * 60), 16000)
            short = run_job(workflow, tmp / "large.png", tmp / "s10.wav", tmp / "o.mp4", args.repo)
            print(_line("970x2204, 10 s speech", short, 10.0))
            long = run_job(workflow, tmp / "large.png", tmp / "long.wav", tmp / "o.mp4", args.repo)
            print(_line(f"970x2204, {args.minutes:g} min speech", long, args.minutes * 60))
            print(f"peak RSS {long['rss_gb']:.2f} GB for {args.minutes:g} min (bound {BOUND_GB} GB); "
                  f"+{(long['rss_gb'] - short['rss_gb']) * 1000:.0f} MB over 10 s")
        if "speed" not in skip:
            jfk = run_job(workflow, astro, data / "audio" / "jfk.flac", tmp / "o.mp4", args.repo)
            print(_line("512x512, jfk.flac 11 s", jfk, 11.0))
            s44 = run_job(workflow, astro, tmp / "s44.wav", tmp / "o.mp4", args.repo)
            print(_line("512x512, 44 s speech", s44, 44.0))
        if "large" not in skip:
            small = run_job(workflow, astro, tmp / "s44.wav", tmp / "o.mp4", args.repo)
            large = run_job(workflow, tmp / "large.png", tmp / "s44.wav", tmp / "o.mp4", args.repo)
            print(_line("512x512, 44 s speech", small, 44.0))
            print(_line("970x2204, 44 s speech", large, 44.0))
            s44 = speech_track(data, 44.0)
            enc_big, enc_small = encode_cost(big, s44), encode_cost(read_image(astro), s44)
            print(f"970x2204 costs {large['cpu'] - small['cpu']:+.1f} s CPU ({large['wall'] - small['wall']:+.1f} s "
                  f"wall) more than 512x512; the final H.264 encode alone (same 1100 frames, in this process) takes "
                  f"{enc_big:.1f} s CPU at 970x2204 and {enc_small:.1f} s at 512x512: {enc_big - enc_small:+.1f} s")


if __name__ == "__main__":
    main()
