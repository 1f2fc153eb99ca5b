"""Silence in dubbing (issue 14 item 4): where Silero VAD finds no speech in the new audio, the dubbed mouth rests
closed in the speaker's own closed-mouth shape and does not chatter on breath or noise.

Real media: the source is GRID lbax4n (its detected landmarks); the new speech is GRID lwbsza's audio with 1.2 s of
low-level noise (-46 dBFS white noise, generated) inserted between its words, generated noise alone, "breath"-like
noise bursts, and the real noisy recordings of audio/multilingual/. Measured when written (lbax4n source, inner-lip
aperture in IOD units, the source's rest aperture 0.0043): in non-speech frames, neural backend, VAD off vs on —
speech + inserted noise: mean 0.082 vs 0.0068 (max 0.151 vs 0.048, the one ramp frame next to speech); noise only
(-40 dBFS): mean 0.092 vs 0.0043 (= rest); office noise (0 dB SNR), its 22 non-speech frames: mean 0.039 vs 0.0067.
The phoneme backend already keeps the mouth nearly shut there (max 0.016 off vs 0.008 on)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

PHONEMES = "phonemes (pocketsphinx)"
NEURAL = "neural (log-mel VAE)"


@pytest.fixture(scope="module")
def source(shared_data):
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import read_video

    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    return detect_landmarks(frames, fps=fps, on_missing="keep")


@pytest.fixture(scope="module")
def speech_with_gap(shared_data):
    """lwbsza's speech (mono) with 1.2 s of -46 dBFS white noise inserted at its middle: (wav [1, N], sr, gap s)."""
    from portraittalk.ptalk_models.media import read_audio

    wav, sr = read_audio(shared_data / "video" / "lwbsza.mpg")
    mono = wav.mean(0)
    half = len(mono) // 2
    gap = np.random.default_rng(0).normal(0, 0.005, int(1.2 * sr)).astype(np.float32)
    return np.concatenate([mono[:half], gap, mono[half:]])[None], sr, (half / sr, half / sr + 1.2)


def _noise(seconds, level, sr=16000, seed=1):
    return np.random.default_rng(seed).normal(0, level, int(seconds * sr)).astype(np.float32)[None]


def test_vad_on_real_speech_and_noise(shared_data, speech_with_gap):
    """Silero VAD (ONNX via onnxruntime) finds GRID's one sentence, the inserted gap, and nothing in noise or
    breath-like bursts; torch's thread setting survives its import."""
    from portraittalk.ptalk_models.media import read_audio
    from portraittalk.ptalk_models.vad import segments_to_frames, speech_segments

    threads = torch.get_num_threads()
    wav, sr = read_audio(shared_data / "video" / "lbax4n.mpg")
    seg = speech_segments(wav, sr)
    assert torch.get_num_threads() == threads
    assert len(seg) == 1 and 0.2 < seg[0][0] < 0.6 and 1.9 < seg[0][1] < 2.6, seg  # speech 0.4-2.2 s
    wav2, sr2, (g0, g1) = speech_with_gap
    seg2 = speech_segments(wav2, sr2)
    # silence from ~0.3 s into the gap (Silero hangs on for its 200 ms minimum pause plus 80 ms padding) to its end
    assert len(seg2) >= 2 and not any(a < g1 - 0.1 and b > g0 + 0.3 for a, b in seg2), (seg2, g0, g1)
    for level in (0.003, 0.01, 0.03):
        assert speech_segments(_noise(3.0, level), 16000) == [], level
    bursts = np.zeros((1, 48000), np.float32)  # 0.3 s noise bursts every 0.8 s, -30 dBFS: breaths
    for k in range(4):
        bursts[0, int((0.2 + 0.8 * k) * 16000):int((0.5 + 0.8 * k) * 16000)] = _noise(0.3, 0.03, seed=k)[0]
    assert speech_segments(bursts, 16000) == []
    assert segments_to_frames([(0.1, 0.22)], 25.0, 10).tolist() == [False, False, True, True, True, True] + [False] * 4
    from portraittalk.ptalk_models.errors import InputError
    with pytest.raises(InputError) as e:
        speech_segments(wav, sr, threshold=1.5)
    assert e.value.argument == "threshold"


def _rest_aperture(src):
    from portraittalk.ptalk_models.dubbing import closed_mouth_frame, smooth_landmarks
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture

    s = smooth_landmarks(src, 1.0)
    return float(inner_lip_aperture(s.frame(closed_mouth_frame(s)))[0])


