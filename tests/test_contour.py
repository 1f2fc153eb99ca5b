"""Contour Guide (head-contour condition, PortraitTalk §III-B) on real photos and real video frames.

Every check runs the real engine (OpenCV GrabCut/Canny) on landmarks from the real MediaPipe Face Landmarker,
and the node inside the real ComfyUI (direct call and an API-format graph LoadImage → Contour Guide →
PreviewImage).
"""
import cv2
import numpy as np
import pytest
import torch

import ptalk_harness as harness
from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.contour import ContourInputError, default_thickness, head_contour
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks
from portraittalk.ptalk_models.media import read_video


@pytest.fixture(scope="module")
def grid_video(shared_data):
    """video/lbax4n.mpg: (uint8 RGB frames [75, 288, 360, 3], fps)."""
    return read_video(shared_data / "video" / "lbax4n.mpg")


@pytest.fixture(scope="module")
def samples(shared_data, astronaut, grid_still, grid_video):
    """{name: uint8 RGB image}: the two photos and frames of three real talking-face videos (GRID mpg,
    video-retalking mp4, CREMA-D flv)."""
    retalk, _ = read_video(shared_data / "video" / "retalking_face_5.mp4")
    crema, _ = read_video(shared_data / "video" / "crema-d" / "1001_DFA_ANG_XX.flv")
    return {"astronaut": astronaut, "grid_still": grid_still,
            "grid_lbax4n_40": grid_video[0][40], "retalking_0": retalk[0], "retalking_60": retalk[60],
            "cremad_ang_30": crema[30]}


@pytest.fixture(scope="module")
def grid_frames(grid_video):
    """The first 6 frames of lbax4n.mpg and their MediaPipe landmarks."""
    frames, fps = grid_video
    return frames[:6], detect_landmarks(frames[:6], fps=fps)


def _disk(r):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _iou_dilated(a, b, r=5):
    a, b = cv2.dilate(a, _disk(r)) > 0, cv2.dilate(b, _disk(r)) > 0
    return (a & b).sum() / max((a | b).sum(), 1)


def _centroid(e):
    y, x = np.nonzero(e)
    return np.array([x.mean(), y.mean()])


def _poly_mask(shape, pts):
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m > 0


# ------------------------------------------------------------------------------------------- contour shape

@pytest.mark.parametrize("name", ["astronaut", "grid_still", "grid_lbax4n_40", "retalking_0", "cremad_ang_30"])
def test_one_connected_outer_contour_around_the_head(samples, name):
    img = samples[name]
    H, W = img.shape[:2]
    lm = detect_landmarks(img)
    px = lm.pixels()[0]
    edges, mask = head_contour(img, lm)
    assert edges.shape == mask.shape == (1, H, W) and edges.dtype == mask.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255} and set(np.unique(mask)) == {0, 255}
    e, m = edges[0], mask[0] > 0

    # one connected curve, long enough to go round the head (> 2 face heights of pixels along it)
    assert cv2.connectedComponents(e, connectivity=8)[0] - 1 == 1
    face_h = np.linalg.norm(px[L.CHIN] - px[L.FOREHEAD])
    thick = default_thickness(W, H)
    assert (e > 0).sum() / thick > 2.0 * face_h

    # it encloses the face: nose tip, eyes, mouth corners inside the filled outer contour
    cnts, _ = cv2.findContours(e, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outer = max(cnts, key=cv2.contourArea)
    for k in (L.NOSE_TIP, L.RIGHT_EYE_OUTER, L.LEFT_EYE_OUTER, L.MOUTH_CORNER_LEFT, L.MOUTH_CORNER_RIGHT):
        assert cv2.pointPolygonTest(outer, tuple(map(float, px[k])), True) > thick, k
    # the mask is the region the outline bounds: the whole face oval (jaw line included), the nose tip, hair
    # above the forehead landmark, and no neck below the chin
    oval = _poly_mask(img.shape, px[L.FACE_OVAL])
    assert m[oval].mean() > 0.97
    assert m[int(px[L.NOSE_TIP, 1]), int(px[L.NOSE_TIP, 0])]
    ys = np.nonzero(m)[0]
    assert ys.min() < px[L.FOREHEAD, 1] - 0.1 * face_h or ys.min() == 0
    assert ys.max() < px[L.CHIN, 1] + 0.05 * face_h
    # every edge pixel lies on the mask's boundary
    boundary = cv2.morphologyEx(mask[0], cv2.MORPH_GRADIENT, _disk(1)) > 0
    assert (cv2.dilate(boundary.astype(np.uint8), _disk(thick)) > 0)[e > 0].all()

    # no facial detail: no edge inside the face oval (shrunk 10 % to clear the line), where plain Canny on the
    # same image finds eyes, brows, nose and mouth
    c = px[L.FACE_OVAL].mean(axis=0)
    inner = _poly_mask(img.shape, c + 0.9 * (px[L.FACE_OVAL] - c))
    assert (e[inner] > 0).sum() == 0
    plain = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 50, 150)
    assert (plain[inner] > 0).sum() > 0.02 * inner.sum()


