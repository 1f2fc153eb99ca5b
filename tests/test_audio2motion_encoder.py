"""Neural audio→motion on core ComfyUI's AUDIO_ENCODER_OUTPUT (issue 13 item 2): the trainer's ``--audio-encoder``
(``ptalk_harness.audio2motion_encoder``) and Audio → Landmarks fed by core Load Audio Encoder → Audio Encoder Encode,
run by the real ComfyUI executor.

No real wav2vec2/whisper weights exist here (and nothing may be downloaded), so the encoder is a wav2vec2 BASE of
ComfyUI's own architecture and key layout with random weights (``write_random_wav2vec2``: 94.4 M parameters, 189 MB
fp16, ~1.5 s to write), written once per module: base is the smallest configuration ComfyUI's loader accepts (it
only knows wav2vec2 base 768 / large 1024 and whisper large v3). Its features carry no speech knowledge, so these
tests check the plumbing (training records the encoder's features, the node uses exactly the node's features,
errors), not lip-sync quality. Speech and faces are real: the prepared audio→motion clips (``a2m_cache``),
jfk.flac, astronaut.png.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

import ptalk_harness as harness
from portraittalk.nodes.glue.folders import AUDIO2MOTION_FOLDER, EMBEDDED_AUDIO2MOTION, audio2motion_options
from portraittalk.nodes.glue.preview import UI_KEY
from portraittalk.ptalk_models.audio import n_video_frames
from portraittalk.ptalk_models.audio2landmarks import NeuralBackend
from portraittalk.ptalk_models.audio2motion import load_audio2motion
from portraittalk.ptalk_models.media import write_wav
from portraittalk.ptalk_models.preview import payload_points
from ptalk_harness.audio2motion_encoder import AudioEncoderError, load_encoder, write_random_wav2vec2

ENCODER = "ptalk_random_wav2vec2_base.safetensors"
TRAINED = "ptalk_test_wav2vec2.safetensors"
NEURAL = NeuralBackend.name
FPS = 25.0


# ------------------------------------------------------------------------------------------ fixtures
def _register(comfy, folder: str, path) -> None:
    comfy.folder_paths.add_model_folder_path(folder, str(path))


def _unregister(comfy, folder: str, path) -> None:
    paths = comfy.folder_paths.folder_names_and_paths[folder][0]
    if str(path) in paths:
        paths.remove(str(path))


@pytest.fixture(scope="module")
def encoder_file(comfy, tmp_path_factory):
    """The random wav2vec2-base file in a temporary folder registered as ComfyUI ``audio_encoders``."""
    d = tmp_path_factory.mktemp("audio_encoders")
    t0 = time.perf_counter()
    path = write_random_wav2vec2(d / ENCODER, size="base", seed=0)
    print(f"random wav2vec2-base: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")
    _register(comfy, "audio_encoders", d)
    yield path
    _unregister(comfy, "audio_encoders", d)


@pytest.fixture(scope="module")
def encoder(encoder_file):
    return load_encoder(encoder_file)


@pytest.fixture(scope="module")
def trained(comfy, a2m_cache, encoder_file, tmp_path_factory):
    """A tiny model trained on the encoder's features of 6 real clips (10 steps), copied into a temporary
    ``models/audio2motion`` registered with ComfyUI: ``dict(path, summary, seconds)``."""
    from ptalk_harness import train_audio2motion

    out = tmp_path_factory.mktemp("a2m_w2v_run")
    t0 = time.perf_counter()
    rc = train_audio2motion.main(["--cache", str(a2m_cache), "--out", str(out), "--audio-encoder", str(encoder_file),
                                  "--channels", "32", "--steps", "10", "--limit", "6", "--no-heldout",
                                  "--batch", "8", "--log-every", "5", "--save-every", "10"])
    seconds = time.perf_counter() - t0
    assert rc == 0
    audio2motion_options()  # registers models/audio2motion (*.safetensors) before the temporary folder is added
    d = tmp_path_factory.mktemp("audio2motion")
    shutil.copyfile(out / "audio2motion.safetensors", d / TRAINED)
    _register(comfy, AUDIO2MOTION_FOLDER, d)
    yield {"path": d / TRAINED, "out": out, "seconds": seconds}
    _unregister(comfy, AUDIO2MOTION_FOLDER, d)


@pytest.fixture(scope="module")
def speech(jfk, tmp_path_factory):
    """4 s of jfk.flac (44.1 kHz stereo, as the file is) as a WAV staged in ComfyUI's input folder:
    ``(input name, samples, sample rate, float32 [2, N])``."""
    wav, sr = jfk
    x = wav[:, int(0.3 * sr): int(4.3 * sr)]
    path = write_wav(tmp_path_factory.mktemp("speech") / "jfk_4s.wav", x, sr)
    return harness.stage_input_file(path), x.shape[1], sr, x


@pytest.fixture(scope="module")
def portrait(comfy, shared_data):
    return harness.stage_input_file(shared_data / "photos" / "astronaut.png")


def landmarks_prompt(portrait: str, speech: str, neural_model: str, seed: int = 7, features: bool = True,
                     feature_speech: str | None = None) -> dict:
    """LoadImage → Face Landmarks ─┐
    LoadAudio ─────────────────── Audio → Landmarks (neural) → PreviewAny (an output, so the node runs)
    Load Audio Encoder → Audio Encoder Encode (of ``feature_speech``, default the same speech) ─┘ audio_features"""
    p = {
        "1": {"class_type": "LoadImage", "inputs": {"image": portrait}},
        "2": {"class_type": "PTalkFaceLandmarks", "inputs": {"image": ["1", 0], "model": "auto", "face": "largest",
                                                             "face_index": 0, "on_missing": "error", "fps": 0.0,
                                                             "min_confidence": 0.5}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": speech}},
        "6": {"class_type": "PTalkAudioToLandmarks", "inputs": {
            "audio": ["3", 0], "reference": ["2", 0], "backend": NEURAL, "fps": FPS, "seed": seed,
            "expressiveness": 1.0, "blink": True, "head_motion": True, "transcript": "",
            "neural_model": neural_model}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}},
    }
    if features:
        p["4"] = {"class_type": "AudioEncoderLoader", "inputs": {"audio_encoder_name": ENCODER}}
        audio = ["3", 0]
        if feature_speech is not None:
            p["8"] = {"class_type": "LoadAudio", "inputs": {"audio": feature_speech}}
            audio = ["8", 0]
        p["5"] = {"class_type": "AudioEncoderEncode", "inputs": {"audio_encoder": ["4", 0], "audio": audio}}
        p["6"]["inputs"]["audio_features"] = ["5", 0]
    return p


def run_landmarks(prompt: dict) -> tuple[int, np.ndarray]:
    """Run the prompt with the real executor → (frames, pixel points ``[T, 478, 2]``) of Audio → Landmarks' preview
    (the in-node player's payload: the landmark sequence, quantised)."""
    res = harness.run_prompt(prompt)
    payload = res["outputs"]["6"][UI_KEY][0]
    return payload["frames"], payload_points(payload)


# ------------------------------------------------------------------------------------------ the encoder
def test_encoder_features_are_exactly_the_audio_encoder_encode_nodes(comfy, encoder, encoder_file, speech):
    """load_encoder uses ComfyUI's loader: same dim/rate as the loaded model, and encoder(audio) equals what core
    Load Audio Encoder → Audio Encoder Encode give for the same 16 kHz mono audio (bit for bit)."""
    from portraittalk.ptalk_models.audio import prepare_audio
    from portraittalk.ptalk_models.audio_features import encoder_features

    assert (encoder.kind, encoder.dim, encoder.rate) == ("wav2vec2", 768, 50.0)
    mono = prepare_audio(speech[3], speech[2]).samples            # 4 s of jfk → mono 16 kHz
    feats, rate = encoder(mono)
    assert feats.dtype == np.float32 and feats.shape == ((len(mono) - 400) // 320 + 1, 768)  # wav2vec2's convs: 400-sample frames, hop 320
    assert rate == pytest.approx(50.0, rel=0.01) and np.isfinite(feats).all()

    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    model = nodes["AudioEncoderLoader"].execute(encoder_file.name)[0]
    out = nodes["AudioEncoderEncode"].execute(model, {"waveform": torch.from_numpy(mono)[None, None],
                                                      "sample_rate": 16000})[0]
    node_feats, node_rate = encoder_features(out)
    np.testing.assert_array_equal(node_feats, feats)
    assert node_rate == rate


def test_files_that_are_not_audio_encoders_are_clear_errors(comfy, encoder_file, tmp_path):
    from safetensors.torch import load_file, save_file

    from portraittalk.ptalk_models.audio2motion import EMBEDDED_WEIGHTS

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "none.safetensors")
    # the pack's own audio→motion model put into models/audio_encoders by mistake
    with pytest.raises(AudioEncoderError, match=r"audio2motion_logmel.safetensors is not an audio encoder .*"
                                                r"wav2vec2 base/large or whisper large v3"):
        load_encoder(EMBEDDED_WEIGHTS)
    sd = load_file(encoder_file)
    save_file({k: v for k, v in sd.items() if not k.startswith("encoder.layers.3.")}, tmp_path / "partial.safetensors")
    with pytest.raises(AudioEncoderError, match=r"partial.safetensors lacks 16 of the 211 weights .*encoder.layers.3"):
        load_encoder(tmp_path / "partial.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(encoder_file.read_bytes()[:1 << 20])
    with pytest.raises(AudioEncoderError, match="cut.safetensors cannot be read as a weights file"):
        load_encoder(tmp_path / "cut.safetensors")


# ------------------------------------------------------------------------------------------ training
def test_training_on_encoder_features_records_them(trained, encoder):
    """train_audio2motion --audio-encoder: a model whose config says it reads this encoder's features."""
    model = load_audio2motion(trained["path"])
    c = model.config
    assert (c.feature_kind, c.feature_dim, c.feature_rate) == ("audio-encoder", encoder.dim, encoder.rate)
    assert c.stride == 2 and c.channels == 32
    assert model.feat_mean.shape == (768,) and bool(torch.isfinite(model.feat_mean).all())
    assert model.metadata["trained_steps"] == "10"
    print(f"training (6 clips, 10 steps, incl. encoding): {trained['seconds']:.1f} s")


# ------------------------------------------------------------------------------------------ in ComfyUI
def test_comfyui_graph_with_audio_encoder_features(comfy, trained, portrait, speech, tmp_path):
    """Load Audio Encoder → Audio Encoder Encode → Audio → Landmarks (neural, the trained file) in the real executor:
    one landmark frame per 1/25 s of speech, the same for the same seed, different for another seed, and different
    when the features come from other audio (so the model reads them)."""
    name, n, sr, _ = speech
    assert TRAINED in audio2motion_options()
    T = n_video_frames(n, sr, FPS)
    frames, a = run_landmarks(landmarks_prompt(portrait, name, TRAINED, seed=7))
    assert frames == T == 100 and a.shape == (T, 478, 2)
    _, b = run_landmarks(landmarks_prompt(portrait, name, TRAINED, seed=7))
    np.testing.assert_array_equal(a, b)
    _, c = run_landmarks(landmarks_prompt(portrait, name, TRAINED, seed=8))
    assert np.abs(a - c).max() > 0.5

    silent = harness.stage_input_file(write_wav(tmp_path / "silence_4s.wav",
                                                np.zeros((2, n), np.float32), sr))
    _, d = run_landmarks(landmarks_prompt(portrait, name, TRAINED, seed=7, feature_speech=silent))
    assert np.abs(a - d).max() > 0.1


def test_encoder_model_without_audio_features_names_the_input(comfy, trained, portrait, speech):
    with pytest.raises(harness.PromptExecutionError) as e:
        harness.run_prompt(landmarks_prompt(portrait, speech[0], TRAINED, features=False))
    msg = str(e.value)
    assert "Audio → Landmarks" in msg and "input 'audio_features'" in msg, msg
    assert "audio-encoder features (768 channels at 50 Hz)" in msg and "Audio Encoder Encode" in msg, msg


def test_features_of_another_encoder_width_are_a_clear_error(comfy, trained, encoder, speech, astronaut_lm):
    """An AUDIO_ENCODER_OUTPUT 1024 channels wide (wav2vec2 large's width; built from the real node output rather
    than from a 631 MB random wav2vec2-large) into the 768-channel model → the node names audio_features."""
    from portraittalk.ptalk_models.audio import prepare_audio

    _, n, sr, x = speech
    out = encoder.encode(prepare_audio(x, sr).samples)
    enc = out["encoded_audio"]
    wide = dict(out, encoded_audio=torch.cat([enc, enc[..., :256]], dim=-1))
    audio = {"waveform": torch.from_numpy(x)[None], "sample_rate": sr}
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkAudioToLandmarks"]
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Audio → Landmarks\] input 'audio_features': the features "
                                         r"have 1024 channels at 49\.\d Hz; the model was trained on 768 channels at "
                                         r"50 Hz"):
        node.execute(audio, astronaut_lm, NEURAL, FPS, 0, 1.0, True, True, "", TRAINED, wide)
    lm = node.execute(audio, astronaut_lm, NEURAL, FPS, 0, 1.0, True, True, "", TRAINED, out)[0]
    assert len(lm) == n_video_frames(n, sr, FPS) and lm.meta["features"] == "audio-encoder"


def test_embedded_log_mel_model_ignores_audio_features(comfy, encoder_file, portrait, speech):
    name, n, sr, _ = speech
    frames, a = run_landmarks(landmarks_prompt(portrait, name, EMBEDDED_AUDIO2MOTION, seed=3))
    assert frames == n_video_frames(n, sr, FPS)
    frames_b, b = run_landmarks(landmarks_prompt(portrait, name, EMBEDDED_AUDIO2MOTION, seed=3, features=False))
    assert frames_b == frames
    np.testing.assert_array_equal(a, b)
