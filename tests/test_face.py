"""Face Landmarks engine on real photos with the real MediaPipe Face Landmarker (embedded model)."""
import cv2
import numpy as np
import pytest

from portraittalk.ptalk_models.face import NoFaceError, detect_landmarks
from portraittalk.ptalk_models.landmarks import NOSE_TIP, inner_lip_aperture, inter_ocular_px


def test_astronaut_landmarks_are_a_face(astronaut):
    lm = detect_landmarks(astronaut)
    assert lm.points.shape == (1, 478, 3) and lm.image_size == (512, 512) and lm.present.all()
    px = lm.pixels(0)
    # eyes above the nose above the mouth above the chin, all inside the image
    assert px[159, 1] < px[NOSE_TIP, 1] < px[13, 1] < px[152, 1]
    assert (px >= 0).all() and (px[:, 0] < 512).all() and (px[:, 1] < 512).all()
    assert 40 < inter_ocular_px(px) < 120  # the face is ~1/4 of the 512 px photo


def test_grayscale_and_rgba_match_rgb(astronaut, astronaut_lm):
    ref = astronaut_lm.pixels(0)
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 128, np.uint8)])
    for img in (gray, gray[..., None], rgba, astronaut.astype(np.float32) / 255.0):
        px = detect_landmarks(img).pixels(0)
        assert np.abs(px - ref).mean() < 3.0


def test_odd_size_and_aspect(astronaut, astronaut_lm):
    """513x771 (odd, portrait aspect): the face is found where it was pasted, in pixels."""
    canvas = np.full((771, 513, 3), 90, np.uint8)
    canvas[100:612, 0:512] = astronaut
    lm = detect_landmarks(canvas)
    assert lm.image_size == (513, 771)
    ref = astronaut_lm.pixels(0) + np.array([0, 100], np.float32)
    assert np.abs(lm.pixels(0) - ref).mean() < 3.0


def test_no_face_names_the_frame(astronaut):
    blank = np.full_like(astronaut, 30)
    with pytest.raises(NoFaceError, match="frame 1 of 3"):
        detect_landmarks(np.stack([astronaut, blank, astronaut]))
    lm = detect_landmarks(np.stack([astronaut, blank, astronaut]), on_missing="keep")
    assert lm.present.tolist() == [True, False, True]
    assert np.allclose(lm.points[1], lm.points[0])
    with pytest.raises(NoFaceError):
        detect_landmarks(blank, on_missing="keep")


def test_group_photo_selection(astronaut, grid_still):
    """Two real faces side by side: 'largest' and left-to-right indices pick the right person."""
    h = max(astronaut.shape[0], grid_still.shape[0])
    group = np.zeros((h, 512 + 360, 3), np.uint8)
    group[:512, :512] = astronaut
    group[:288, 512:] = grid_still
    faces = {k: detect_landmarks(group, selection=k).pixels(0)[NOSE_TIP, 0] for k in ("largest", 0, 1)}
    assert faces[0] < 512 < faces[1]
    # the GRID face (inter-ocular ~78 px) is larger than the astronaut's (~60 px)
    assert faces["largest"] == faces[1]
    with pytest.raises(ValueError, match="out of range"):
        detect_landmarks(group, selection=2)


def test_aperture_of_slightly_parted_lips(astronaut, grid_still):
    """Both portraits show lips parted by a few pixels (her smile shows teeth; his lips just part):
    the inner-lip aperture is clearly above closed (0) and far below an open mouth (~0.35)."""
    for img in (astronaut, grid_still):
        assert 0.05 < inner_lip_aperture(detect_landmarks(img))[0] < 0.16


def test_node_resolves_models_mediapipe_before_the_embedded_model(comfy, astronaut, tmp_path):
    """Face Landmarks' 'auto' model: models/mediapipe/face_landmarker.task when present (folder_paths)."""
    import shutil

    import torch

    from portraittalk.ptalk_models.face import embedded_model_path

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkFaceLandmarks"]
    image = torch.from_numpy(astronaut)[None].float() / 255
    embedded = node.execute(image, "auto", "largest", 0, "error", 0.0, 0.5)[0]
    assert embedded.meta["model_path"] == embedded_model_path()

    user_dir = tmp_path / "mediapipe"
    user_dir.mkdir()
    shutil.copyfile(embedded_model_path(), user_dir / "face_landmarker.task")
    comfy.folder_paths.add_model_folder_path("mediapipe", str(user_dir), is_default=True)
    try:
        user = node.execute(image, "auto", "largest", 0, "error", 0.0, 0.5)[0]
        assert user.meta["model_path"] == str(user_dir / "face_landmarker.task")
        assert np.allclose(user.points, embedded.points, atol=1e-4)
        assert "face_landmarker.task" in node.GET_SCHEMA().inputs[1].options
        with pytest.raises(ValueError, match=r"Face Landmarks.*'model'"):
            node.execute(image, "missing.task", "largest", 0, "error", 0.0, 0.5)
    finally:
        comfy.folder_paths.folder_names_and_paths["mediapipe"][0].remove(str(user_dir))


def test_face_index_errors_reach_the_face_index_input(comfy, astronaut):
    """detect_landmarks names the rejected argument (``selection`` for a face index beyond the faces found,
    ``images`` for unusable images); Face Landmarks reports them on 'face_index' and 'image'."""
    import torch

    from portraittalk.ptalk_models.errors import InputError

    with pytest.raises(InputError, match="out of range") as e:
        detect_landmarks(astronaut, selection=3)
    assert e.value.argument == "selection"
    with pytest.raises(InputError, match="channels") as e:
        detect_landmarks(astronaut[..., :2])
    assert e.value.argument == "images"
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkFaceLandmarks"]
    image = torch.from_numpy(astronaut)[None].float() / 255
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Face Landmarks\] input 'face_index': face_index 3 is "
                                         r"out of range"):
        node.execute(image, "auto", "by index", 3, "error", 0.0, 0.5)