def test_without_face_oval_the_outline_is_the_image_silhouette(grid_still, grid_still_lm):
    img, lm = grid_still, grid_still_lm
    px = lm.pixels()[0]
    _, m_oval = head_contour(img, lm)
    e_img, m_img = head_contour(img, lm, use_face_oval=False)
    assert cv2.connectedComponents(e_img[0])[0] - 1 == 1
    face_h = np.linalg.norm(px[L.CHIN] - px[L.FOREHEAD])
    # the silhouette continues into the neck below the jaw line, down to just past the chin
    below_jaw = ~_poly_mask(img.shape, px[L.FACE_OVAL])
    below_jaw[: int(px[L.CHIN, 1] - 0.3 * face_h)] = False
    assert (m_img[0] > 0)[below_jaw].sum() > 5 * (m_oval[0] > 0)[below_jaw].sum() + 100
    assert np.nonzero(m_img[0])[0].max() < px[L.CHIN, 1] + 0.15 * face_h


def _roughness(mask):
    """Perimeter of the mask's outer contour over the perimeter of its convex hull (1 = convex)."""
    c = max(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    return cv2.arcLength(c, True) / cv2.arcLength(cv2.convexHull(c), True)


@pytest.mark.parametrize("name", ["astronaut", "grid_still"])
def test_detail_smoothing_and_thickness_parameters(samples, name):
    img = samples[name]
    lm = detect_landmarks(img)
    thin, _ = head_contour(img, lm, thickness=1)
    thick, _ = head_contour(img, lm, thickness=7)
    assert 4 * (thin > 0).sum() < (thick > 0).sum()
    # more smoothing: a rounder outline of about the same head
    rough = {sm: head_contour(img, lm, detail=256, smoothing=sm)[1][0] for sm in (0.0, 0.2)}
    assert _roughness(rough[0.2]) < _roughness(rough[0.0]) - 0.005
    # any detail level outlines the same head
    coarse, fine = (head_contour(img, lm, detail=d)[1][0] > 0 for d in (48, 256))
    assert (coarse & fine).sum() / (coarse | fine).sum() > 0.85


def test_deterministic(samples):
    img = samples["retalking_60"]
    lm = detect_landmarks(img)
    a, b = head_contour(img, lm), head_contour(img, lm)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ---------------------------------------------------------------------------------------------- robustness

@pytest.mark.parametrize("name", ["astronaut", "grid_still", "grid_lbax4n_40", "retalking_0", "retalking_60",
                                  "cremad_ang_30"])
def test_nearly_unchanged_by_a_small_brightness_change(samples, name):
    img = samples[name]
    e0 = head_contour(img)[0][0]
    for changed in (np.clip(img.astype(np.int16) + 10, 0, 255).astype(np.uint8),
                    np.clip(np.rint(img * 1.1), 0, 255).astype(np.uint8)):
        e1 = head_contour(changed)[0][0]
        assert _iou_dilated(e0, e1) > 0.8
        assert np.linalg.norm(_centroid(e0) - _centroid(e1)) < 4.0


@pytest.mark.parametrize("name", ["astronaut", "grid_still", "grid_lbax4n_40", "cremad_ang_30", "retalking_0"])
def test_tracks_a_10_pixel_shift(samples, name):
    img = samples[name]
    a, b = img[:, 10:], img[:, :-10]  # b shows a's content 10 px further right (same real photo, no padding)
    ea, eb = head_contour(a)[0][0], head_contour(b)[0][0]
    shifted = np.zeros_like(ea)
    shifted[:, 10:] = ea[:, :-10]
    assert _iou_dilated(shifted, eb) > 0.8
    dx, dy = _centroid(eb) - _centroid(ea)
    assert abs(dx - 10) <= 2 and abs(dy) <= 2
    # and a 10-pixel vertical shift
    a, b = img[10:], img[:-10]
    ea, eb = head_contour(a)[0][0], head_contour(b)[0][0]
    dx, dy = _centroid(eb) - _centroid(ea)
    assert abs(dx) <= 2 and abs(dy - 10) <= 2


def test_follows_head_roll(astronaut, astronaut_lm):
    img, lm = astronaut, astronaut_lm
    c = tuple(map(float, lm.pixels()[0, L.NOSE_TIP]))
    R = cv2.getRotationMatrix2D(c, 20, 1.0)
    rot = cv2.warpAffine(img, R, img.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    m0 = head_contour(img, lm)[1][0]
    m_rot = head_contour(rot)[1][0]
    expected = cv2.warpAffine(m0, R, img.shape[1::-1], flags=cv2.INTER_NEAREST) > 0
    got = m_rot > 0
    assert (expected & got).sum() / (expected | got).sum() > 0.85


# ------------------------------------------------------------------------------------------ previous frame

def test_previous_mode_uses_frame_t_minus_1_and_the_reference(grid_frames, samples):
    frames, lm = grid_frames
    ref = samples["grid_still"]  # the same speaker's still, 360x288 like the frames
    assert ref.shape == frames.shape[1:]
    same_e, same_m = head_contour(frames, lm)
    prev_e, prev_m = head_contour(frames, lm, source="previous", reference=ref)
    ref_e, ref_m = head_contour(ref)
    assert np.array_equal(prev_e[0], ref_e[0]) and np.array_equal(prev_m[0], ref_m[0])
    for t in range(1, len(frames)):
        assert np.array_equal(prev_e[t], same_e[t - 1]) and np.array_equal(prev_m[t], same_m[t - 1])
        assert np.array_equal(prev_e[t], head_contour(frames[t - 1], lm.frame(t - 1))[0][0])
    # without a reference, frame 0 guides itself
    no_ref, _ = head_contour(frames, lm, source="previous")
    assert np.array_equal(no_ref[0], same_e[0]) and np.array_equal(no_ref[1:], same_e[:-1])
    # a reference of another size but the same aspect ratio is resized to the frames
    big = cv2.resize(ref, (720, 576), interpolation=cv2.INTER_CUBIC)
    big_e, _ = head_contour(frames[:2], lm.frame(0), source="previous", reference=big)
    assert big_e.shape == (2, 288, 360)
    assert _iou_dilated(big_e[0], ref_e[0]) > 0.8


def test_previous_mode_with_reference_landmarks(grid_frames, grid_still, grid_still_lm):
    frames, lm = grid_frames
    ref, ref_lm = grid_still, grid_still_lm
    a, _ = head_contour(frames[:3], lm.with_points(lm.points[:3], present=lm.present[:3]), source="previous",
                        reference=ref, reference_landmarks=ref_lm)
    assert np.array_equal(a[0], head_contour(ref, ref_lm)[0][0])


# -------------------------------------------------------------------------------------------- bad inputs

def test_all_black_frames_give_an_empty_guide_or_a_clear_error():
    black = np.zeros((3, 96, 128, 3), np.uint8)
    e, m = head_contour(black)
    assert e.shape == m.shape == (3, 96, 128) and e.max() == 0 and m.max() == 0
    with pytest.raises(ContourInputError, match=r"no face in frame 0 of 3 .*on_missing") as err:
        head_contour(black, on_missing="error")
    assert err.value.argument == "images"


def test_a_faceless_frame_inside_a_video_is_empty(grid_frames):
    frames, _ = grid_frames
    batch = np.concatenate([frames[:1], np.zeros_like(frames[:1]), frames[1:2]])
    e, m = head_contour(batch)
    assert e[0].max() == 255 and e[2].max() == 255
    assert e[1].max() == 0 and m[1].max() == 0
    with pytest.raises(ContourInputError, match="frame 1 of 3"):
        head_contour(batch, on_missing="error")
    # with landmarks flagged absent, the same
    lm = detect_landmarks(batch, on_missing="keep")
    assert lm.present.tolist() == [True, False, True]
    e2, _ = head_contour(batch, lm)
    assert np.array_equal(e, e2)
    # previous mode: the faceless frame 1 empties guide 2; with on_missing="error" the message names it
    ep, _ = head_contour(batch, lm, source="previous")
    assert ep[2].max() == 0 and ep[1].max() == 255
    with pytest.raises(ContourInputError, match="frame 1 of 3"):
        head_contour(batch, lm, source="previous", reference=frames[0], on_missing="error")
    with pytest.raises(ContourInputError, match="the reference image") as err:
        head_contour(batch, lm, source="previous", reference=np.zeros_like(frames[0]), on_missing="error")
    assert err.value.argument == "reference"


def test_one_frame_gray_rgba_float_and_odd_sizes(astronaut, astronaut_lm):
    img = astronaut
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    lm_gray = detect_landmarks(gray)
    e_gray, _ = head_contour(gray, lm_gray)                       # [H, W]
    assert e_gray.shape == (1, 512, 512) and cv2.connectedComponents(e_gray[0])[0] - 1 == 1
    assert np.array_equal(head_contour(gray[..., None], lm_gray)[0], e_gray)         # [H, W, 1]
    assert np.array_equal(head_contour(np.repeat(gray[..., None], 3, -1), lm_gray)[0], e_gray)
    lm = astronaut_lm
    rgba = np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])
    assert np.array_equal(head_contour(rgba, lm)[0], head_contour(img, lm)[0])
    assert np.array_equal(head_contour(img[None].astype(np.float32) / 255.0, lm)[0], head_contour(img, lm)[0])
    odd = img[3:386, 5:516 - 10]                                     # 383 x 501
    e, m = head_contour(odd)
    assert e.shape == (1, 383, 501) and cv2.connectedComponents(e[0])[0] - 1 == 1 and m[0].max() == 255


