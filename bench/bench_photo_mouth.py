"""Benchmark the talking photo's own mouth from reference photos (issue 14 item 1: Landmark Warp Render's
``mouth_references``, :func:`ptalk_models.mouth_texture.build_photo_bank` + :func:`~ptalk_models.mouth_texture.paste_mouths`).

    .venv/bin/python bench/bench_photo_mouth.py [--clips video/lbax4n.mpg ...]

Protocol (a talking photo re-rendering a real video, so there is ground truth): for each clip, the portrait is the
closed-mouth frame of the FIRST half and the reference photos are five more first-half frames (those at the 50th,
70th, 85th, 95th and 100th percentile of the inner-lip aperture); the render is driven by the real MediaPipe
landmarks of the SECOND half (frames no reference comes from) and compared with those real frames in the box
around the outer lips (0.15 inter-ocular distances of margin): PSNR (dB, mean over frames) and SSIM (the same
SSIM as bench_dub_texture.py, Gaussian 11 px, on the box resized to 64x64), over all frames and over the open
frames (aperture above the second half's 60th percentile); sharpness = Laplacian variance in the box over the real
frame's (1.0 = as sharp). Renderers: ``painted`` (today's Landmark Warp Render: the portrait warped, the opened
mouth painted with cavity and teeth) and ``photos`` (the same with the bank's mouths pasted). Also render
frames/s (face-crop patches, no encode). Nothing here was tuned on these clips: the bank's parameters are the
dubbing bank's (tuned on GRID lbax4n and retalking face_1 for dubbing).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import require_shared_data
from bench_dub_texture import ssim

from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import inner_lip_aperture
from portraittalk.ptalk_models.media import read_video
from portraittalk.ptalk_models.mouth_texture import build_photo_bank, paste_mouths
from portraittalk.ptalk_models.render import WarpRenderer, iter_render

CLIPS = ["video/lbax4n.mpg", "video/lwbsza.mpg", "video/sbwe5n.mpg", "video/brbk7n.mpg",
         "video/retalking_face_5.mp4", "video/crema-d/1001_DFA_NEU_XX.flv"]
PERCENTILES = (50, 70, 85, 95, 100)


def mouth_box(px: np.ndarray, shape) -> tuple[slice, slice]:
    lips = px[L.LIPS_OUTER, :2]
    m = 0.15 * float(L.inter_ocular_px(px))
    x0, y0 = np.maximum((lips.min(0) - m).astype(int), 0)
    x1, y1 = np.minimum((lips.max(0) + m).astype(int), (shape[1], shape[0]))
    return slice(y0, y1), slice(x0, x1)


def psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-9))


def sharpness(img) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def choose_photos(ap: np.ndarray, present: np.ndarray, half: int) -> tuple[int, list[int]]:
    """(portrait frame, reference frames) from the first half."""
    a = np.where(present[:half], ap[:half], np.nan)
    portrait = int(np.nanargmin(a))
    valid = np.flatnonzero(np.isfinite(a))
    order = valid[np.argsort(a[valid])]
    refs = sorted({int(order[int(round(p / 100 * (len(order) - 1)))]) for p in PERCENTILES} - {portrait})
    return portrait, refs


def run_clip(path) -> dict:
    import cv2

    v, fps = read_video(path)
    if v.shape[2] > 720:  # keep the 1080p clips cheap: the mouth box is what is compared
        s = 720 / v.shape[2]
        v = np.stack([cv2.resize(f, (720, round(f.shape[0] * s)), interpolation=cv2.INTER_AREA)
                      for f in v])
    lm = detect_landmarks(v, on_missing="keep", fps=fps)
    ap = inner_lip_aperture(lm)
    half = len(v) // 2
    portrait, refs = choose_photos(ap, lm.present, half)
    renderer = WarpRenderer(v[portrait], lm.frame(portrait))
    bank = build_photo_bank([v[portrait]] + [v[i] for i in refs], [lm.frame(portrait)] + [lm.frame(i) for i in refs])
    seq = lm.frames(half, len(v))
    t0 = time.perf_counter()
    painted = [np.asarray(f) for f in iter_render(renderer, seq, patches=True)]
    t1 = time.perf_counter()
    photos = [np.asarray(f) for f in paste_mouths(iter_render(renderer, seq, patches=True), seq, bank,
                                                  (renderer.width, renderer.height))]
    t2 = time.perf_counter()
    ap2 = ap[half:]
    openf = ap2 > np.percentile(ap2[seq.present], 60)
    rows = {k: [] for k in ("painted", "photos")}
    for t in np.flatnonzero(seq.present):
        ys, xs = mouth_box(L.to_pixels(seq.points[t], seq.image_size), v.shape[1:3])
        real = v[half + t][ys, xs]
        for k, fr in (("painted", painted[t]), ("photos", photos[t])):
            got = fr[ys, xs]
            rows[k].append((psnr(real, got), ssim(cv2.resize(real, (64, 64)), cv2.resize(got, (64, 64))),
                            sharpness(got) / max(sharpness(real), 1e-6), bool(openf[t])))
    out = {"frames": int(seq.present.sum()), "refs": len(refs),
           "fps": {"painted": len(seq) / (t1 - t0), "photos": len(seq) / (t2 - t1)}}
    for k, r in rows.items():
        a = np.array(r, dtype=np.float64)
        o = a[:, 3] > 0
        out[k] = {"psnr": a[:, 0].mean(), "ssim": a[:, 1].mean(), "psnr_open": a[o, 0].mean(),
                  "ssim_open": a[o, 1].mean(), "sharpness": a[:, 2].mean()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", nargs="*", default=CLIPS)
    args = ap.parse_args()
    data = require_shared_data()
    print("| clip | frames | PSNR painted → photos | SSIM | open PSNR | open SSIM | sharpness | render fps |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.clips:
        r = run_clip(data / c)
        p, q = r["painted"], r["photos"]
        print(f"| {c} | {r['frames']} | {p['psnr']:.2f} → {q['psnr']:.2f} | {p['ssim']:.3f} → {q['ssim']:.3f} | "
              f"{p['psnr_open']:.2f} → {q['psnr_open']:.2f} | {p['ssim_open']:.3f} → {q['ssim_open']:.3f} | "
              f"{p['sharpness']:.2f} → {q['sharpness']:.2f} | {r['fps']['painted']:.0f} → {r['fps']['photos']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