@pytest.mark.parametrize("backend", [PHONEMES, NEURAL])
def test_mouth_rests_closed_in_silence(source, speech_with_gap, backend):
    """Planned (target) inner-lip aperture: in every frame the VAD calls silence and not next to speech (mouth gain
    0) the mouth is exactly the speaker's rest shape (the source's closed-mouth frame); speech frames still open.
    With the neural backend, which opens the mouth on noise, VAD off chatters (measured in the docstring)."""
    from portraittalk.ptalk_models.dubbing import plan_dub, silence_gain
    from portraittalk.ptalk_models.errors import InputError
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture

    wav, sr, _ = speech_with_gap
    try:
        on = plan_dub(source, wav, sr, "ping-pong", backend=backend)
    except InputError as e:  # the neural backend's weights are not part of every checkout
        pytest.skip(f"{backend}: {e}")
    off = plan_dub(source, wav, sr, "ping-pong", backend=backend, vad=False)
    assert off.speech is None and on.speech is not None and len(on.speech) == len(on)
    rest = _rest_aperture(source)
    ap_on, ap_off = inner_lip_aperture(on.target), inner_lip_aperture(off.target)
    still = silence_gain(on.speech, on.fps) == 0
    assert still.sum() >= 25, still.sum()  # the 1.2 s gap and the clip's own leading/trailing silence
    assert np.abs(ap_on[still] - rest).max() < 2e-3, (ap_on[still].max(), rest)
    assert ap_on[on.speech].mean() > 0.05 and ap_on[on.speech].max() > 0.15
    silent = ~on.speech
    assert ap_on[silent].mean() <= ap_off[silent].mean() + 1e-6
    if backend == NEURAL:
        assert ap_off[silent].mean() > 0.03 and ap_on[silent].mean() < 0.012, (ap_off[silent].mean(),
                                                                              ap_on[silent].mean())


def test_noise_only_keeps_the_mouth_closed(source):
    """Noise alone (-40 dBFS, 3 s): no speech found, every planned frame rests, and the plan says why."""
    from portraittalk.ptalk_models.dubbing import plan_dub
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture

    plan = plan_dub(source, _noise(3.0, 0.01), 16000, "ping-pong")
    assert not plan.speech.any()
    assert np.abs(inner_lip_aperture(plan.target) - _rest_aperture(source)).max() < 1e-3
    assert any("no speech" in w for w in plan.warnings)


def test_dub_landmarks_node_close_in_silence(comfy, source, speech_with_gap):
    """Audio → Dub Landmarks (the registered node of the booted ComfyUI, called directly) with close_in_silence on
    and off; the new inputs come last in its schema, so saved workflows keep their widget positions."""
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubLandmarks"]
    wav, sr, _ = speech_with_gap
    audio = {"waveform": torch.from_numpy(wav)[None], "sample_rate": sr}
    plan = node.execute(source, audio, "hold", 1.0, True, 1.0, PHONEMES, "", close_in_silence=True,
                        vad_threshold=0.5).result[0]
    plan_off = node.execute(source, audio, "hold", 1.0, True, 1.0, PHONEMES, "", close_in_silence=False,
                            vad_threshold=0.5).result[0]
    assert plan.speech is not None and plan_off.speech is None
    assert inner_lip_aperture(plan.target)[~plan.speech].max() <= inner_lip_aperture(plan_off.target)[
        ~plan.speech].max() + 1e-6
    names = [i.id for i in node.GET_SCHEMA().inputs]
    assert names[-2:] == ["close_in_silence", "vad_threshold"]


def test_vad_writes_nothing_to_home(shared_data, tmp_path):
    """Voice-activity detection (Silero VAD on ONNX Runtime) in a fresh Python process with an empty ``$HOME``
    finds speech in a real recording and leaves ``$HOME`` empty: ONNX Runtime's telemetry store
    (``~/.cache/Microsoft/DeveloperTools/.onnxruntime``, written on import) is switched off
    (:mod:`ptalk_models.telemetry`)."""
    import os
    import subprocess
    import sys

    import ptalk_harness as harness

    home = tmp_path / "home"
    home.mkdir()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ptalk_harness\n"
            "from portraittalk.ptalk_models.media import read_audio\n"
            "from portraittalk.ptalk_models.vad import speech_segments\n"
            "wav, sr = read_audio(sys.argv[2]); print(len(speech_segments(wav, sr)))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", code, str(harness.REPO_ROOT / "harness"),
                          str(shared_data / "audio" / "jfk.flac")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) >= 1, out.stdout
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
