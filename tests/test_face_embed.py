"""Face Embed: real dlib ResNet embeddings of real faces (GRID, CREMA-D, retalking), real MediaPipe landmarks,
the node inside the real ComfyUI (direct execute and an API-format graph)."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import ptalk_harness as harness
from portraittalk.ptalk_models.face import NoFaceError, detect_landmarks
from portraittalk.ptalk_models.identity import (ARCFACE_TEMPLATE, BACKGROUND_FILL, SAME_PERSON_THRESHOLD, FaceEmbedding,
                                   InsightFaceUnavailable, arcface_align, arcface_points, embed_faces, face_distance,
                                   face_mask, identity_similarity)
from portraittalk.ptalk_models.media import read_image, read_video

GRID = ["bbaf2n", "brbk7n", "id2_vcd_swwp2s", "lbax4n", "lwbsza", "sbwe5n"]  # six different speakers
PER_CLIP = 4


def _sample(frames: np.ndarray, k: int = PER_CLIP) -> np.ndarray:
    return frames[np.linspace(0, len(frames) - 1, k).astype(int)]


@pytest.fixture(scope="module")
def grid(shared_data):
    """{speaker: (4 frames spread over the clip, their landmarks)}."""
    out = {}
    for name in GRID:
        frames = _sample(read_video(shared_data / "video" / f"{name}.mpg")[0])
        out[name] = (frames, detect_landmarks(frames))
    return out


@pytest.fixture(scope="module")
def grid_emb(grid):
    return {name: embed_faces(frames, landmarks=lm) for name, (frames, lm) in grid.items()}


@pytest.fixture(scope="module")
def retalking(shared_data):
    """Frame 10 of video/retalking_face_5.mp4 (uint8 RGB 524x524)."""
    return read_video(shared_data / "video" / "retalking_face_5.mp4")[0][10]


def _within_cross(emb: dict) -> tuple[np.ndarray, np.ndarray]:
    within = np.concatenate([[face_distance(e.embeddings[i], e.embeddings[j]) for i, j in
                              itertools.combinations(range(len(e)), 2)] for e in emb.values()])
    cross = np.concatenate([np.linalg.norm(a.embeddings[:, None] - b.embeddings[None], axis=-1).ravel()
                            for a, b in itertools.combinations(emb.values(), 2)])
    return within, cross


# ------------------------------------------------------------------------------------------------ dlib engine
def test_threshold_separates_grid_speakers(grid_emb):
    """Same speaker across one clip's frames is far closer than any two of the 6 GRID speakers; 0.6 separates."""
    within, cross = _within_cross(grid_emb)
    assert len(within) == 6 * 6 and len(cross) == 15 * PER_CLIP ** 2
    assert within.max() < SAME_PERSON_THRESHOLD["dlib"] == 0.6 < cross.min()
    assert within.mean() < 0.3 * cross.mean()
    # the similarity mapping: > 0.5 same person, < 0.5 different, 1 for identical
    a, b = grid_emb["lbax4n"], grid_emb["sbwe5n"]
    assert (identity_similarity(a.embeddings, a.embeddings[0])[1:] > 0.5).all()
    assert (identity_similarity(a.embeddings, b.mean) < 0.5).all()
    assert identity_similarity(a.embeddings[0], a.embeddings[0]) == pytest.approx(1.0)
    d = face_distance(a.embeddings, b.mean)
    assert np.allclose(identity_similarity(a.embeddings, b.mean), np.clip(1 - d / 1.2, 0, 1), atol=1e-6)


def test_embedding_layout_and_determinism(grid, grid_emb):
    frames, lm = grid["lbax4n"]
    e = grid_emb["lbax4n"]
    assert isinstance(e, FaceEmbedding) and e.backend == "dlib" and e.dim == 128 and len(e) == PER_CLIP
    assert e.embeddings.shape == (PER_CLIP, 128) and e.embeddings.dtype == np.float32
    assert np.isfinite(e.embeddings).all()
    assert e.crops.shape == (PER_CLIP, 150, 150, 3) and e.crops.dtype == np.uint8 and e.present.all()
    assert np.allclose(e.mean, e.embeddings.mean(0), atol=1e-6) and e.threshold == 0.6
    again = embed_faces(frames, landmarks=lm)
    assert np.array_equal(again.embeddings, e.embeddings) and np.array_equal(again.crops, e.crops)
    detected = embed_faces(frames)  # landmarks detected inside: the same MediaPipe landmarks
    assert np.abs(detected.embeddings - e.embeddings).max() < 1e-4 and detected.meta["landmarks"] != e.meta["landmarks"]


