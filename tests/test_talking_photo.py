"""The talking-photo graph (workflows/talking_photo.json) run inside the real ComfyUI, on real media.

Checks the written mp4 (streams, duration), lip sync measured on the output (MediaPipe re-detection of
the rendered frames vs the audio's 200-4000 Hz log energy), silence, and bad inputs end to end.
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soxr
import torch

import ptalk_harness as harness
from portraittalk.ptalk_models.audio import band_log_energy, n_video_frames, prepare_audio
from portraittalk.ptalk_models.face import detect_landmarks
from portraittalk.ptalk_models.landmarks import FaceLandmarks, inner_lip_aperture
from portraittalk.ptalk_models.media import read_video, write_wav
from portraittalk.ptalk_models.metrics import lag_correlations

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "talking_photo.json"   # the default graph (what make demo runs): streamed
#: the shipped talking-photo graph of each renderer
GRAPHS = {"PTalkLandmarkWarpRenderVideo": WORKFLOW, "PTalkLandmarkWarpRender": REPO / "workflows" / "talking_photo_batch.json"}


def talking_photo_graph(render_node: str) -> Path:
    """The shipped talking-photo workflow whose renderer is ``render_node``: ``PTalkLandmarkWarpRenderVideo``
    (streamed, the default) or ``PTalkLandmarkWarpRender`` (IMAGE batch)."""
    return GRAPHS[render_node]


FPS = 25.0
PACK_NODES = {"PTalkFaceLandmarks", "PTalkAudioToLandmarks", "PTalkDrawLandmarks", "PTalkLandmarkWarpRender",
              "PTalkLandmarkWarpRenderVideo", "PTalkFaceEmbed", "PTalkContourGuide", "PTalkADFDScore"}


# ----------------------------------------------------------------------------------------------- helpers
def probe_mp4(path) -> dict:
    """Decoded RGB frames, fps, size and the decoded audio duration of an mp4."""
    frames, fps = read_video(path)
    with av.open(str(path)) as c:
        assert c.streams.audio, f"{path} has no audio stream"
        a = c.streams.audio[0]
        # the stream's declared duration (what players use); the decoded sample count also holds the
        # AAC encoder's padding up to a whole 1024-sample frame (128 ms at 8 kHz)
        audio_s = float(a.duration * a.time_base)
        assert sum(f.samples for f in c.decode(a)) >= audio_s * a.rate
    return {"frames": frames, "fps": fps, "audio_s": audio_s, "size": (frames.shape[2], frames.shape[1])}


def run(image, audio, tmp_path, **widgets) -> Path:
    """talking_photo.json on ``image`` + ``audio`` (paths), widget overrides by node; the one mp4 it saved."""
    inputs = {"Portrait": str(image), "Speech": str(audio), **widgets}
    files = harness.run_workflow(WORKFLOW, inputs=inputs, out_dir=tmp_path)
    mp4s = [f for f in files if f.suffix == ".mp4"]
    assert len(mp4s) == 1, files
    return mp4s[0]


# ----------------------------------------------------------------------------------------------- tests
def test_pack_registers_every_node(comfy, grid_still):
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    # the tests' ptalk_models is the loaded pack's (conftest's alias): same classes on both sides
    lm = mappings["PTalkFaceLandmarks"].execute(torch.from_numpy(grid_still)[None].float() / 255, "auto",
                                                "largest", 0, "error", 0.0, 0.5)[0]
    assert type(lm) is FaceLandmarks
    assert PACK_NODES <= set(comfy.pack_nodes)  # registered by the pack itself (not core)
    for node_id in comfy.pack_nodes:  # every node the pack registered, also ones this list does not know yet
        schema = mappings[node_id].GET_SCHEMA()
        assert schema.category == "PortraitTalk" and schema.description
        assert all(i.tooltip for i in schema.inputs), f"{node_id}: every input needs a tooltip"
        assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].endswith("(PortraitTalk)")


# (photo fixture, its file; speech fixture, its file): the session fixtures of conftest.py and their sources
TALKING = {"astronaut+jfk": ("astronaut", "photos/astronaut.png", "jfk", "audio/jfk.flac"),
           "grid+beckett": ("grid_still", "photos/grid_still_lbax4n.png", "beckett", "audio/beckett.wav")}


@pytest.fixture(scope="module", params=list(TALKING.values()), ids=list(TALKING))
def talking(request, comfy, shared_data, tmp_path_factory):
    photo, photo_file, speech, speech_file = request.param
    mp4 = run(shared_data / photo_file, shared_data / speech_file, tmp_path_factory.mktemp("talking"))
    wav, sr = request.getfixturevalue(speech)
    return {"ref": request.getfixturevalue(photo), "wav": wav, "sr": sr, "mp4": mp4, **probe_mp4(mp4)}


def test_mp4_streams_and_duration(talking):
    duration = talking["wav"].shape[1] / talking["sr"]
    assert talking["fps"] == pytest.approx(FPS)
    assert len(talking["frames"]) == n_video_frames(talking["wav"].shape[1], talking["sr"], FPS)
    assert abs(talking["audio_s"] - duration) <= 1.0 / FPS
    ref = talking["ref"]
    assert talking["size"] == (ref.shape[1] - ref.shape[1] % 2, ref.shape[0] - ref.shape[0] % 2)


def test_lip_sync_on_rendered_frames(talking):
    """Inner-lip aperture re-detected on the mp4 follows the speech's 200-4000 Hz log energy."""
    lm = detect_landmarks(talking["frames"], on_missing="keep")
    assert lm.present.mean() > 0.95
    aperture = inner_lip_aperture(lm)
    mono = prepare_audio(talking["wav"], talking["sr"]).samples
    energy = band_log_energy(mono, 16000, FPS, len(aperture))
    corr = lag_correlations(aperture, energy, max_lag=5)  # aperture[t] vs energy[t - lag]
    best = max(corr, key=corr.get)
    assert abs(best) <= 1, corr
    assert corr[best] > 0.3, corr
    assert aperture.max() - aperture.min() > 0.15  # the mouth really opens and closes