def test_bad_inputs_are_clear_errors(samples, grid_frames):
    img = samples["grid_still"]
    frames, lm = grid_frames
    cases = [
        (dict(images=np.zeros((64, 64, 2), np.uint8)), "images", "channels"),
        (dict(images=np.full((64, 64, 3), np.nan, np.float32)), "images", "NaN"),
        (dict(images=np.zeros((0, 64, 64, 3), np.uint8)), "images", "shape"),
        (dict(images=frames[:4], landmarks=lm), "landmarks", "6 landmark frames for 4"),
        (dict(images=np.zeros((100, 300, 3), np.uint8), landmarks=lm.frame(0)), "landmarks", "aspect ratio"),
        (dict(images=frames, landmarks=np.zeros((6, 478, 3))), "landmarks", "FaceLandmarks"),
        (dict(images=frames, landmarks=lm, source="previous", reference=img[:, :200]), "reference", "aspect"),
        (dict(images=frames, landmarks=lm, source="previous", reference=frames[:2]), "reference", "one image"),
        (dict(images=img, source="next"), "source", "same"),
        (dict(images=img, on_missing="skip"), "on_missing", "empty"),
        (dict(images=img, detail=8), "detail", "32"),
        (dict(images=img, smoothing=0.9), "smoothing", "0.3"),
        (dict(images=img, thickness=-1), "thickness", ">= 0"),
    ]
    for kwargs, inp, text in cases:
        with pytest.raises(ContourInputError, match=text) as err:
            head_contour(**kwargs)
        assert err.value.argument == inp, kwargs.keys()


