"""Visual-dubbing CPU renderer (ptalk_models.dub_render) on real GRID frames with real MediaPipe landmarks.

Targets are the frames' own landmarks, edited (lower lip + jaw dropped, upper face moved); rendered frames
are re-detected with MediaPipe to check that the mouth really opened.
"""
import time

import numpy as np
import pytest

from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.dub_render import dub_region_mask, iter_dub, lower_face_weights, render_dub, render_dub_frame
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks
from portraittalk.ptalk_models.media import read_video


@pytest.fixture(scope="module")
def grid(shared_data):
    """Frames 0, 20, 40, 60 of GRID lbax4n (uint8 [4, 288, 360, 3]) and their MediaPipe landmarks."""
    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    frames = np.ascontiguousarray(frames[[0, 20, 40, 60]])
    return frames, detect_landmarks(frames, fps=fps)


def open_jaw_px(px, amount):
    """Pixel landmarks with everything below the inner-lip mid-line moved down by up to ``amount`` x the
    inter-ocular distance (full at the mouth centre, fading sideways towards the ears)."""
    px = np.array(px, np.float64)
    io = np.linalg.norm(px[L.LEFT_EYE_OUTER, :2] - px[L.RIGHT_EYE_OUTER, :2])
    mid = 0.5 * (px[L.LIPS_INNER_UPPER] + px[L.LIPS_INNER_LOWER])
    o = np.argsort(mid[:, 0])
    below = px[:, 1] > np.interp(px[:, 0], mid[o, 0], mid[o, 1]) + 1e-3
    below[L.LIPS_INNER_UPPER] = False
    below[[78, 308]] = False
    mw = abs(px[L.MOUTH_CORNER_LEFT, 0] - px[L.MOUTH_CORNER_RIGHT, 0])
    side = np.exp(-((px[:, 0] - px[L.UPPER_LIP_INNER_MID, 0]) / (1.2 * mw)) ** 2)
    px[:, 1] += amount * io * below * side
    return px


def _weight(shape_hw, src, dst):
    """float32 [H, W] paste weight for the effective target of ``dst`` (0 outside the box)."""
    w = lower_face_weights(src)
    eff = src[:, :2] + w[:, None] * (dst[:, :2] - src[:, :2])
    wgt, (x0, y0, x1, y1) = dub_region_mask(shape_hw, src, eff)
    m = np.zeros(shape_hw, np.float32)
    m[y0:y1, x0:x1] = wgt
    return m


def _region(shape_hw, src, dst):
    """bool [H, W]: pixels with a non-zero paste weight."""
    return _weight(shape_hw, src, dst) > 0


def test_identity_target(grid):
    frames, lm = grid
    for t in range(len(frames)):
        f, src = frames[t], lm.pixels(t).astype(np.float64)
        assert np.array_equal(render_dub_frame(f, src, src.copy()), f)
        # a sub-pixel target change forces the full warp + colour-match path: still the input
        out = render_dub_frame(f, src, src + 1e-4)
        region = _region(f.shape[:2], src, src + 1e-4)
        assert region.sum() > 2000
        d = np.abs(out.astype(int) - f.astype(int)).max(-1)
        assert d[region].max() <= 1 and d[region].mean() < 0.01
        assert np.array_equal(out[~region], f[~region])


def test_outside_region_bit_identical_and_upper_face_ignored(grid):
    frames, lm = grid
    f, src = frames[0], lm.pixels(0).astype(np.float64)
    dst = open_jaw_px(src, 0.25)
    dst[:, :2][lower_face_weights(src) == 0] += (3.0, -2.0)      # upper-face target motion must be ignored
    out = render_dub_frame(f, src, dst)
    region = _region(f.shape[:2], src, dst)
    changed = np.any(out != f, -1)
    assert changed.sum() > 1000
    assert not (changed & ~region).any()
    # nothing above the nose-bottom line minus the dilation/feather changes (eyes, nose, upper cheeks)
    io = np.linalg.norm(src[263] - src[33])
    top = int(src[2, 1] - 0.12 * io) - 1
    assert np.array_equal(out[:top], f[:top])
    # colour match keeps the seam quiet: the feather ring differs little from the source
    wgt = _weight(f.shape[:2], src, dst)
    ring = (wgt > 0) & (wgt < 0.5)
    assert ring.sum() > 500
    assert np.abs(out[ring].astype(int) - f[ring].astype(int)).mean() < 3


