"""ADFD Score (PortraitTalk Eq. 4) and its companion metrics on real talking-face clips, inside the real ComfyUI.

Real MediaPipe landmarks of real clips (GRID mpg, CREMA-D flv, retalking mp4) from ../shared/data, detected once
per clip (module fixture); node graphs run through the in-process ComfyUI (core Load Video → Get Video
Components → ADFD Score).
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

import ptalk_harness as harness
from portraittalk.ptalk_models import metrics
from portraittalk.ptalk_models.errors import InputError
from portraittalk.ptalk_models.face import NoFaceError, detect_landmarks
from portraittalk.ptalk_models.media import read_audio, read_video
from portraittalk.ptalk_models.plot import report_plot

CLIPS = {
    "grid": "video/lbax4n.mpg",             # GRID speaker, "lay blue at x four now"
    "grid2": "video/lwbsza.mpg",            # another GRID speaker
    "crema": "video/crema-d/1001_DFA_ANG_XX.flv",
    "retalking": "video/retalking_face_5.mp4",
}
PERSON = {"grid": "grid_lbax4n", "grid2": "grid_lwbsza", "crema": "crema_1001", "retalking": "retalking_face_5"}


@pytest.fixture(scope="module")
def clips(shared_data):
    """name → dict(frames uint8 [T,H,W,3], fps, wav [C,N], sr, lm FaceLandmarks); detected once per module."""
    out = {}
    for name, rel in CLIPS.items():
        frames, fps = read_video(shared_data / rel)
        wav, sr = read_audio(shared_data / rel)
        lm = detect_landmarks(frames, on_missing="keep", fps=fps)
        assert lm.present.all(), f"{rel}: MediaPipe lost the face in some frames"
        out[name] = {"frames": frames, "fps": fps, "wav": wav, "sr": sr, "lm": lm, "path": shared_data / rel}
    return out


def sub(lm, start, stop=None):
    """Frames [start:stop] of a FaceLandmarks."""
    return lm.with_points(lm.points[start:stop], present=lm.present[start:stop])


def delayed(wav, sr, fps, frames):
    """The audio delayed by ``frames`` video frames (silence in front, same length)."""
    k = int(round(frames * sr / fps))
    return np.concatenate([np.zeros((wav.shape[0], k), wav.dtype), wav[:, :-k]], axis=1)


# ------------------------------------------------------------------------------------------------ ADFD itself
@pytest.mark.parametrize("name", ["grid", "crema", "retalking"])
def test_clip_against_itself_is_w1_times_w2(clips, name):
    lm = clips[name]["lm"]
    for mv in metrics.MOTION_VECTORS:
        assert metrics.adfd(lm, lm, motion_vectors=mv).adfd == 1.0
    r = metrics.adfd(lm, lm, w1=0.5, w2=0.8)
    assert r.adfd == pytest.approx(0.4, abs=1e-12) and r.spatial == 1.0 and r.motion == 1.0
    assert r.motion_pairs == len(lm) - 1
    rep = metrics.evaluate(lm, lm, w1=0.5, w2=0.8, identity_backend=None)
    assert rep["adfd"] == pytest.approx(0.4, abs=1e-12)
    assert rep["lmd"]["mouth_px"] == 0.0 and rep["lmd"]["face_iod"] == 0.0
    assert rep["jitter"]["ratio"] == 1.0 and rep["warnings"] == []


@pytest.mark.parametrize("base", ["crema", "retalking"])
def test_shift_by_three_frames_scores_lower_and_another_speaker_lower_still(clips, base):
    lm = clips[base]["lm"]
    shifted = metrics.adfd(sub(lm, 3), sub(lm, 0, -3))
    assert shifted.adfd < 0.9  # motion timing 120 ms off: the motion term falls toward chance (0.5)
    assert shifted.spatial > 0.99
    for other in ("grid", "grid2", "crema", "retalking"):
        if PERSON[other] == PERSON[base]:
            continue
        r = metrics.adfd(clips[other]["lm"], lm)  # CREMA-D 480x360 vs retalking 524x524: normalised coordinates
        assert r.adfd < shifted.adfd - 0.03, (other, r.adfd, shifted.adfd)
        assert r.spatial < shifted.spatial


def test_grid_shift_and_other_speaker(clips):
    """GRID heads barely move: a 3-frame shift leaves the motion term near chance (documented), but the
    spatial term still ranks self > shifted > another GRID speaker, and ADFD ranks another corpus lower."""
    lm = clips["grid"]["lm"]
    shifted = metrics.adfd(sub(lm, 3), sub(lm, 0, -3))
    other = metrics.adfd(clips["grid2"]["lm"], lm)
    assert 1.0 > shifted.spatial > other.spatial
    assert shifted.adfd < 0.75
    assert metrics.adfd(clips["crema"]["lm"], lm).adfd < shifted.adfd - 0.03


@pytest.mark.parametrize("name", ["grid", "retalking"])
def test_monotone_under_growing_landmark_noise(clips, name):
    lm = clips[name]["lm"]
    z = np.random.default_rng(0).standard_normal(lm.points.shape[:2] + (2,))
    scale = np.array(lm.image_size, np.float32)
    scores, lmds = [], []
    for sigma in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0):  # pixels
        p = lm.points.copy()
        p[..., :2] += (sigma * z / scale).astype(np.float32)
        rep = metrics.evaluate(lm.with_points(p), lm, identity_backend=None)
        scores.append((rep["adfd"], rep["spatial_term"], rep["motion_term"]))
        lmds.append(rep["lmd"]["face_px"])
    adfd, spatial, motion = map(np.array, zip(*scores))
    assert adfd[0] == 1.0 and np.all(np.diff(adfd) < 0), adfd
    assert np.all(np.diff(spatial) < 0) and np.all(np.diff(motion) < 0)
    assert np.all(np.diff(lmds) > 0)
    # mean |N(0, s^2 I_2)| = s * sqrt(pi / 2): the face LMD measures the noise in pixels
    assert lmds[-1] == pytest.approx(8.0 * math.sqrt(math.pi / 2), rel=0.05)


def test_motion_readings_differ_and_zero_motion_rules():
    """Synthetic still/moving sequences: the documented zero-motion rules of the motion term."""
    from portraittalk.ptalk_models.landmarks import FaceLandmarks

    base = np.random.default_rng(1).uniform(0.3, 0.7, (1, 478, 3)).astype(np.float32)
    still = FaceLandmarks.from_points(np.repeat(base, 4, 0), (100, 100))
    moving = still.with_points(still.points + np.arange(4, dtype=np.float32)[:, None, None] * 0.01)
    assert metrics.adfd(still, still).motion == 1.0           # both still: cos := 1
    r = metrics.adfd(moving, still)                           # one still: cos := 0 -> 0.5
    assert r.motion == 0.5 and r.static_pairs == 3 and any("no motion" in w for w in r.warnings)
    back = moving.with_points(moving.points[::-1].copy())     # opposite motion: cos = -1 -> 0
    assert metrics.adfd(back, moving).motion == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ sync proxy
@pytest.mark.parametrize("name", ["grid", "retalking"])
def test_sync_proxy_peaks_near_lag0_and_drops_with_shifted_audio(clips, name):
    c = clips[name]
    s = metrics.sync_proxy(c["lm"], c["wav"], c["sr"])
    assert abs(s["best_lag"]) <= 2 and s["corr_lag0"] > 0.3, s["corr_by_lag"]
    late = metrics.sync_proxy(c["lm"], delayed(c["wav"], c["sr"], c["fps"], 10), c["sr"])
    assert late["corr_lag0"] < s["corr_lag0"] - 0.25, (s["corr_lag0"], late["corr_lag0"])
    # and in the report, for the generated side
    rep = metrics.evaluate(c["lm"], c["lm"], audio=(c["wav"], c["sr"]), identity_backend=None)
    assert rep["sync"]["generated"]["corr_lag0"] == pytest.approx(s["corr_lag0"])
    assert "NOT SyncNet" in rep["sync"]["proxy"]


# ------------------------------------------------------------------------------------------------ bad inputs
def test_frames_without_a_face_are_excluded_and_counted(clips):
    c = clips["grid"]
    frames = c["frames"].copy()
    frames[20:25] = 0                                        # five all-black frames
    lm = detect_landmarks(frames, on_missing="keep", fps=c["fps"])
    assert lm.present.sum() == len(frames) - 5
    rep = metrics.evaluate(lm, c["lm"], identity_backend=None)
    assert rep["frames"]["excluded_no_face"] == 5 and rep["frames"]["generated_no_face"] == 5
    assert rep["frames"]["used"] == len(frames) - 5
    assert rep["adfd"] == 1.0                                # the remaining frames are the clip itself
    assert rep["motion_pairs"] == len(frames) - 1 - 6        # pairs touching a black frame are dropped
    assert any("excluded" in w for w in rep["warnings"])
    per = json.loads(metrics.report_json(rep))["per_frame"]
    assert per["spatial"][20] is None and per["spatial"][19] == 1.0


def test_all_black_frames(clips):
    black = np.zeros((6, 288, 360, 3), np.uint8)
    with pytest.raises(NoFaceError, match="no face found in any"):
        detect_landmarks(black, on_missing="keep")
    lm = clips["grid"]["lm"]
    absent = lm.with_points(lm.points[:6], present=np.zeros(6, bool))
    with pytest.raises(ValueError, match="generated: no face in any"):
        metrics.evaluate(absent, lm, identity_backend=None)
    with pytest.raises(ValueError, match="ground_truth: no face in any"):
        metrics.adfd(lm, absent)


def test_mismatched_lengths_clip_to_the_shorter(clips):
    lm = clips["grid"]["lm"]
    rep = metrics.evaluate(lm, sub(lm, 0, 50), identity_backend=None)
    assert rep["frames"]["compared"] == 50 and rep["frames"]["generated"] == len(lm)
    assert rep["adfd"] == 1.0 and any("unequal lengths" in w for w in rep["warnings"])
    assert len(rep["per_frame"]["spatial"]) == 50


def test_one_frame_videos(clips):
    lm = clips["grid"]["lm"]
    one = metrics.evaluate(lm.frame(0), lm.frame(0), audio=(clips["grid"]["wav"], clips["grid"]["sr"]),
                           identity_backend=None)
    assert one["adfd"] == 1.0 and one["motion_term"] == 1.0 and one["motion_pairs"] == 0
    assert any("motion term undefined" in w for w in one["warnings"])
    assert math.isnan(one["jitter"]["generated_px"])
    assert math.isnan(one["sync"]["generated"]["corr_lag0"])
    other = metrics.adfd(clips["grid2"]["lm"].frame(0), lm.frame(0))
    assert other.motion == 1.0 and other.adfd == pytest.approx(other.spatial) and other.adfd < 1.0
    json.loads(metrics.report_json(one))  # NaN → null, valid JSON


def test_different_resolutions_compare_in_normalised_coordinates(clips):
    c = clips["retalking"]
    small = np.stack([cv2.resize(f, (262, 262), interpolation=cv2.INTER_AREA) for f in c["frames"][:30]])
    lm_small = detect_landmarks(small, on_missing="keep", fps=c["fps"])
    rep = metrics.evaluate(lm_small, sub(c["lm"], 0, 30), identity_backend=None)
    assert rep["reference_size"] == [524, 524]
    assert rep["spatial_term"] > 0.99 and rep["lmd"]["face_iod"] < 0.05
    assert any("resolutions differ" in w for w in rep["warnings"])
    # a 4:3 clip against a 1:1 clip: compared, with an aspect warning
    rep2 = metrics.evaluate(clips["crema"]["lm"], c["lm"], identity_backend=None)
    assert any("aspect ratios differ" in w for w in rep2["warnings"])


def test_bad_weights_and_readings(clips):
    lm = clips["grid"]["lm"]
    for kw in ({"w1": -1.0}, {"w2": float("nan")}, {"motion_vectors": "mesh"}):
        with pytest.raises(ValueError, match="w1|w2|motion_vectors"):
            metrics.adfd(lm, lm, **kw)
    with pytest.raises(ValueError, match="FaceLandmarks"):
        metrics.adfd(lm.points, lm)
    with pytest.raises(ValueError, match="fps"):
        metrics.sync_proxy(lm.with_points(lm.points, fps=0.0), clips["grid"]["wav"], clips["grid"]["sr"])
    # the engine names the rejected parameter (InputError.argument), for the nodes to map without parsing text
    for kw, arg in (({"w1": -1.0}, "w1"), ({"motion_vectors": "mesh"}, "motion_vectors"),
                    ({"identity_stride": 0}, "identity_stride")):
        with pytest.raises(InputError) as err:
            metrics.evaluate(lm, lm, identity_backend=None, **kw)
        assert err.value.argument == arg
    with pytest.raises(InputError, match="ground_truth: expected FaceLandmarks") as err:
        metrics.evaluate(lm, lm.points)
    assert err.value.argument == "ground_truth"
    with pytest.raises(InputError, match="fps: the landmarks carry no frame rate") as err:
        metrics.evaluate(lm.with_points(lm.points, fps=0.0), lm.with_points(lm.points, fps=0.0),
                         audio=(clips["grid"]["wav"], clips["grid"]["sr"]), identity_backend=None)
    assert err.value.argument == "fps"
    with pytest.raises(InputError, match="audio: .*empty") as err:
        metrics.evaluate(lm, lm, audio=(np.zeros((1, 0), np.float32), 16000), identity_backend=None)
    assert err.value.argument == "audio"


def test_compute_evaluation_and_build_report_make_evaluate(clips):
    """evaluate = build_report(compute_evaluation(...)): numbers first, the report built from them."""
    g, g2 = clips["grid"], clips["grid2"]
    kw = dict(audio=(g["wav"], g["sr"]), identity_backend=None)
    ev = metrics.compute_evaluation(g2["lm"], g["lm"], **kw)
    assert ev.adfd.adfd == pytest.approx(metrics.adfd(g2["lm"], g["lm"]).adfd)
    assert ev.sync is not None and ev.energy_db is not None and ev.fps == pytest.approx(g["fps"])
    assert metrics.report_json(metrics.build_report(ev)) == metrics.report_json(metrics.evaluate(g2["lm"], g["lm"], **kw))


# ------------------------------------------------------------------------------------------------ identity
def test_identity_per_frame_separates_people(clips):
    g, g2 = clips["grid"], clips["grid2"]
    same = metrics.evaluate(g["lm"], g["lm"], generated_frames=g["frames"], ground_truth_frames=g["frames"],
                            identity_backend="dlib", identity_stride=15)
    other = metrics.evaluate(g2["lm"], g["lm"], generated_frames=g2["frames"], ground_truth_frames=g["frames"],
                             identity_backend="dlib", identity_stride=15)
    ids, ido = same["identity"], other["identity"]
    assert ids["frames_embedded"] == 5 and ids["same_person_frames"] == 5 and ids["min"] > 0.6
    assert ido["same_person_frames"] == 0 and ido["mean"] < 0.5
    per = same["per_frame"]["identity"]
    assert np.isfinite(per[::15]).all() and np.isnan(per[1])
    # landmarks only: identity skipped with a note, ADFD unaffected
    rep = metrics.evaluate(g["lm"], g["lm"], identity_backend="dlib")
    assert rep["identity"] is None and any("identity similarity skipped" in w for w in rep["warnings"])


# ------------------------------------------------------------------------------------------------ plot
def test_report_plot_draws_the_curves(clips):
    c = clips["grid"]
    rep = metrics.evaluate(clips["grid2"]["lm"], c["lm"], audio=(c["wav"], c["sr"]), identity_backend=None)
    img = report_plot(rep)
    assert img.dtype == np.uint8 and img.shape[1] == 960 and img.shape[0] > 5 * 150
    blue = np.all(np.abs(img.astype(int) - (31, 119, 180)) < 40, axis=-1)
    red = np.all(np.abs(img.astype(int) - (214, 39, 40)) < 40, axis=-1)
    assert blue.sum() > 1000 and red.sum() > 100  # curves drawn (ground-truth aperture in red)


# ------------------------------------------------------------------------------------------------ in ComfyUI
def _graph(video_name: str, identity: str = "off", stride: int = 1) -> dict:
    """Load Video → Get Video Components → ADFD Score (the clip against itself, its own audio) → Preview Any."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": video_name}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "PTalkADFDScore",
              "inputs": {"generated": ["2", 0], "ground_truth": ["2", 0], "audio": ["2", 1], "fps": ["2", 2],
                         "w1": 1.0, "w2": 1.0, "identity": identity, "identity_stride": stride,
                         "motion_vectors": "face"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }


