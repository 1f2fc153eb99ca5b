"""Benchmark the speaker's own mouth texture in visual dubbing (issue 14, items 1, 5, 6): quality and speed.

    .venv/bin/python bench/bench_dub_texture.py quality [--clips all|tune|held-out]
    .venv/bin/python bench/bench_dub_texture.py speed [--max-frames 300]

Both compare ``mouth_source="own_frames"`` (texture retrieval, :mod:`ptalk_models.mouth_texture`) with today's
renderer (``"warp"``: the frame's own mouth warped, synthetic cavity and teeth), through the plan the nodes use
(:func:`ptalk_models.dubbing.plan_dub`, smoothing 1, persona, pocketsphinx phonemes).

**quality** -- clips from ``../shared/data`` (``$PTALK_SHARED_DATA``). The texture parameters were tuned (by
looking and on these figures) on GRID ``video/lbax4n.mpg`` and ``talking/retalking/face_1.mp4`` only ("tune");
the "held-out" clips are other speakers: GRID ``lwbsza`` and ``sbwe5n``, ``video/retalking_face_5.mp4``,
CREMA-D ``1001_DFA_NEU_XX.flv`` and StyleTalk ``andrew_clip_1.mp4`` (speech: its .wav).

* self-dubbing: each clip with its own audio (policy trim): SSIM (Gaussian 11 px, sigma 1.5, mean over RGB) and
  PSNR (dB, of the mean squared error over all frames) of the dubbed frames against the real ones on a 256x256 crop of the face (the square box around the
  real frame's face oval, 10 % margin, resized with INTER_AREA), and the mouth LMD: mean distance of the 40 lip
  landmarks re-detected (MediaPipe) on the dubbed frames from those detected on the real frames, in inter-ocular
  distances of the real frame;
* cross-dubbing: each clip with another clip's speech (policy trim): sync proxy (:func:`metrics.sync_proxy`,
  best correlation within +-2 frames) of the re-detected mouth with the NEW speech and with the clip's ORIGINAL
  speech over the same frames;
* sharpness: variance of the Laplacian (grey, 0-255) in the box around the outer lips, dubbed over real frames
  (mean over frames; 1.0 = as sharp as the source); for cross-dubbing also over the source frames of the nearest
  inner-lip aperture (``_aperture_matched``: a closed mouth has less detail than one showing teeth).

**speed** -- frames/s of the render alone and end to end (decode + Face Landmarks + plan + bank + render, streamed
like Dub Video: decoded ahead in a background thread, rendered on 2 threads, the frames decoded again for the render,
no encode), and the process's peak RSS, for a
512x512 crop of ``retalking_face_5`` + ``audio/beckett.wav`` and ``demo3_video.mp4`` (1080x1920) + ``demo3_audio
.wav``; each configuration in a fresh process so that peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from _common import require_shared_data

from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.dub_render import iter_dub
from portraittalk.ptalk_models.dubbing import plan_dub
from portraittalk.ptalk_models.face import detect_landmarks, track_landmarks
from portraittalk.ptalk_models.threads import prefetch
from portraittalk.ptalk_models.media import frames_at, iter_video, read_audio, read_video, video_info
from portraittalk.ptalk_models.metrics import sync_proxy
from portraittalk.ptalk_models.mouth_texture import LIP_POINTS, build_mouth_bank

TUNE = [("video/lbax4n.mpg", None, "video/lwbsza.mpg"),
        ("talking/retalking/face_1.mp4", None, "audio/beckett.wav")]
HELD_OUT = [("video/lwbsza.mpg", None, "video/sbwe5n.mpg"),
            ("video/sbwe5n.mpg", None, "video/lbax4n.mpg"),
            ("video/retalking_face_5.mp4", None, "audio/beckett.wav"),
            ("video/crema-d/1001_DFA_NEU_XX.flv", None, "video/bbaf2n.mpg"),
            ("talking/styletalk/andrew_clip_1.mp4", "talking/styletalk/andrew_clip_1.wav", "audio/jfk.flac")]


# ------------------------------------------------------------------------------------------------ metrics
def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) over the RGB channels."""
    import cv2

    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5)  # noqa: E731
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    m = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(m[5:-5, 5:-5].mean())