def test_background_is_removed_before_embedding(grid, astronaut):
    """Outside the dilated face oval the crop is the network's neutral colour, so a different background
    (the astronaut photo pasted around the GRID face) leaves the embedding unchanged; without removal it moves."""
    frames, lm = grid["brbk7n"]
    frame, one = frames[1], lm.frame(1)
    keep = face_mask((frame.shape[1], frame.shape[0]), one.pixels(0), dilation=0.2)[..., None] > 0
    swapped = np.where(keep, frame, cv2.resize(astronaut, (frame.shape[1], frame.shape[0])))
    on = embed_faces(np.stack([frame, swapped]), landmarks=one)
    off = embed_faces(np.stack([frame, swapped]), landmarks=one, remove_background=False)
    assert face_distance(on.embeddings[0], on.embeddings[1]) < 1e-5
    assert face_distance(off.embeddings[0], off.embeddings[1]) > 0.02
    fill = np.rint(BACKGROUND_FILL["dlib"]).astype(np.uint8)
    corners = on.crops[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # chip corners are outside the face oval
    assert (np.abs(corners.astype(int) - fill).max(-1) <= 1).all()
    assert not np.array_equal(off.crops[0], off.crops[1])


def test_several_references_mean(shared_data, grid_emb):
    """One actor in six CREMA-D emotion clips (FLV): the mean is close to every reference, far from GRID."""
    refs = [read_video(p)[0][20] for p in sorted((shared_data / "video" / "crema-d").glob("1001_DFA_*_XX.flv"))]
    assert len(refs) == 6
    e = embed_faces(np.stack(refs))
    assert e.present.all() and np.allclose(e.mean, e.embeddings.mean(0), atol=1e-6)
    to_mean = e.distance(e)
    assert to_mean.max() < 0.45
    others = np.concatenate([g.embeddings for g in grid_emb.values()])
    assert face_distance(others, e.mean).min() > 0.6
    # each reference is closer to the mean than to the farthest other reference (the mean is central)
    pair = np.linalg.norm(e.embeddings[:, None] - e.embeddings[None], axis=-1)
    assert (to_mean < pair.max(1)).all()


def test_references_of_different_sizes(astronaut, retalking, grid):
    """A list of references of different sizes (512x512 photo, 524x524 video frame, 360x288 GRID frame)."""
    e = embed_faces([astronaut, retalking, grid["lbax4n"][0][0]])
    assert e.present.all() and e.meta["image_sizes"] == [(512, 512), (524, 524), (360, 288)]
    d = np.linalg.norm(e.embeddings[:, None] - e.embeddings[None], axis=-1)
    assert d[np.triu_indices(3, 1)].min() > 0.6  # three different people


def test_frame_without_face(grid):
    frames, _ = grid["sbwe5n"]
    blank = np.full_like(frames[0], 40)
    e = embed_faces(np.stack([frames[0], blank, frames[2]]))
    assert e.present.tolist() == [True, False, True]
    assert np.isnan(e.embeddings[1]).all() and not e.crops[1].any()
    assert np.allclose(e.mean, e.embeddings[[0, 2]].mean(0), atol=1e-6)
    assert np.isnan(identity_similarity(e.embeddings, e.mean)[1])
    with pytest.raises(NoFaceError, match="no face found in any of the 2 image"):
        embed_faces(np.stack([blank, np.zeros_like(blank)]))


def test_bad_inputs(grid):
    frames, lm = grid["bbaf2n"]
    with pytest.raises(ValueError, match="landmarks: 4 frame"):
        embed_faces(frames[:3], landmarks=lm)
    with pytest.raises(ValueError, match="landmarks: frame 0 refers to a 360x288 image"):
        embed_faces(cv2.resize(frames[0], (180, 144)), landmarks=lm.frame(0))
    with pytest.raises(ValueError, match="backend must be one of"):
        embed_faces(frames[0], landmarks=lm.frame(0), backend="vgg")
    with pytest.raises(ValueError, match="images: empty batch"):
        embed_faces(frames[:0])
    with pytest.raises(ValueError, match="cannot tell the backend"):
        face_distance(np.zeros(64), np.zeros(64))


# ------------------------------------------------------------------------------------------------ insightface
def test_insightface_missing_is_a_clear_error(grid, tmp_path):
    frames, lm = grid["bbaf2n"]
    with pytest.raises(InsightFaceUnavailable, match=r"models/insightface/models/antelopev2/.*pip install insightface"):
        embed_faces(frames, landmarks=lm, backend="insightface", insightface_root=tmp_path)
    # model file present but the package absent (here): the message says what to pip install
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "w600k_r50.onnx").write_bytes(b"\0")
    try:
        import insightface  # noqa: F401
        pytest.skip("insightface is installed here")
    except ImportError:
        pass
    with pytest.raises(InsightFaceUnavailable, match="pip install insightface onnxruntime"):
        embed_faces(frames, landmarks=lm, backend="insightface", insightface_root=tmp_path,
                    insightface_model="buffalo_l")


