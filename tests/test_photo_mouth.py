"""The talking photo's own mouth from reference photos (issue 14 item 1): Landmark Warp Render's
``mouth_references`` (:func:`ptalk_models.mouth_texture.build_photo_bank`, :func:`~ptalk_models.mouth_texture.paste_mouths`).

Real media: GRID lwbsza (360x288, 25 fps) as a talking photo with ground truth. The portrait is the closed-mouth
frame of the clip's first half, the reference photos five more first-half frames spanning its mouth openings
(bench/bench_photo_mouth.py's choice); the render is driven by the real landmarks of the second half and compared
with those real frames in the box around the lips. Measured when written: mouth-box PSNR 26.6 dB painted → 31.4
dB with the photos, open frames 23.8 → 30.6 dB.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


@pytest.fixture(scope="module")
def clip(shared_data):
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture
    from portraittalk.ptalk_models.media import read_video

    v, fps = read_video(shared_data / "video" / "lwbsza.mpg")
    lm = detect_landmarks(v, on_missing="keep", fps=fps)
    from bench_photo_mouth import choose_photos

    half = len(v) // 2
    portrait, refs = choose_photos(inner_lip_aperture(lm), lm.present, half)
    return v, lm, half, portrait, refs


def test_reference_photos_give_the_real_mouth(clip):
    """Engine: with the photos the mouth box is much closer to the real frames than the painted mouth (≥ 3 dB
    PSNR overall, ≥ 4 dB in open frames); pixels outside the mouth regions are the painted render's; faceless
    frames are unchanged."""
    from bench_photo_mouth import mouth_box, psnr

    from portraittalk.ptalk_models import landmarks as L
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture
    from portraittalk.ptalk_models.mouth_texture import build_photo_bank, paste_mouths
    from portraittalk.ptalk_models.render import WarpRenderer, iter_render

    v, lm, half, portrait, refs = clip
    r = WarpRenderer(v[portrait], lm.frame(portrait))
    bank = build_photo_bank([v[portrait]] + [v[i] for i in refs], [lm.frame(portrait)] + [lm.frame(i) for i in refs])
    assert len(bank) == len(refs) + 1
    seq = lm.frames(half, len(v))
    seq = seq.with_points(seq.points, present=seq.present & (np.arange(len(seq)) != 3))  # one faceless frame
    painted = [np.asarray(f).copy() for f in iter_render(r, seq, patches=True)]
    photos = [np.asarray(f) for f in paste_mouths(iter_render(r, seq, patches=True), seq, bank, (r.width, r.height))]
    assert np.array_equal(photos[3], painted[3])
    ap = inner_lip_aperture(seq)
    openf = ap > np.percentile(ap[seq.present], 60)
    res = {"painted": [], "photos": []}
    for t in np.flatnonzero(seq.present):
        px = L.to_pixels(seq.points[t], seq.image_size)
        ys, xs = mouth_box(px, v.shape[1:3])
        for k, fr in (("painted", painted[t]), ("photos", photos[t])):
            res[k].append(psnr(v[half + t][ys, xs], fr[ys, xs]))
        # outside a generous box around the lips nothing changed
        m = np.ones(v.shape[1:3], bool)
        io = float(L.inter_ocular_px(px))
        lips = px[L.LIPS_OUTER, :2]
        x0, y0 = np.maximum((lips.min(0) - 0.5 * io).astype(int), 0)
        x1, y1 = (lips.max(0) + 0.5 * io).astype(int)
        m[y0:y1, x0:x1] = False
        assert np.array_equal(photos[t][m], painted[t][m])
    a, b = np.array(res["painted"]), np.array(res["photos"])
    o = openf[seq.present]
    print(f"\nmouth-box PSNR painted {a.mean():.2f} → photos {b.mean():.2f} dB; open frames {a[o].mean():.2f} → "
          f"{b[o].mean():.2f} dB")
    assert b.mean() > a.mean() + 3.0 and b[o].mean() > a[o].mean() + 4.0


def test_mouth_references_through_the_nodes(comfy, clip):
    """Landmark Warp Render (IMAGE) and → Video get the same frames with mouth_references as the engine; a
    reference photo without a face is a clear node error naming mouth_references."""
    from portraittalk.nodes.glue.errors import NodeInputError
    from portraittalk.ptalk_models.mouth_texture import build_photo_bank, paste_mouths
    from portraittalk.ptalk_models.render import WarpRenderer, iter_render

    v, lm, half, portrait, refs = clip
    seq = lm.frames(half, half + 20)
    to_img = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float().div(255.0)  # noqa: E731
    ref_img, photos = to_img(v[portrait][None]), to_img(v[refs])
    r = WarpRenderer(v[portrait], lm.frame(portrait))
    bank = build_photo_bank([v[portrait]] + [v[i] for i in refs], [lm.frame(portrait)] + [lm.frame(i) for i in refs])
    want = np.stack([np.asarray(f) for f in paste_mouths(iter_render(r, seq, even_size=True, patches=True), seq,
                                                         bank, (r.width, r.height))])
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    got = nodes["PTalkLandmarkWarpRender"].execute(ref_img, seq, "cavity_and_teeth", True,
                                                   reference_landmarks=lm.frame(portrait),
                                                   mouth_references=photos).result[0]
    assert np.array_equal((got.numpy() * 255.0 + 0.5).astype(np.uint8), want)
    video = nodes["PTalkLandmarkWarpRenderVideo"].execute(ref_img, seq, "cavity_and_teeth", True,
                                                          reference_landmarks=lm.frame(portrait),
                                                          mouth_references=photos).result[0]
    frames = (video.get_components().images.numpy() * 255.0 + 0.5).astype(np.uint8)
    assert np.array_equal(frames, want)
    faceless = to_img(np.full((1, 288, 360, 3), 90, np.uint8))
    with pytest.raises(NodeInputError, match=r"Landmark Warp Render.*mouth_references.*no face found in photo 1"):
        nodes["PTalkLandmarkWarpRender"].execute(ref_img, seq, "cavity_and_teeth", True,
                                                 reference_landmarks=lm.frame(portrait), mouth_references=faceless)
