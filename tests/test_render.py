"""Warp renderer and landmark drawing on real photos, checked with the real MediaPipe Face Landmarker.

Driving landmarks are the photo's own MediaPipe landmarks, edited: lower lip + jaw dropped (``open_jaw``),
the inner lips pulled together, the whole face translated. Rendered frames are re-detected with MediaPipe
to check that the face really moved / the mouth really opened.
"""
import cv2
import numpy as np
import pytest

from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.draw import CONTROLNET_COLORS, draw_landmarks
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks, inner_lip_aperture
from portraittalk.ptalk_models.render import WarpRenderer, render_sequence


@pytest.fixture(scope="module")
def photos(astronaut, astronaut_lm, grid_still, grid_still_lm):
    """{name: (image uint8 RGB, FaceLandmarks)} for the two real portraits."""
    return {"astronaut": (astronaut, astronaut_lm), "grid_still_lbax4n": (grid_still, grid_still_lm)}


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _sm(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def open_jaw(points, image_size, amount):
    """Drop lower lip and jaw: the inner-lip gap at the centre grows by ``amount`` x inter-ocular distance.

    Points below the inner-lip mid-line move down; the lips follow a rounded profile across the mouth, the
    jaw a broad one that fades towards the ears.
    """
    p = np.array(points, np.float64)
    wh = np.array(image_size, np.float64)
    px = p[:, :2] * wh
    io = np.linalg.norm(px[L.LEFT_EYE_OUTER] - px[L.RIGHT_EYE_OUTER])
    mid = 0.5 * (px[L.LIPS_INNER_UPPER] + px[L.LIPS_INNER_LOWER])
    order = np.argsort(mid[:, 0])
    below = px[:, 1] > np.interp(px[:, 0], mid[order, 0], mid[order, 1]) + 1e-3
    xc = px[L.UPPER_LIP_INNER_MID, 0]
    mw = abs(px[L.MOUTH_CORNER_LEFT, 0] - px[L.MOUTH_CORNER_RIGHT, 0])
    lips = np.clip(1 - ((px[:, 0] - xc) / (0.55 * mw)) ** 2, 0, 1) ** 0.6
    jaw = np.exp(-((px[:, 0] - xc) / (1.9 * mw)) ** 2)
    t = _sm((px[:, 1] - px[17, 1]) / max(px[L.CHIN, 1] - px[17, 1], 1.0))
    w = below * ((1 - t) * lips + t * jaw)
    w[L.LIPS_INNER_UPPER] = 0.0
    w = np.clip(w / max(w[L.LOWER_LIP_INNER_MID], 1e-6), 0, 1)
    px[:, 1] += amount * io * w
    p[:, :2] = px / wh
    return p.astype(np.float32)


def _shift(points, image_size, dx, dy):
    p = np.array(points, np.float32)
    p[:, 0] += dx / image_size[0]
    p[:, 1] += dy / image_size[1]
    return p


def _outside(box, shape):
    x0, y0, x1, y1 = box
    m = np.ones(shape[:2], bool)
    m[y0:y1, x0:x1] = False
    return m


# ------------------------------------------------------------------------------------------------ render

@pytest.mark.parametrize("name", ["astronaut", "grid_still_lbax4n"])
def test_own_landmarks_give_back_the_reference(photos, name):
    img, lm = photos[name]
    r = WarpRenderer(img, lm)
    out = r.render(lm.points[0])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert _psnr(out, img) > 35.0
    # deterministic: same input, same bytes
    q = open_jaw(lm.points[0], lm.image_size, 0.2)
    assert np.array_equal(r.render(q), WarpRenderer(img, lm).render(q))


@pytest.mark.parametrize("name", ["astronaut", "grid_still_lbax4n"])
def test_opened_mouth_is_redetected(photos, name):
    """MediaPipe, run on the rendered frames, finds an inner-lip aperture that follows the driven one."""
    img, lm = photos[name]
    r = WarpRenderer(img, lm)
    ref_ap = inner_lip_aperture(lm)[0]
    got = []
    for amount in (0.12, 0.28):
        q = open_jaw(lm.points[0], lm.image_size, amount)
        driven = inner_lip_aperture(lm.with_points(q[None]))[0]
        seen = inner_lip_aperture(detect_landmarks(r.render(q)))[0]
        assert seen > ref_ap + 0.5 * (driven - ref_ap), (amount, ref_ap, driven, seen)
        assert abs(seen - driven) < 0.2 * driven, (amount, driven, seen)
        got.append(seen)
    assert got[1] > got[0] + 0.06


def test_mouth_fill_paints_a_dark_cavity(photos):
    """The opened band is dark (cavity) with brighter teeth; mouth_fill='none' leaves the plain warp."""
    img, lm = photos["grid_still_lbax4n"]
    q = open_jaw(lm.points[0], lm.image_size, 0.28)
    filled = WarpRenderer(img, lm).render(q)
    plain = WarpRenderer(img, lm, mouth_fill="none").render(q)
    px = q[:, :2] * lm.image_size
    # sample the centre of the newly opened band (between the driven inner lips, centre line)
    c = np.rint(0.5 * (px[13] + px[14])).astype(int)
    patch = filled[c[1] - 2:c[1] + 3, c[0] - 3:c[0] + 4].astype(float)
    skin = img[int(px[L.NOSE_TIP, 1]) + 2, int(px[L.NOSE_TIP, 0])].astype(float)
    assert patch.mean() < 0.35 * skin.mean()
    assert patch[..., 0].mean() > patch[..., 2].mean()           # reddish-brown, not grey/blue
    assert np.abs(filled.astype(int) - plain.astype(int)).max() > 60
    # outside the mouth region the two renders are identical
    lo, hi = px[L.LIPS_INNER].min(0) - 3, px[L.LIPS_INNER].max(0) + 3
    m = np.ones(img.shape[:2], bool)
    m[int(lo[1]):int(hi[1]) + 1, int(lo[0]):int(hi[0]) + 1] = False
    assert np.array_equal(filled[m], plain[m])


def test_closing_an_open_reference_mouth_compresses_it(photos):
    """The astronaut smiles with teeth showing: pulling the inner lips together closes the rendered mouth."""
    img, lm = photos["astronaut"]
    wh = np.array(lm.image_size, np.float64)
    p = lm.points[0].astype(np.float64).copy()
    px = p[:, :2] * wh
    up, lo = px[L.LIPS_INNER_UPPER], px[L.LIPS_INNER_LOWER]
    mid = 0.5 * (up + lo)
    px[L.LIPS_INNER_UPPER] = up + 0.9 * (mid - up)
    px[L.LIPS_INNER_LOWER] = lo + 0.9 * (mid - lo)
    p[:, :2] = px / wh
    seen = inner_lip_aperture(detect_landmarks(WarpRenderer(img, lm).render(p.astype(np.float32))))[0]
    assert seen < 0.8 * inner_lip_aperture(lm)[0]


@pytest.mark.parametrize("name", ["astronaut", "grid_still_lbax4n"])
def test_background_untouched_and_no_seam(photos, name):
    img, lm = photos[name]
    r = WarpRenderer(img, lm)
    q = _shift(open_jaw(lm.points[0], lm.image_size, 0.25), lm.image_size, 5, 3)
    out = r.render(q)
    box = r.crop_box()
    outside = _outside(box, img.shape)
    assert outside.sum() > 0.3 * outside.size                   # the crop is a face crop, not the image
    assert np.array_equal(out[outside], img[outside])          # bit-identical outside
    x0, y0, x1, y1 = box
    inner = out[y0:y1, x0:x1].astype(int) - img[y0:y1, x0:x1].astype(int)
    assert np.abs(inner).max() > 50                             # but the face did change
    # no seam: along the crop sides that lie inside the image (2 px band) the render equals the reference
    # within a few levels (sides on the image edge may move: nothing lies beyond them)
    H, W = img.shape[:2]
    band = np.zeros(inner.shape[:2], bool)
    if y0 > 0:
        band[:2] = True
    if y1 < H:
        band[-2:] = True
    if x0 > 0:
        band[:, :2] = True
    if x1 < W:
        band[:, -2:] = True
    assert band.sum() > 100
    assert np.abs(inner[band]).max() <= 3


@pytest.mark.parametrize("name", ["astronaut", "grid_still_lbax4n"])
def test_render_patch_is_the_frame_inside_the_face_crop(photos, name):
    """render_patch gives only the face crop (the rest of the frame is the reference): pasted into the reference
    it is exactly render's frame — for a normal frame (inside crop_box) and a very large head motion (an
    enlarged crop)."""
    img, lm = photos[name]
    r = WarpRenderer(img, lm)
    x0, y0, x1, y1 = r.crop_box()
    for q, inside in ((open_jaw(lm.points[0], lm.image_size, 0.25), True),
                      (_shift(lm.points[0], lm.image_size, 0.3 * (x1 - x0), 0.2 * (y1 - y0)), False)):
        patch, x, y = r.render_patch(q)
        assert patch.dtype == np.uint8 and patch.ndim == 3 and patch.shape[2] == 3
        if inside:
            assert (x, y, x + patch.shape[1], y + patch.shape[0]) == (x0, y0, x1, y1)
        frame = img.copy()
        frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        assert np.array_equal(frame, r.render(q))


@pytest.mark.parametrize("name,dx,dy", [("astronaut", 8, 8), ("grid_still_lbax4n", 8, -5), ("astronaut", 40, -30)])
def test_translated_head_moves_the_face(photos, name, dx, dy):
    img, lm = photos[name]
    out = WarpRenderer(img, lm).render(_shift(lm.points[0], lm.image_size, dx, dy))
    moved = detect_landmarks(out).pixels(0) - lm.pixels(0)
    for idx in (L.NOSE_TIP, L.RIGHT_EYE_INNER, L.LEFT_EYE_INNER):
        assert np.allclose(moved[idx], (dx, dy), atol=1.5), (idx, moved[idx])


def test_odd_size_portrait_canvas_and_resized_image(photos):
    img, lm = photos["astronaut"]
    canvas = np.full((771, 513, 3), 90, np.uint8)
    canvas[100:612, 0:512] = img
    lm_c = detect_landmarks(canvas)
    r = WarpRenderer(canvas, lm_c)
    q = open_jaw(lm_c.points[0], lm_c.image_size, 0.25)
    out = r.render(q)
    assert out.shape == (771, 513, 3)
    outside = _outside(r.crop_box(), canvas.shape)
    assert np.array_equal(out[outside], canvas[outside])
    seen = inner_lip_aperture(detect_landmarks(out))[0]
    driven = inner_lip_aperture(lm_c.with_points(q[None]))[0]
    assert abs(seen - driven) < 0.2 * driven

    # landmarks detected at 512x512, image rendered at 256x256 (same aspect): normalised coordinates
    small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    out_s = WarpRenderer(small, lm).render(lm.points[0])
    assert out_s.shape == (256, 256, 3) and _psnr(out_s, small) > 35.0

    with pytest.raises(ValueError, match="reference_image.*aspect"):
        WarpRenderer(canvas, lm)                                    # 513x771 image, 512x512 landmarks


def test_grayscale_and_rgba_references(photos):
    img, lm = photos["grid_still_lbax4n"]
    q = open_jaw(lm.points[0], lm.image_size, 0.25)
    rgb_out = WarpRenderer(img, lm).render(q)
    rgba = np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])
    assert np.array_equal(WarpRenderer(rgba, lm).render(q), rgb_out)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    for g in (gray, gray[..., None]):
        out = WarpRenderer(g, lm).render(q)
        assert out.shape == img.shape
        # a grey photo stays grey: cavity and teeth colours follow the photo's (zero) saturation
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        assert np.abs(out[..., 0].astype(int) - gray.astype(int)).max() > 50