def test_arcface_alignment_on_real_faces(astronaut, retalking):
    """The 112x112 ArcFace crop: least-squares similarity onto the template, eyes/nose/mouth where the
    template puts them when MediaPipe re-detects them in the crop (so nothing is mirrored or swapped)."""
    for img in (astronaut, retalking):
        p = detect_landmarks(img).pixels(0).astype(np.float64)
        M = arcface_align(img, p)
        src = arcface_points(p).astype(np.float64)
        A = np.concatenate([np.c_[src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)],
                            np.c_[src[:, 1], src[:, 0], np.zeros(5), np.ones(5)]])
        a, b, tx, ty = np.linalg.lstsq(A, ARCFACE_TEMPLATE.T.reshape(-1).astype(np.float64), rcond=None)[0]
        assert np.allclose(M, [[a, -b, tx], [b, a, ty]], atol=1e-3)
        crop = cv2.warpAffine(img, M, (112, 112))
        canvas = np.full((700, 700, 3), 128, np.uint8)
        canvas[126:574, 126:574] = cv2.resize(crop, (448, 448), interpolation=cv2.INTER_CUBIC)
        again = (arcface_points(detect_landmarks(canvas).pixels(0)) - 126) / 4
        err = np.linalg.norm(again - ARCFACE_TEMPLATE, axis=1)
        assert err[:2].max() < 4 and err.max() < 9  # eyes within 4 px (of 112); a broad smile moves the mouth


# ------------------------------------------------------------------------------------------------ node
def _node(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS["PTalkFaceEmbed"]


def test_node_execute_with_and_without_landmarks(comfy, grid, grid_emb):
    frames, _ = grid["lwbsza"]
    image = torch.from_numpy(frames).float() / 255
    emb, crops = _node(comfy).execute(image, "dlib", "antelopev2", True).args
    assert type(emb).__name__ == "FaceEmbedding" and emb.present.all()  # the pack's own module copy
    assert tuple(crops.shape) == (PER_CLIP, 150, 150, 3) and crops.dtype == torch.float32
    assert np.abs(emb.embeddings - grid_emb["lwbsza"].embeddings).max() < 1e-4  # same engine result
    lm_node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkFaceLandmarks"]
    (lms,) = lm_node.execute(image, "auto", "largest", 0, "error", 25.0, 0.5).args
    with_lm, _ = _node(comfy).execute(image, "dlib", "antelopev2", True, landmarks=lms).args
    assert np.abs(with_lm.embeddings - emb.embeddings).max() < 1e-4


def test_node_errors(comfy, grid):
    frames, lm = grid["lwbsza"]
    image = torch.from_numpy(frames).float() / 255
    with pytest.raises(ValueError, match=r"Face Embed.*'backend'.*models/insightface/models/antelopev2"):
        _node(comfy).execute(image, "insightface", "antelopev2", True)
    with pytest.raises(ValueError, match=r"Face Embed.*'image'.*no face found in any"):
        _node(comfy).execute(torch.zeros(2, 64, 64, 3), "dlib", "antelopev2", True)
    with pytest.raises(ValueError, match=r"Face Embed.*'landmarks'.*4 frame"):
        _node(comfy).execute(image[:2], "dlib", "antelopev2", True, landmarks=lm)
    fp = comfy.folder_paths  # models/insightface is registered (ComfyUI convention of the FaceID/InstantID packs)
    assert str(Path(fp.models_dir) / "insightface") in fp.get_folder_paths("insightface")


def test_node_in_a_graph(comfy, shared_data):
    """LoadImage -> Face Embed -> PreviewImage, validated and executed by ComfyUI."""
    name = harness.stage_input_file(shared_data / "photos" / "grid_still_lbax4n.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PTalkFaceEmbed", "inputs": {"image": ["1", 0], "backend": "dlib",
                                                         "insightface_model": "antelopev2", "remove_background": True}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    res = harness.run_prompt(prompt)
    files = harness.output_files(res, types=("temp",))
    assert len(files) == 1
    crop = read_image(files[0])
    assert crop.shape == (150, 150, 3)
    # the preview shows a face: MediaPipe finds one in it, eyes above the mouth
    px = detect_landmarks(cv2.resize(crop, (300, 300))).pixels(0)
    assert px[159, 1] < px[13, 1]