def test_open_jaw_opens_redetected_mouth(grid):
    frames, lm = grid
    outs, gaps_in = [], []
    for t in range(len(frames)):
        src = lm.pixels(t).astype(np.float64)
        outs.append(render_dub_frame(frames[t], src, open_jaw_px(src, 0.3)))
        gaps_in.append(float(L.inner_lip_gap_px(src)))
    re = detect_landmarks(np.stack(outs))
    gaps_out = L.inner_lip_gap_px(re.pixels())
    io = L.inter_ocular_px(lm.pixels())
    opened = (gaps_out - np.array(gaps_in)) / io
    assert np.all(opened > 0.08), (gaps_in, gaps_out.tolist())
    # no colour match / no fill still runs
    src = lm.pixels(0).astype(np.float64)
    out = render_dub_frame(frames[0], src, open_jaw_px(src, 0.3), color_match=False, mouth_fill="none")
    assert out.shape == frames[0].shape and out.dtype == np.uint8


def test_render_dub_clip_and_faceless_passthrough(grid):
    frames, lm = grid
    T = len(frames)
    tgt_px = np.stack([open_jaw_px(lm.pixels(t), 0.25) for t in range(T)])
    pts = lm.points.copy()
    pts[..., :2] = tgt_px / np.array(lm.image_size, np.float32)
    present = np.array([True, False, True, True])
    target = FaceLandmarks.from_points(pts, lm.image_size, fps=lm.fps, present=present)
    src_present = lm.with_points(lm.points, present=np.array([True, True, True, False]))
    calls = []
    out = render_dub(frames, src_present, target, progress=lambda d, n: calls.append((d, n)))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert calls[-1] == (T, T)
    assert np.array_equal(out[1], frames[1]) and np.array_equal(out[3], frames[3])
    assert not np.array_equal(out[0], frames[0]) and not np.array_equal(out[2], frames[2])
    # an iterator of frames streams the same result
    it = list(iter_dub(iter(list(frames)), src_present, target))
    assert all(np.array_equal(a, b) for a, b in zip(it, out))
    # a target from a resized copy (same aspect) is accepted; another aspect is not
    small = FaceLandmarks.from_points(pts, (180, 144), present=present)
    assert np.array_equal(render_dub(frames, src_present, small), out)
    with pytest.raises(ValueError, match="aspect"):
        render_dub(frames, src_present, FaceLandmarks.from_points(pts, (300, 300)))
    with pytest.raises(ValueError):
        render_dub_frame(frames[0], lm.pixels(0)[:100], lm.pixels(0))


def test_odd_sizes(grid):
    frames, lm = grid
    f = np.ascontiguousarray(frames[0][3:3 + 277, 5:5 + 333])    # 333 x 277, odd both ways
    src = lm.pixels(0).astype(np.float64) - (5, 3)
    out = render_dub_frame(f, src, open_jaw_px(src, 0.25))
    assert out.shape == f.shape
    region = _region(f.shape[:2], src, open_jaw_px(src, 0.25))
    assert np.array_equal(out[~region], f[~region]) and not np.array_equal(out, f)
    # a face cut by the image edge (bottom rows removed below the mouth) still renders
    g = np.ascontiguousarray(frames[0][: int(lm.pixels(0)[L.CHIN, 1]) - 15])
    out = render_dub_frame(g, lm.pixels(0).astype(np.float64), open_jaw_px(lm.pixels(0), 0.2))
    assert out.shape == g.shape


def test_speed_per_frame(grid, shared_data, astronaut, astronaut_lm, record_property):
    """ms per frame at GRID 360x288, on the 512x512 astronaut (small face) and on a 512x512 crop of
    retalking_face_5 (face filling most of the frame: the expensive case)."""
    frames, lm = grid
    import av

    with av.open(str(shared_data / "video" / "retalking_face_5.mp4")) as c:
        big = next(c.decode(c.streams.video[0])).to_ndarray(format="rgb24")
    big = np.ascontiguousarray(big[6:518, 6:518])
    big_lm = detect_landmarks(big)
    res = {}
    for name, f, src in (("grid_360x288", frames[0], lm.pixels(0).astype(np.float64)),
                         ("astronaut_512", astronaut, astronaut_lm.pixels(0).astype(np.float64)),
                         ("retalking_512", big, big_lm.pixels(0).astype(np.float64))):
        dst = open_jaw_px(src, 0.25)
        render_dub_frame(f, src, dst)
        t0 = time.perf_counter()
        n = 10
        for _ in range(n):
            render_dub_frame(f, src, dst)
        res[name] = (time.perf_counter() - t0) / n * 1000
        record_property(f"dub_ms_{name}", round(res[name], 2))
    print("dub render ms/frame:", {k: round(v, 2) for k, v in res.items()})
    assert res["grid_360x288"] < 150 and res["astronaut_512"] < 300 and res["retalking_512"] < 400
