"""ADFD Score throughput on CPU (run: ``.venv/bin/python bench/bench_adfd.py [--threads N]``).

Prints frames per second (compared frames / wall second) of the ADFD Score engine on real clips from
``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``:

* **given landmarks** -- :func:`ptalk_models.metrics.evaluate` (ADFD, LMD, jitter, sync proxy with audio) +
  JSON report + the plot image, on MediaPipe landmarks detected beforehand; also on a 60 s sequence (the
  retalking clip's landmarks tiled to 1500 frames) to show how it scales;
* **given frames** -- the same plus MediaPipe Face Landmarker on both videos (the node's IMAGE/VIDEO path;
  detection runs on 2 x frames, the figure counts compared frames);
* **identity** -- the per-frame dlib identity similarity alone (the Face Embed engine), when available.

Each figure is the best of ``--repeats`` runs (default 3).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import require_shared_data

from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.media import read_audio, read_video
from portraittalk.ptalk_models.metrics import evaluate, report_json
from portraittalk.ptalk_models.plot import report_plot

PAIRS = [  # (generated, ground truth): a different speaker of the same corpus, or the clip shifted
    ("GRID lwbsza vs lbax4n (360x288, 75 f)", "video/lwbsza.mpg", "video/lbax4n.mpg", 0),
    ("CREMA-D HAP vs ANG (480x360, flv)", "video/crema-d/1001_DFA_HAP_XX.flv", "video/crema-d/1001_DFA_ANG_XX.flv", 0),
    ("retalking shifted 3 f (524x524, 122 f)", "video/retalking_face_5.mp4", "video/retalking_face_5.mp4", 3),
]


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def full_report(gen, gt, audio, **kw):
    rep = evaluate(gen, gt, audio=audio, **kw)
    report_json(rep)
    report_plot(rep)
    return rep


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0 = OpenCV default)")
    args = ap.parse_args()
    if args.threads:
        import cv2

        cv2.setNumThreads(args.threads)
    data = require_shared_data()
    print(f"CPU cores: {os.cpu_count()}, repeats: {args.repeats} (best)")
    print(f"{'pair':42s} {'frames':>6s} {'landmarks→report':>17s} {'frames→report':>14s} {'identity':>9s}  ADFD")
    for label, g_rel, r_rel, shift in PAIRS:
        gf, fps = read_video(data / g_rel)
        rf, _ = read_video(data / r_rel)
        wav, sr = read_audio(data / g_rel)
        if shift:
            gf, rf = gf[shift:], rf[:-shift]
        T = min(len(gf), len(rf))
        g_lm = detect_landmarks(gf, on_missing="keep", fps=fps)
        r_lm = detect_landmarks(rf, on_missing="keep", fps=fps)
        t_lm = best_time(lambda: full_report(g_lm, r_lm, (wav, sr), identity_backend=None), args.repeats)

        def from_frames():
            a = detect_landmarks(gf, on_missing="keep", fps=fps)
            b = detect_landmarks(rf, on_missing="keep", fps=fps)
            return full_report(a, b, (wav, sr), identity_backend=None)

        t_fr = best_time(from_frames, args.repeats)
        n_id = min(T, 25)
        evaluate(g_lm, r_lm, generated_frames=gf[:n_id], ground_truth_frames=rf, identity_backend="dlib")  # warm-up
        t_id = best_time(lambda: evaluate(g_lm, r_lm, generated_frames=gf[:n_id], ground_truth_frames=rf,
                                          identity_backend="dlib"), 1)
        id_fps = f"{n_id / t_id:8.1f}"
        rep = full_report(g_lm, r_lm, (wav, sr), identity_backend=None)
        print(f"{label:42s} {T:6d} {T / t_lm:13.0f} f/s {T / t_fr:10.1f} f/s {id_fps} f/s  {rep['adfd']:.4f}")

    # scaling: 60 s of real landmarks (the retalking clip tiled), with its audio tiled too
    frames, fps = read_video(data / "video/retalking_face_5.mp4")
    wav, sr = read_audio(data / "video/retalking_face_5.mp4")
    lm = detect_landmarks(frames, on_missing="keep", fps=fps)
    reps = int(np.ceil(1500 / len(lm)))
    idx = np.concatenate([np.arange(len(lm)) if k % 2 == 0 else np.arange(len(lm))[::-1] for k in range(reps)])[:1500]
    long_gen = lm.with_points(lm.points[idx])
    long_gt = lm.with_points(lm.points[np.roll(idx, 3)])
    long_wav = np.tile(wav, (1, reps))
    t = best_time(lambda: full_report(long_gen, long_gt, (long_wav, sr), identity_backend=None), args.repeats)
    js = report_json(evaluate(long_gen, long_gt, audio=(long_wav, sr), identity_backend=None))
    print(f"{'60 s of landmarks (1500 f, 524x524)':42s} {1500:6d} {1500 / t:13.0f} f/s  "
          f"(report JSON {len(js) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