def face_crop(frame: np.ndarray, px: np.ndarray, size: int = 256) -> np.ndarray:
    import cv2

    p = px[L.FACE_OVAL]
    c = 0.5 * (p.min(0) + p.max(0))
    half = 0.55 * float((p.max(0) - p.min(0)).max())
    x0, y0 = int(max(0, c[0] - half)), int(max(0, c[1] - half))
    x1, y1 = int(min(frame.shape[1], c[0] + half)), int(min(frame.shape[0], c[1] + half))
    return cv2.resize(frame[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def mouth_sharpness(frame: np.ndarray, px: np.ndarray) -> float:
    import cv2

    p = px[L.LIPS_OUTER]
    io = float(np.linalg.norm(px[263] - px[33]))
    x0, y0 = (int(max(0, v)) for v in p.min(0) - 0.05 * io)
    x1, y1 = (int(v) for v in p.max(0) + 0.05 * io)
    g = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def matched_sharpness_ratio(out, re, frames, lm, src_sharp) -> float:
    """Mean mouth sharpness of the dubbed frames over that of the source frames whose inner-lip aperture is
    nearest to each dubbed frame's re-detected one (a closed mouth has less detail than one showing teeth, so
    the plain ratio also measures how open the new speech is)."""
    ap_src = L.inner_lip_aperture(lm)
    ok = np.flatnonzero(lm.present)
    ap_out = L.inner_lip_aperture(re)
    num, den = [], []
    rpx = re.pixels()
    for t in np.flatnonzero(re.present):
        j = ok[np.argmin(np.abs(ap_src[ok] - ap_out[t]))]
        num.append(mouth_sharpness(out[t], rpx[t]))
        den.append(src_sharp[j])
    return float(np.mean(num) / np.mean(den))


def _audio(d, clip, wav_path):
    return read_audio(d / (wav_path or clip))


def _dub(frames, lm, wav, sr, mode):
    plan = plan_dub(lm, wav, sr, "trim")
    src = frames[plan.source_index]
    out = np.stack(list(iter_dub(src, plan.source, plan.target, mouth_source=mode)))
    return plan, src, out


def quality(d, clips) -> list[dict]:
    rows = []
    for clip, wav_path, other in clips:
        frames, fps = read_video(d / clip)
        lm = detect_landmarks(frames, on_missing="keep", fps=fps)
        own = _audio(d, clip, wav_path)
        new = read_audio(d / other)
        row = {"clip": clip, "frames": len(frames), "size": f"{frames.shape[2]}x{frames.shape[1]}"}
        lpx = lm.pixels()
        src_sharp = np.array([mouth_sharpness(frames[t], lpx[t]) if lm.present[t] else np.nan
                              for t in range(len(frames))])
        for mode in ("warp", "own_frames"):
            # self-dubbing
            plan, src, out = _dub(frames, lm, *own, mode)
            gt = lm.frames(0, len(lm))
            idx = plan.source_index
            ok = gt.present[idx]
            gpx = gt.pixels()[idx]
            s = [ssim(face_crop(out[t], gpx[t]), face_crop(src[t], gpx[t])) for t in np.flatnonzero(ok)]
            mse = np.mean([np.mean((face_crop(out[t], gpx[t]).astype(np.float64) - face_crop(src[t], gpx[t])) ** 2)
                           for t in np.flatnonzero(ok)])
            re = detect_landmarks(out, on_missing="keep", fps=fps)
            both = ok & re.present
            rpx = re.pixels()
            io = np.linalg.norm(gpx[:, 263] - gpx[:, 33], axis=-1)
            lmd = np.linalg.norm(rpx[:, LIP_POINTS] - gpx[:, LIP_POINTS], axis=-1).mean(-1) / io
            sharp = np.mean([mouth_sharpness(out[t], rpx[t]) for t in np.flatnonzero(both)]) / np.mean(
                [mouth_sharpness(src[t], gpx[t]) for t in np.flatnonzero(both)])
            row[mode] = {"self_ssim": float(np.mean(s)), "self_psnr": float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12))),
                         "self_mouth_lmd_iod": float(lmd[both].mean()), "self_sharpness_ratio": float(sharp)}
            # cross-dubbing
            plan, src, out = _dub(frames, lm, *new, mode)
            re = detect_landmarks(out, on_missing="keep", fps=fps)
            n = len(out)
            new_s = sync_proxy(re, *new, fps=fps, max_lag=2)["best_corr"]
            ow, osr = own
            old_s = sync_proxy(re, ow[..., :int(round(n / fps * osr))], osr, fps=fps, max_lag=2)["best_corr"]
            both = re.present & plan.source.present
            rpx, spx = re.pixels(), plan.source.pixels()
            sharp = np.mean([mouth_sharpness(out[t], rpx[t]) for t in np.flatnonzero(both)]) / np.mean(
                [mouth_sharpness(src[t], spx[t]) for t in np.flatnonzero(both)])
            row[mode].update({"cross_speech": other, "cross_sync_new": float(new_s), "cross_sync_original":
                              float(old_s), "cross_sharpness_ratio": float(sharp),
                              "cross_sharpness_ratio_aperture_matched":
                                  matched_sharpness_ratio(out, re, frames, lm, src_sharp)})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ speed