@pytest.mark.parametrize("name,identity", [("retalking", "dlib"), ("grid", "off")])
def test_node_graph_load_video_mp4_and_mpg(comfy, clips, name, identity):
    c = clips[name]
    staged = harness.stage_input_file(c["path"])
    res = harness.run_prompt(_graph(staged, identity, stride=40))
    rep = json.loads(res["outputs"]["4"]["text"][0])
    assert rep["adfd"] == 1.0 and rep["frames"]["compared"] == len(c["frames"])
    assert rep["fps"] == pytest.approx(c["fps"]) and rep["inputs"] == {"generated": "images", "ground_truth": "images"}
    sync = rep["sync"]["generated"]
    assert abs(sync["best_lag"]) <= 2 and sync["corr_lag0"] > 0.3  # real, synced clip (int16 audio for mpg)
    if identity == "dlib":
        assert rep["identity"]["frames_embedded"] == math.ceil(len(c["frames"]) / 40)
        assert rep["identity"]["same_person_frames"] == rep["identity"]["frames_embedded"]
    ui = res["outputs"]["3"]
    assert ui["text"][0].startswith("ADFD 1.0000") and len(ui["images"]) == 1


def test_node_graph_flv(comfy, clips):
    """CREMA-D FLV (VP6 + MP3). Core Get Video Components of ComfyUI 0.3.75 fails on it (it seeks back to read the
    audio and FFmpeg cannot seek this FLV); the node's generated_video / ground_truth_video inputs decode it."""
    c = clips["crema"]
    staged = harness.stage_input_file(c["path"])
    try:
        core = harness.run_prompt(_graph(staged))
    except harness.PromptExecutionError as e:  # ComfyUI 0.3.75: av.error.PermissionError from seek(0)
        assert "GetVideoComponents" in str(e)
    else:  # a ComfyUI / PyAV that can read it: then the core path must score it too
        rep = json.loads(core["outputs"]["4"]["text"][0])
        assert rep["adfd"] == 1.0 and rep["frames"]["compared"] == len(c["frames"])
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": staged}},
        "3": {"class_type": "PTalkADFDScore",
              "inputs": {"generated_video": ["1", 0], "ground_truth_video": ["1", 0], "fps": 0.0, "w1": 0.5,
                         "w2": 0.8, "identity": "off", "identity_stride": 1, "motion_vectors": "face"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    rep = json.loads(harness.run_prompt(prompt)["outputs"]["4"]["text"][0])
    assert rep["adfd"] == pytest.approx(0.4) and rep["frames"]["compared"] == len(c["frames"])
    assert rep["fps"] == pytest.approx(c["fps"], rel=1e-3) and rep["audio_source"] == "generated_video soundtrack"
    assert rep["sync"]["generated"]["frames"] >= len(c["frames"]) - 1


def test_load_video_lists_mp4_and_mpg(comfy, clips):
    """Load Video's file menu filters the input folder by MIME type (mimetypes.guess_type → video/*)."""
    names = [harness.stage_input_file(clips[n]["path"]) for n in ("retalking", "grid")]
    options = comfy.nodes.NODE_CLASS_MAPPINGS["LoadVideo"].GET_SCHEMA().inputs[0].options
    assert set(names) <= set(options)


def test_node_direct_calls_and_errors(comfy, clips):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkADFDScore"]
    schema = node.GET_SCHEMA()
    assert schema.category == "PortraitTalk" and "Eq. 4" in schema.description and schema.is_output_node
    assert all(i.tooltip for i in schema.inputs) and "not SyncNet" in next(
        i.tooltip for i in schema.inputs if i.id == "audio")
    g, g2 = clips["grid"], clips["grid2"]
    kw = dict(fps=0.0, w1=1.0, w2=1.0, identity="off", identity_stride=1, motion_vectors="face")
    out = node.execute(generated_landmarks=g2["lm"], ground_truth_landmarks=g["lm"], **kw)
    ref = metrics.adfd(g2["lm"], g["lm"]).adfd
    assert out[0] == pytest.approx(ref, abs=1e-6) and out[2].shape[0] == 1 and out[2].shape[-1] == 3
    assert json.loads(out[1])["inputs"] == {"generated": "landmarks", "ground_truth": "landmarks"}
    # frames on one side, landmarks on the other; fps from the widget for the frames
    imgs = torch.from_numpy(g["frames"][:20]).float() / 255
    out = node.execute(generated=imgs, ground_truth_landmarks=sub(g["lm"], 0, 20), **dict(kw, fps=25.0))
    assert out[0] == pytest.approx(metrics.adfd(detect_landmarks(g["frames"][:20]), sub(g["lm"], 0, 20)).adfd)
    with pytest.raises(ValueError, match=r"ADFD Score.*'ground_truth'.*nothing connected"):
        node.execute(generated=imgs, **kw)
    with pytest.raises(ValueError, match=r"'generated_landmarks'.*only one of"):
        node.execute(generated=imgs, generated_landmarks=g["lm"], ground_truth=imgs, **kw)
    with pytest.raises(ValueError, match=r"'ground_truth'.*no face found in any"):
        node.execute(generated=imgs, ground_truth=torch.zeros(3, 64, 64, 3), **kw)
    audio = {"waveform": torch.from_numpy(g["wav"])[None], "sample_rate": g["sr"]}
    with pytest.raises(ValueError, match=r"'fps'"):
        node.execute(generated=imgs, ground_truth=imgs, audio=audio, **kw)


def test_engine_input_error_reaches_the_connected_node_input(comfy, clips):
    """A workflow whose two videos never show a face in the same frame: the engine's InputError names its argument
    ``generated``, and the node reports it on the input that carried that side (``generated_landmarks``)."""
    staged = harness.stage_input_file(clips["grid"]["path"])
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": staged}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 6}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 360, "height": 288, "batch_size": 6, "color": 0}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},   # face, then black
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["3", 0]}},   # black, then face
        "7": {"class_type": "PTalkFaceLandmarks",
              "inputs": {"image": ["5", 0], "model": "auto", "face": "largest", "face_index": 0, "on_missing": "keep",
                         "fps": 25.0, "min_confidence": 0.5}},
        "8": {"class_type": "PTalkADFDScore",
              "inputs": {"generated_landmarks": ["7", 0], "ground_truth": ["6", 0], "fps": 25.0, "w1": 1.0,
                         "w2": 1.0, "identity": "off", "identity_stride": 1, "motion_vectors": "face"}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 1]}},
    }
    with pytest.raises(harness.PromptExecutionError) as err:
        harness.run_prompt(prompt)
    msg = str(err.value)
    assert "PTalkADFDScore" in msg and "NodeInputError" in msg, msg
    assert "input 'generated_landmarks': no frame among the 12 compared has a face on both sides" in msg, msg


def test_shipped_adfd_compare_workflow_scores_real_clips(comfy, shared_data):
    """workflows/adfd_compare.json (Load Video ×2 → ADFD Score → report/plot previews) on GRID clips."""
    from pathlib import Path

    wf = Path(__file__).resolve().parent.parent / "workflows" / "adfd_compare.json"
    scores = {}
    for other in ("lbax4n", "sbwe5n"):
        ui = harness.apply_inputs(harness.load_workflow(wf), {
            "Generated video": str(shared_data / "video" / "lbax4n.mpg"),
            "Ground-truth video": str(shared_data / "video" / f"{other}.mpg")})
        result = harness.run_prompt(harness.workflow_to_prompt(ui))
        report = json.loads("".join(result["outputs"]["4"]["text"]))
        scores[other] = report["adfd"]
        assert result["outputs"]["5"]["images"], "the plot preview was not produced"
    assert scores["lbax4n"] == pytest.approx(1.0)
    assert scores["sbwe5n"] < 0.9