# ----------------------------------------------------------------------------------------- inside ComfyUI

def _node(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS["PTalkContourGuide"]


def test_node_direct(comfy, grid_frames, grid_still):
    frames, _ = grid_frames
    node = _node(comfy)
    schema = node.GET_SCHEMA()
    assert schema.display_name == "Contour Guide (PortraitTalk)" and all(i.tooltip for i in schema.inputs)
    images = torch.from_numpy(frames[:3]).float() / 255.0
    out = node.execute(images=images, detail=128, smoothing=0.06, thickness=0, use_face_oval=True,
                       source="this frame", on_missing="empty")
    contour, mask = out.args[0], out.args[1]
    e, m = head_contour(frames[:3])
    assert contour.shape == (3, 288, 360, 3) and contour.dtype == torch.float32
    assert torch.equal(contour[..., 0], contour[..., 2])
    assert np.array_equal((contour[..., 0].numpy() * 255).round().astype(np.uint8), e)
    assert mask.shape == (3, 288, 360) and np.array_equal((mask.numpy() * 255).round().astype(np.uint8), m)

    # landmarks from the Face Landmarks node, previous-frame mode with the reference still
    lm_node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkFaceLandmarks"].execute(
        image=images, model="auto", face="largest", face_index=0, on_missing="error", fps=25.0,
        min_confidence=0.5)[0]
    ref = torch.from_numpy(grid_still)[None].float() / 255.0
    out = node.execute(images=images, detail=128, smoothing=0.06, thickness=2, use_face_oval=True,
                       source="previous frame", on_missing="empty", landmarks=lm_node, reference=ref)
    ep, _ = head_contour(frames[:3], lm_node, thickness=2, source="previous", reference=grid_still)
    assert np.array_equal((out.args[0][..., 1].numpy() * 255).round().astype(np.uint8), ep)