def _crop512(path, tmp):
    """retalking_face_5 cropped to 512x512 (rows/cols 6..518), written losslessly to ``tmp``."""
    from portraittalk.ptalk_models.media import write_mp4

    frames, fps = read_video(path)
    out = os.path.join(tmp, "face5_512.mp4")
    write_mp4(out, (np.ascontiguousarray(f[6:518, 6:518]) for f in frames), fps, 512, 512, crf=0)
    return out


def speed_one(video, audio, mode, max_frames) -> dict:
    """One streamed dub in this process (as Dub Video does it, without the encode)."""
    t0 = time.perf_counter()
    w, h, fps, total = video_info(video)
    n_src = min(total, max_frames) if max_frames else total

    def frames():
        for i, (f, _) in enumerate(iter_video(video)):
            if max_frames and i >= max_frames:
                return
            yield f

    lm = track_landmarks(prefetch(frames()), n_src, on_missing="keep", fps=fps)
    wav, sr = read_audio(audio)
    plan = plan_dub(lm, wav, sr, "trim")
    t1 = time.perf_counter()
    bank = None
    if mode == "own_frames":
        bank = build_mouth_bank(plan.source, lambda ids: frames_at(video, ids), plan.source_index)
    t2 = time.perf_counter()
    n = 0
    for _ in iter_dub(prefetch(frames_at(video, plan.source_index)), plan.source, plan.target, mouth_source=mode,
                      bank=bank):
        n += 1
    t3 = time.perf_counter()
    return {"video": os.path.basename(str(video)), "size": f"{w}x{h}", "mode": mode, "frames": n,
            "end_to_end_fps": n / (t3 - t0), "render_fps": n / (t3 - t2), "bank_s": t2 - t1,
            "bank_mb": (bank.nbytes / 1e6 if bank is not None else 0.0),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
            "load_avg_1min": os.getloadavg()[0]}


def speed(d, max_frames) -> list[dict]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(_crop512(d / "video" / "retalking_face_5.mp4", tmp), d / "audio" / "beckett.wav"),
                 (d / "video" / "demo3_video.mp4", d / "video" / "demo3_audio.wav")]
        for video, audio in cases:
            for mode in ("warp", "own_frames"):
                r = subprocess.run([sys.executable, __file__, "_speed_one", str(video), str(audio), mode,
                                    str(max_frames)], capture_output=True, text=True, check=True)
                row = json.loads(r.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_speed_one":
        print(json.dumps(speed_one(argv[1], argv[2], argv[3], int(argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["quality", "speed"])
    ap.add_argument("--clips", default="held-out", choices=["held-out", "tune", "all"])
    ap.add_argument("--max-frames", type=int, default=0, help="speed: use only the first N video frames (0 = all)")
    args = ap.parse_args(argv)
    d = require_shared_data()
    if args.what == "quality":
        clips = {"held-out": HELD_OUT, "tune": TUNE, "all": TUNE + HELD_OUT}[args.clips]
        quality(d, clips)
    else:
        speed(d, args.max_frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