def test_sequence_present_flags_progress_and_interrupt(photos):
    img, lm = photos["astronaut"]
    q = open_jaw(lm.points[0], lm.image_size, 0.25)
    seq = lm.with_points(np.stack([q, q, q]), fps=25.0, present=[True, False, True])
    calls = []
    frames = render_sequence(img, lm, seq, progress=lambda i, n: calls.append((i, n)))
    assert frames.shape == (3, 512, 512, 3)
    assert np.array_equal(frames[1], img)                       # no face in frame 1: reference as is
    assert not np.array_equal(frames[0], img) and np.array_equal(frames[0], frames[2])
    assert calls == [(1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def stop_after_one(i, n):
        if i >= 1:
            raise Stop

    with pytest.raises(Stop):
        render_sequence(img, lm, seq, progress=stop_after_one)


def test_bad_inputs_raise_clear_errors(photos):
    img, lm = photos["astronaut"]
    with pytest.raises(ValueError, match="present=False"):
        WarpRenderer(img, lm.with_points(lm.points, present=[False]))
    with pytest.raises(ValueError, match="points must be"):
        WarpRenderer(img, lm).render(lm.points[0, :100])
    with pytest.raises(ValueError, match="mouth_fill"):
        WarpRenderer(img, lm, mouth_fill="lipstick")
    wide = FaceLandmarks.from_points(lm.points, (1024, 512))
    with pytest.raises(ValueError, match="driving landmarks"):
        render_sequence(img, lm, wide)


# -------------------------------------------------------------------------------------------------- draw

def _segments_mask(lm_px, shape, closed_lists, points):
    """1-px mask of the polylines through the given landmark index lists, plus the given single points."""
    m = np.zeros(shape, np.uint8)
    for idx in closed_lists:
        cv2.polylines(m, [np.rint(lm_px[idx] * 16).astype(np.int32)], True, 255, 1, cv2.LINE_8, 4)
    for i in points:
        cv2.circle(m, tuple(np.rint(lm_px[i] * 16).astype(int)), 0, 255, 1, cv2.LINE_8, 4)
    return m


@pytest.mark.parametrize("name", ["astronaut", "grid_still_lbax4n"])
def test_controlnet_drawing_is_exactly_the_contours(photos, name):
    img, lm = photos[name]
    out = draw_landmarks(lm)
    assert out.shape == (1,) + img.shape and out.dtype == np.uint8
    d = out[0]
    lit = d.max(-1) > 0
    px = lm.pixels(0)
    regions = [L.FACE_OVAL, L.LIPS_OUTER, L.LIPS_INNER, L.RIGHT_EYE, L.LEFT_EYE, L.RIGHT_EYEBROW, L.LEFT_EYEBROW]
    seg = _segments_mask(px, lit.shape, regions, [468, 473])
    dist = cv2.distanceTransform((seg == 0).astype(np.uint8), cv2.DIST_L2, 5)
    th = max(1, round(2 * min(img.shape[:2]) / 512))
    assert dist[lit].max() <= th + 2.0                           # nothing drawn away from the contours
    assert 0.005 < lit.mean() < 0.15                              # mostly black
    for idx in sum(regions, []):                                  # every contour landmark is drawn
        x, y = np.rint(px[idx]).astype(int)
        assert lit[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any(), idx
    x, y = np.rint(px[L.NOSE_TIP]).astype(int)
    assert not lit[y - 2:y + 3, x - 2:x + 3].any()                # nose tip: no tesselation in this style
    # region colours (RGB): the subject's left eye teal-green, right eye yellow-green, lips/oval green
    for idx, region in ((L.LEFT_EYE_OUTER, "left_eye"), (L.RIGHT_EYE_OUTER, "right_eye"), (L.CHIN, "face_oval")):
        x, y = np.rint(px[idx]).astype(int)
        patch = d[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(int)
        best = patch[np.argmax(patch.sum(1))]
        assert np.abs(best - CONTROLNET_COLORS[region]).max() < 40, (region, best)


def test_mesh_style_overlay_sizes_and_absent_frames(photos):
    img, lm = photos["astronaut"]
    mesh = draw_landmarks(lm, img, style="mesh")[0]
    px = lm.pixels(0)
    x, y = np.rint(px[L.NOSE_TIP]).astype(int)
    assert np.abs(mesh[y - 2:y + 3, x - 2:x + 3].astype(int) - img[y - 2:y + 3, x - 2:x + 3]).max() > 30
    far = (slice(400, 512), slice(0, 100))                       # far from the face: frame untouched
    assert np.array_equal(mesh[far], img[far])

    # 2 landmark frames (second absent) over one frame at twice the size: broadcast, drawn at 1024x1024
    seq = lm.with_points(np.stack([lm.points[0], lm.points[0]]), present=[True, False])
    big = cv2.resize(img, (1024, 1024))
    both = draw_landmarks(seq, big)
    assert both.shape == (2, 1024, 1024, 3)
    assert np.array_equal(both[1], big)                          # absent: untouched
    changed = np.argwhere((both[0] != big).any(-1))
    assert changed.min(0)[1] > px[:, 0].min() * 2 - 10 and changed.max(0)[1] < px[:, 0].max() * 2 + 10
    on_black = draw_landmarks(seq)
    assert on_black[1].max() == 0 and on_black[0].max() > 0
    with pytest.raises(ValueError, match="style"):
        draw_landmarks(lm, style="openpose")
    with pytest.raises(ValueError, match="frames"):
        draw_landmarks(seq, np.stack([img] * 3))