def test_node_errors_name_the_input(comfy, grid_frames):
    frames, lm = grid_frames
    node = _node(comfy)
    black = torch.zeros((2, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Contour Guide\] input 'images': no face in frame 0"):
        node.execute(images=black, detail=128, smoothing=0.06, thickness=0, use_face_oval=True,
                     source="this frame", on_missing="error")
    out = node.execute(images=black, detail=128, smoothing=0.06, thickness=0, use_face_oval=True,
                       source="this frame", on_missing="empty")
    assert out.args[0].max() == 0 and out.args[1].max() == 0
    with pytest.raises(ValueError, match=r"input 'landmarks': .*landmark frames"):
        node.execute(images=torch.from_numpy(frames[:2]).float() / 255, detail=128, smoothing=0.06, thickness=0,
                     use_face_oval=True, source="this frame", on_missing="empty", landmarks=lm)


def test_node_in_an_api_graph(comfy, shared_data, astronaut):
    name = harness.stage_input_file(shared_data / "photos" / "astronaut.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PTalkContourGuide",
              "inputs": {"images": ["1", 0], "detail": 128, "smoothing": 0.06, "thickness": 0,
                         "use_face_oval": True, "source": "this frame", "on_missing": "empty"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 1]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    res = harness.run_prompt(prompt)
    assert res["status"]["status_str"] == "success"
    files = {nid: harness.output_files({"outputs": {nid: res["outputs"][nid]}}, types=("temp",))
             for nid in ("3", "5")}
    assert len(files["3"]) == 1 and len(files["5"]) == 1
    edges = cv2.imread(str(files["3"][0]))
    mask = cv2.imread(str(files["5"][0]), cv2.IMREAD_GRAYSCALE)
    e, m = head_contour(astronaut)
    assert edges.shape == (512, 512, 3) and np.array_equal(edges[..., 0], e[0]) and np.array_equal(edges[..., 2], e[0])
    assert np.array_equal(mask, m[0])


def test_landmarks_of_another_resolution_same_aspect(astronaut, astronaut_lm):
    img, lm = astronaut, astronaut_lm
    small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    # normalised landmarks of the 512 image drive the 256 image
    e, _ = head_contour(small, FaceLandmarks.from_points(lm.points, (512, 512)))
    e_ref, _ = head_contour(img, lm)
    e_up = cv2.resize(e[0], (512, 512), interpolation=cv2.INTER_NEAREST)
    assert _iou_dilated(e_up, e_ref[0], r=6) > 0.7
