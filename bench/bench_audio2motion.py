"""Audio → Landmarks backends on real speech: the neural log-mel VAE vs pocketsphinx phonemes vs an energy baseline.

Run: ``.venv/bin/python bench/bench_audio2motion.py [--weights FILE] [--json out.json]`` (about 3 minutes on
2 cores). Prints markdown tables, on real media from ``$PTALK_SHARED_DATA`` or ``<repo>/../shared/data``:

1. **Held-out speakers** (never trained on: ``ptalk_harness.audio2motion_data.HELD_OUT`` -- Andrew Ng, 5 GRID
   speakers other than s1, CREMA-D 1001, retalking 5; their landmarks are extracted into the cache when missing).
   Each clip's first face frame is the reference; each backend generates the clip's length from the clip's own
   audio at its fps (seed 0, no blinks, no head motion). Against the clip's real landmarks, whose head pose is
   removed by a similarity on stable points onto the reference (``mouth_motion.align``):
   mouth LMD / inter-ocular distance (40 lip points), inner-lip aperture correlation with the real aperture,
   ADFD (Eq. 4) of the pose-free sequences, and the sync proxy (aperture vs 200-4000 Hz log energy: best lag within
   ±5 frames and its correlation; the real clip's own figure for comparison). The energy baseline is the mouth
   opening from audio energy alone (its aperture = the band energy), aperture correlation and sync only.
   Means are taken per speaker first, then over speakers.
2. **Languages**: sync proxy of the generated landmarks (reference: photos/astronaut.png) per file of
   ``audio/multilingual/`` and for the English ``jfk.flac`` / ``beckett.wav``.
3. **Speed**: 10 minutes of real speech (jfk + beckett tiled) through ``generate_landmarks`` on ONE thread
   (``torch.set_num_threads(1)``, features included, model loaded before timing), × real time; peak RSS of a fresh
   process doing it.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from _common import REPO, require_shared_data

from portraittalk.ptalk_models.audio import TARGET_SR, band_log_energy
from portraittalk.ptalk_models.audio2landmarks import NeuralBackend, PhonemeBackend, generate_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks, inner_lip_aperture, inter_ocular_px, to_pixels
from portraittalk.ptalk_models.metrics import MOUTH, adfd, sync_proxy
from portraittalk.ptalk_models.mouth_motion import align

NEURAL, PHONEMES = NeuralBackend.name, PhonemeBackend.name


def split_clips(data: Path, cache: Path, split: str = "heldout") -> list[dict]:
    """The prepared clips of ``split`` (GRID s1: its first 3 clips only), extracted into ``cache`` when missing."""
    from ptalk_harness.audio2motion_data import extract_clip, list_clips, load_clip

    return [load_clip(extract_clip(c, cache)) for c in list_clips(data, grid_clips=3) if c.split == split]


def _corr(a, b, valid) -> float:
    a, b = np.asarray(a, float)[valid], np.asarray(b, float)[valid]
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 1e-12 and b.std() > 1e-12 else float("nan")


def clip_scores(clip: dict, weights) -> dict:
    size = tuple(int(v) for v in clip["size"])
    dt = float(np.median(np.diff(clip["times"])))
    fps = 1.0 / dt
    real = FaceLandmarks.from_points(clip["points"], size, fps=fps, present=clip["present"])
    k0 = int(np.flatnonzero(clip["present"])[0])
    ref = real.frame(k0)
    ref_px = to_pixels(ref.points[0], size)
    T = len(real)
    valid = clip["present"].copy()
    real_px = np.zeros((T, 478, 3))
    real_px[valid] = align(to_pixels(clip["points"][valid], size), ref_px)
    real_al = FaceLandmarks.from_points((real_px / [size[0], size[1], size[0]]).astype(np.float32), size, fps=fps,
                                        present=valid)
    iod = float(inter_ocular_px(ref_px[None, :, :2])[0])
    real_ap = inner_lip_aperture(real_al)
    out = {"speaker": clip["speaker"], "name": clip["name"], "frames": T,
           "real_sync": sync_proxy(real, clip["audio"], TARGET_SR, fps)["best_corr"]}
    for b in (NEURAL, PHONEMES):
        gen = generate_landmarks(clip["audio"], TARGET_SR, ref, fps=fps, seed=0, backend=b, blink=False,
                                 head_motion=False, neural_weights=weights)
        n = min(T, len(gen))
        g = gen.pixels()[:n]
        v = valid[:n]
        lmd = np.linalg.norm(g[v][:, MOUTH, :2] - real_px[:n][v][:, MOUTH, :2], axis=-1).mean() / iod
        sp = sync_proxy(gen, clip["audio"], TARGET_SR, fps)
        gen_fl = FaceLandmarks.from_points(gen.points[:n], size, fps=fps)
        out[b] = {"lmd_iod": float(lmd), "aperture_corr": _corr(inner_lip_aperture(gen)[:n], real_ap[:n], v),
                  "sync_corr": sp["best_corr"], "sync_lag": sp["best_lag"],
                  "adfd": float(adfd(gen_fl, FaceLandmarks.from_points(real_al.points[:n], size, fps=fps,
                                                                       present=v)).adfd)}
    energy = band_log_energy(clip["audio"], TARGET_SR, fps, T)
    out["energy"] = {"aperture_corr": _corr(energy, real_ap, valid), "sync_corr": 1.0, "sync_lag": 0}
    return out


def per_speaker_mean(rows: list[dict], key: str | None, metric: str) -> float:
    """Mean over speakers of the per-speaker mean of ``r[key][metric]`` (``r[metric]`` when key is None)."""
    by = defaultdict(list)
    for r in rows:
        v = r[key][metric] if key else r[metric]
        if v is not None and np.isfinite(v):
            by[r["speaker"]].append(v)
    return float(np.mean([np.mean(v) for v in by.values()])) if by else float("nan")


def languages(data: Path, weights) -> list[dict]:
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import read_audio, read_image

    ref = detect_landmarks(read_image(data / "photos" / "astronaut.png")[None])
    files = sorted((data / "audio" / "multilingual").glob("*.wav")) + [data / "audio" / "jfk.flac",
                                                                       data / "audio" / "beckett.wav"]
    rows = []
    for f in files:
        wav, sr = read_audio(f)
        row = {"file": f.name}
        for b in (NEURAL, PHONEMES):
            gen = generate_landmarks(wav, sr, ref, fps=25.0, seed=0, backend=b, blink=False, head_motion=False,
                                     neural_weights=weights)
            sp = sync_proxy(gen, wav, sr, 25.0)
            row[b] = {"sync_corr": sp["best_corr"], "sync_lag": sp["best_lag"]}
        rows.append(row)
    return rows


SPEED_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {bench!r})
from bench_cpu import speech_track
from portraittalk.ptalk_models.audio2landmarks import generate_landmarks, NeuralBackend
from portraittalk.ptalk_models.audio2motion import audio2motion_model
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.media import read_image
from pathlib import Path
data = Path({data!r})
ref = detect_landmarks(read_image(data / "photos" / "astronaut.png")[None])
wav = speech_track(data, 600.0).astype(np.float32)
audio2motion_model({weights!r})
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
lm = generate_landmarks(wav, 16000, ref, fps=25.0, seed=0, backend=NeuralBackend.name, neural_weights={weights!r})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "audio_s": len(wav) / 16000, "frames": len(lm),
                  "rss_before_mb": rss0 / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def speed(data: Path, weights) -> dict:
    code = SPEED_CHILD.format(bench=str(REPO / "bench"), data=str(data), weights=weights)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["x_realtime"] = r["audio_s"] / r["seconds"]
    return r


def main(argv=None) -> int:
    from ptalk_harness.audio2motion_data import DEFAULT_CACHE

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="audio→motion safetensors (default: the embedded model)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="prepared clips (extracted when missing)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    p.add_argument("--split", default="heldout", choices=["heldout", "train"],
                   help="clips to score (train: for tuning inference settings without touching the held-out set)")
    p.add_argument("--loudness-mix", type=float, default=None, help="override NeuralBackend.loudness_mix")
    p.add_argument("--skip", nargs="*", default=[], choices=["heldout", "languages", "speed"])
    a = p.parse_args(argv)
    data = require_shared_data()
    if a.loudness_mix is not None:
        NeuralBackend.loudness_mix = a.loudness_mix
    result = {"loudness_mix": NeuralBackend.loudness_mix}
    if "heldout" not in a.skip:
        rows = [clip_scores(c, a.weights) for c in split_clips(data, a.cache, a.split)]
        result["heldout"] = rows
        print(f"\n### {'Held-out' if a.split == 'heldout' else 'TRAINING'} speakers (per-speaker means, then mean over %d speakers; %d clips)\n"
              % (len({r['speaker'] for r in rows}), len(rows)))
        print("| backend | mouth LMD / IOD ↓ | aperture corr ↑ | sync proxy corr ↑ | ADFD ↑ |")
        print("|---|---|---|---|---|")
        for b in (NEURAL, PHONEMES):
            print(f"| {b} | {per_speaker_mean(rows, b, 'lmd_iod'):.4f} | {per_speaker_mean(rows, b, 'aperture_corr'):.3f} "
                  f"| {per_speaker_mean(rows, b, 'sync_corr'):.3f} | {per_speaker_mean(rows, b, 'adfd'):.4f} |")
        print(f"| energy only (baseline) | – | {per_speaker_mean(rows, 'energy', 'aperture_corr'):.3f} | – | – |")
        print(f"| real landmarks | 0 | 1 | {per_speaker_mean(rows, None, 'real_sync'):.3f} | – |")
        print("\n| clip | neural LMD | phon. LMD | neural ap. corr | phon. ap. corr | energy ap. corr | neural sync (lag) | phon. sync (lag) | real sync |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            n, ph = r[NEURAL], r[PHONEMES]
            print(f"| {r['name']} | {n['lmd_iod']:.4f} | {ph['lmd_iod']:.4f} | {n['aperture_corr']:.3f} | "
                  f"{ph['aperture_corr']:.3f} | {r['energy']['aperture_corr']:.3f} | {n['sync_corr']:.3f} ({n['sync_lag']}) | "
                  f"{ph['sync_corr']:.3f} ({ph['sync_lag']}) | {r['real_sync']:.3f} |")
    if "languages" not in a.skip:
        rows = languages(data, a.weights)
        result["languages"] = rows
        print("\n### Sync proxy per language (best correlation within ±5 frames, lag in frames)\n")
        print("| audio | neural | phonemes |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['file']} | {r[NEURAL]['sync_corr']:.3f} ({r[NEURAL]['sync_lag']}) | "
                  f"{r[PHONEMES]['sync_corr']:.3f} ({r[PHONEMES]['sync_lag']}) |")
    if "speed" not in a.skip:
        s = speed(data, a.weights)
        result["speed"] = s
        print(f"\n### Speed (one thread)\n\n10 min of speech: {s['seconds']:.2f} s = {s['x_realtime']:.0f}× real time "
              f"(features + model + mesh, {s['frames']} frames at 25 fps); peak RSS {s['peak_rss_mb']:.0f} MB "
              f"({s['rss_before_mb']:.0f} MB after loading, before generating)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1, default=float))
    print(f"\nmax RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