def test_silence_keeps_the_mouth_closed(comfy, shared_data, tmp_path):
    image = shared_data / "photos" / "astronaut.png"
    silent = write_wav(tmp_path / "silence.wav", np.zeros((1, 16000 * 2), np.float32), 16000)
    out = probe_mp4(run(image, silent, tmp_path))
    assert len(out["frames"]) == 50
    ap = inner_lip_aperture(detect_landmarks(out["frames"], on_missing="keep"))
    # her smile shows teeth (aperture 0.10); in silence the lips close and stay closed
    assert ap.max() < 0.04 and ap.std() < 0.01, ap


@pytest.fixture(scope="module")
def short_speech(beckett, jfk):
    """Two real seconds of beckett.wav (16 kHz mono) and of jfk.flac (44.1 kHz stereo)."""
    (b, bsr), (j, jsr) = beckett, jfk
    return (b[:, int(0.5 * bsr): int(2.5 * bsr)], bsr), (j[:, int(0.3 * jsr): int(2.3 * jsr)], jsr)


@pytest.mark.parametrize("kind", ["8k_mono", "48k_stereo", "0.1s"])
def test_audio_formats(kind, comfy, shared_data, short_speech, tmp_path):
    (b, bsr), (j, jsr) = short_speech
    if kind == "8k_mono":
        x, sr = soxr.resample(b[0], bsr, 8000)[None], 8000
    elif kind == "48k_stereo":
        x, sr = soxr.resample(j.T, jsr, 48000).T, 48000
    else:
        x, sr = b[:, : bsr // 10], bsr
    path = write_wav(tmp_path / f"{kind}.wav", x, sr)
    out = probe_mp4(run(shared_data / "photos" / "grid_still_lbax4n.png", path, tmp_path))
    assert len(out["frames"]) == n_video_frames(x.shape[1], sr, FPS)
    assert abs(out["audio_s"] - x.shape[1] / sr) <= 1.0 / FPS


def test_image_without_face_is_a_clear_error(comfy, shared_data, short_speech, tmp_path):
    photo = cv2.imread(str(shared_data / "photos" / "astronaut.png"))
    cv2.imwrite(str(tmp_path / "suit.png"), photo[330:512, 280:512])  # the flag and suit, no face
    speech = write_wav(tmp_path / "s.wav", *short_speech[0])
    with pytest.raises(harness.PromptExecutionError) as e:
        run(tmp_path / "suit.png", speech, tmp_path)
    msg = str(e.value)
    assert "Face Landmarks" in msg and "no face found in frame 0" in msg and "'image'" in msg


@pytest.mark.parametrize("variant", ["rgba", "gray", "513x771", "group"])
def test_image_variants(variant, comfy, shared_data, short_speech, tmp_path):
    astro = cv2.imread(str(shared_data / "photos" / "astronaut.png"))
    widgets = {}
    if variant == "rgba":
        img = np.dstack([astro, np.full(astro.shape[:2], 200, np.uint8)])
    elif variant == "gray":
        img = cv2.cvtColor(astro, cv2.COLOR_BGR2GRAY)
    elif variant == "513x771":
        img = np.full((771, 513, 3), 90, np.uint8)
        img[100:612, :512] = astro
    else:  # two real people: pick the astronaut (left) by index
        grid = cv2.imread(str(shared_data / "photos" / "grid_still_lbax4n.png"))
        img = np.zeros((512, 512 + 360, 3), np.uint8)
        img[:512, :512] = astro
        img[:288, 512:] = grid
        widgets = {"PTalkFaceLandmarks": {"face": "by index", "face_index": 0}}
    cv2.imwrite(str(tmp_path / f"{variant}.png"), img)
    speech = write_wav(tmp_path / "s.wav", *short_speech[0])
    out = probe_mp4(run(tmp_path / f"{variant}.png", speech, tmp_path, **widgets))
    h, w = img.shape[:2]
    assert out["size"] == (w - w % 2, h - h % 2)
    lm = detect_landmarks(out["frames"], on_missing="keep", selection=0 if variant == "group" else "largest")
    assert lm.present.all()
    if variant == "group":  # the animated face is the astronaut's: her mouth moves, the GRID face is still
        assert (lm.pixels()[:, 1, 0] < 512).all()
        assert inner_lip_aperture(lm).std() > 0.02
        right = out["frames"][:, :288, 520:]
        assert np.abs(right.astype(int) - right[0].astype(int)).max() < 40


def _node(comfy, node_id):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture(scope="module")
def reference_lm(comfy, grid_still):
    """Face Landmarks node output on photos/grid_still_lbax4n.png."""
    image = torch.from_numpy(grid_still)[None].float() / 255
    return _node(comfy, "PTalkFaceLandmarks").execute(image, "auto", "largest", 0, "error", 0.0, 0.5)[0]


def _a2l(comfy, reference, wav, sr, transcript=None):
    audio = {"waveform": torch.from_numpy(np.ascontiguousarray(wav))[None], "sample_rate": sr}
    kw = {} if transcript is None else {"transcript": transcript}
    return _node(comfy, "PTalkAudioToLandmarks").execute(audio, reference, "phonemes (pocketsphinx)", FPS, 7, 1.0,
                                                         True, True, **kw)


def test_nan_samples_are_silence(comfy, reference_lm, short_speech):
    (b, sr), _ = short_speech
    x = b.copy()
    x[:, : sr // 2] = np.nan  # the first half second is corrupt
    lm, fps = _a2l(comfy, reference_lm, x, sr)
    assert fps == FPS and len(lm) == n_video_frames(x.shape[1], sr, FPS)
    assert np.isfinite(lm.points).all()
    assert lm.meta["nonfinite_samples"] == sr // 2 and lm.meta["warnings"]
    ap = inner_lip_aperture(lm)
    assert ap[:10].max() < 0.02                  # NaN half-second = silence: lips closed
    assert ap[15:].max() > 0.15                  # real speech afterwards opens it


def test_empty_transcript_is_phone_recognition(comfy, reference_lm, short_speech):
    (b, sr), _ = short_speech
    plain, _ = _a2l(comfy, reference_lm, b, sr)
    empty, _ = _a2l(comfy, reference_lm, b, sr, transcript="   ")
    assert np.array_equal(plain.points, empty.points)
    assert empty.meta["alignment_mode"] == "phone_recognition"


def test_empty_audio_is_a_clear_error(comfy, reference_lm):
    with pytest.raises(ValueError, match=r"Audio → Landmarks.*'audio'"):
        _a2l(comfy, reference_lm, np.zeros((1, 0), np.float32), 16000)


def test_streamed_video_node_renders_the_same_frames(comfy, shared_data, short_speech, tmp_path):
    """The streamed graph (frames rendered while Save Video encodes: face crops composited in the encoder) = the
    IMAGE-batch graph's frames (Landmark Warp Render → Create Video → Save Video)."""
    image = shared_data / "photos" / "grid_still_lbax4n.png"
    speech = write_wav(tmp_path / "s.wav", *short_speech[0])
    mp4 = {}
    for kind in ("PTalkLandmarkWarpRender", "PTalkLandmarkWarpRenderVideo"):
        files = harness.run_workflow(talking_photo_graph(kind), out_dir=tmp_path,
                                            inputs={"Portrait": str(image), "Speech": str(speech)})
        mp4[kind] = [f for f in files if f.suffix == ".mp4"][0]
    batch, streamed = probe_mp4(mp4["PTalkLandmarkWarpRender"]), probe_mp4(mp4["PTalkLandmarkWarpRenderVideo"])
    assert streamed["frames"].shape == batch["frames"].shape
    assert abs(streamed["audio_s"] - batch["audio_s"]) <= 1.0 / FPS
    mse = np.mean((streamed["frames"].astype(float) - batch["frames"].astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 32  # only the two H.264 encodings differ


def test_draw_landmarks_node(comfy, reference_lm, grid_still):
    draw = _node(comfy, "PTalkDrawLandmarks")
    (img,) = draw.execute(reference_lm, "controlnet", 0).args
    assert tuple(img.shape) == (1, 288, 360, 3) and img.dtype == torch.float32
    lit = img[0].amax(-1) > 0
    px = reference_lm.pixels(0).round().astype(int)
    assert lit[px[13, 1] - 2: px[13, 1] + 3, px[13, 0] - 2: px[13, 0] + 3].any()  # the lips are drawn
    assert lit.float().mean() < 0.1                                                # on black
    photo = torch.from_numpy(grid_still)[None].float() / 255
    (over,) = draw.execute(reference_lm, "mesh", 2, images=photo).args
    assert tuple(over.shape) == (1, 288, 360, 3) and (over - photo).abs().amax() > 0.2
    with pytest.raises(ValueError, match=r"Draw Landmarks.*'images'"):
        draw.execute(reference_lm, "mesh", 2, images=photo.repeat(3, 1, 1, 1))


def test_streamed_video_node_reports_a_bad_reference_itself(comfy, grid_still, reference_lm):
    """A reference whose landmarks are unusable fails in Landmark Warp Render → Video, not inside Save Video."""
    node = _node(comfy, "PTalkLandmarkWarpRenderVideo")
    seq, _ = _a2l(comfy, reference_lm, np.zeros((1, 8000), np.float32), 16000)
    broken = reference_lm.with_points(np.full_like(reference_lm.points, np.nan))
    image = torch.from_numpy(grid_still)[None].float() / 255
    with pytest.raises(ValueError, match=r"Landmark Warp Render → Video.*'reference_landmarks'"):
        node.execute(image, seq, "cavity_and_teeth", True, reference_landmarks=broken)
