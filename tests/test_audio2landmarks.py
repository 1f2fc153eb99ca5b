"""Audio -> Landmarks engine (ptalk_models.audio / phonemes / visemes / motion / audio2landmarks).

Real components only: pocketsphinx with its bundled en-us models, soxr, MediaPipe FaceLandmarker on a real
photo for the reference face, real speech from the shared media directory.
"""
from __future__ import annotations

import numpy as np
import pytest

from portraittalk.ptalk_models import landmarks as L
from portraittalk.ptalk_models.audio import (band_log_energy, n_video_frames, prepare_audio, rms_dbfs,
                                to_mono_16k)
from portraittalk.ptalk_models.audio2landmarks import BACKENDS, generate_landmarks
from portraittalk.ptalk_models.media import read_audio, read_video
from portraittalk.ptalk_models.metrics import lag_correlations
from portraittalk.ptalk_models.phonemes import SILENCE, normalize_transcript, phones_from_audio
from portraittalk.ptalk_models.visemes import mouth_parameters, viseme_curves

BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
FPS = 25.0


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def reference(astronaut_lm):
    """MediaPipe landmarks of the astronaut photo (smiling, lips parted: inner-lip aperture ~0.1 IOD)."""
    assert astronaut_lm.present[0]
    return astronaut_lm


def eye_openness(lm: L.FaceLandmarks) -> np.ndarray:
    px = lm.pixels()
    gap = np.linalg.norm(px[:, L.RIGHT_EYE_TOP] - px[:, L.RIGHT_EYE_BOTTOM], axis=-1)
    gap += np.linalg.norm(px[:, L.LEFT_EYE_TOP] - px[:, L.LEFT_EYE_BOTTOM], axis=-1)
    return gap / 2 / L.inter_ocular_px(px)


# ------------------------------------------------------------------------------------------ audio
def test_to_mono_16k_mixes_resamples_and_reports_nonfinite(jfk):
    x, sr = jfk
    assert x.shape[0] == 2 and sr == 44100
    mono = to_mono_16k(x, sr)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - x.shape[1] * 16000 / sr) <= 2
    # opposite-phase channels cancel in the mean
    assert np.abs(to_mono_16k(np.stack([x[0], -x[0]]), sr)).max() < 1e-6
    bad = x.copy()
    bad[0, 1000:1100] = np.nan
    bad[1, 5000] = np.inf
    p = prepare_audio(bad, sr)
    assert p.n_nonfinite == 101 and np.isfinite(p.samples).all()
    for args, msg in [((np.zeros((1, 0), np.float32), 16000), "empty"), ((x, 0), "sample_rate"),
                      ((x, -8000), "sample_rate"), ((x.T, sr), "transpose")]:
        with pytest.raises(ValueError, match=msg):
            to_mono_16k(*args)


def test_n_video_frames_rounds_half_up():
    assert n_video_frames(1600, 16000, 25) == 3        # 0.1 s * 25 = 2.5 -> 3 (not banker's 2)
    assert n_video_frames(4410, 44100, 25) == 3
    assert n_video_frames(10, 16000, 25) == 1          # at least one frame
    assert n_video_frames(160000, 16000, 25) == 250
    assert n_video_frames(160000, 16000, 29.97) == 300  # 299.7 -> 300


def test_band_log_energy_selects_the_speech_band():
    sr, fps = 16000, 25.0
    t = np.arange(sr) / sr
    inside = 0.5 * np.sin(2 * np.pi * 1000 * t)
    outside = 0.5 * np.sin(2 * np.pi * 60 * t)
    e_in = band_log_energy(inside, sr, fps, 25)
    e_out = band_log_energy(outside, sr, fps, 25)
    assert e_in.shape == (25,) and e_in.dtype == np.float32
    assert np.median(e_in) - np.median(e_out) > 30.0
    assert (band_log_energy(np.zeros(sr), sr, fps, 25) == -120.0).all()
    # frame-centred windows: a burst in frames 10-14 only raises those frames (+- the window overlap)
    burst = np.zeros(sr)
    burst[int(0.4 * sr):int(0.6 * sr)] = inside[:int(0.2 * sr)]
    e = band_log_energy(burst, sr, fps, 25)
    assert (e[10:15] > e.max() - 3).all() and (e[:8] == -120).all() and (e[17:] == -120).all()
    # loudness: a full-scale sine is about -3 dB
    assert abs(float(np.median(rms_dbfs(2 * inside, sr, fps, 25))) + 3.0) < 0.2


# ------------------------------------------------------------------------------------------ frame count
@pytest.mark.parametrize("case", ["jfk_44k_stereo", "beckett_16k_mono", "beckett_8k_mono", "jfk_48k_stereo",
                                  "beckett_0.1s"])
def test_frame_count_matches_audio_duration(case, jfk, beckett, reference):
    import soxr

    if case == "jfk_44k_stereo":
        x, sr = jfk
    elif case == "beckett_16k_mono":
        x, sr = beckett
    elif case == "beckett_8k_mono":
        x, sr = soxr.resample(beckett[0][0], beckett[1], 8000)[None], 8000
    elif case == "jfk_48k_stereo":
        x, sr = soxr.resample(jfk[0].T, jfk[1], 48000).T.copy(), 48000
    else:
        x, sr = beckett[0][:, :1600], 16000
    duration = x.shape[-1] / sr
    lm = generate_landmarks(x, sr, reference, fps=FPS, seed=1)
    expected = max(1, int(np.floor(duration * FPS + 0.5)))
    assert len(lm) == expected
    if case == "beckett_0.1s":
        assert len(lm) == 3
    assert lm.image_size == reference.image_size and lm.fps == FPS and lm.present.all()
    assert np.isfinite(lm.points).all()
    assert lm.meta["backend"] == next(iter(BACKENDS))
    segs = lm.meta["phone_segments"]
    assert segs[0][1] == 0.0 and abs(segs[-1][2] - duration) < 0.01
    assert all(abs(a[2] - b[1]) < 1e-6 for a, b in zip(segs, segs[1:]))   # contiguous cover


@pytest.mark.parametrize("fps", [12.5, 29.97, 60.0])
def test_other_frame_rates(fps, beckett, reference):
    x, sr = beckett
    clip = x[:, :int(2.5 * sr)]
    lm = generate_landmarks(clip, sr, reference, fps=fps)
    assert len(lm) == int(np.floor(2.5 * fps + 0.5)) and lm.fps == fps
    assert np.isfinite(lm.points).all()


# ------------------------------------------------------------------------------------------ lip sync
@pytest.mark.parametrize("clip,text", [("jfk", ""), ("beckett", ""), ("beckett", BECKETT_TEXT)])
def test_aperture_follows_speech_energy_without_lag(clip, text, jfk, beckett, reference):
    x, sr = {"jfk": jfk, "beckett": beckett}[clip]
    lm = generate_landmarks(x, sr, reference, fps=FPS, seed=0, transcript=text)
    aperture = L.inner_lip_aperture(lm)
    energy = band_log_energy(x.mean(axis=0), sr, FPS, len(lm))   # original rate, independent of the engine
    c = lag_correlations(aperture, energy, max_lag=6)   # aperture[t] vs energy[t - lag]
    best = max(c, key=c.get)
    assert abs(best) <= 1, c
    assert c[0] > 0.4, c
    # it really opens and closes
    assert aperture.max() > 0.15 and np.percentile(aperture, 10) < 0.02


def test_generated_mouth_matches_real_video_of_the_same_speech(shared_data, grid_still_lm):
    """GRID clip lbax4n: audio -> landmarks on the speaker's own still vs. MediaPipe on the real video."""
    from portraittalk.ptalk_models.face import detect_landmarks

    path = shared_data / "video" / "lbax4n.mpg"
    frames, _ = read_video(path)
    x, sr = read_audio(path)
    real = L.inner_lip_aperture(detect_landmarks(frames, fps=FPS))
    gen = L.inner_lip_aperture(generate_landmarks(x, sr, grid_still_lm, fps=FPS,
                                                  transcript="lay blue at x four now"))
    n = min(len(real), len(gen))
    c = lag_correlations(gen[:n], real[:n], max_lag=6)
    assert abs(max(c, key=c.get)) <= 1, c
    assert c[0] > 0.5, c


# ------------------------------------------------------------------------------------------ silence / NaN
@pytest.mark.parametrize("kind", ["zeros", "noise_-70dB", "steady_noise_-40dB"])
def test_silence_and_noise_keep_the_mouth_closed(kind, reference):
    sr = 16000
    rng = np.random.default_rng(7)
    x = {"zeros": np.zeros(2 * sr),
         "noise_-70dB": rng.standard_normal(2 * sr) * 10 ** (-70 / 20),
         "steady_noise_-40dB": rng.standard_normal(2 * sr) * 10 ** (-40 / 20)}[kind].astype(np.float32)
    lm = generate_landmarks(x, sr, reference, fps=FPS, seed=3)
    assert len(lm) == 50
    # the reference's parted lips (~0.1 IOD) close and stay closed
    assert L.inner_lip_aperture(reference)[0] > 0.05
    assert L.inner_lip_aperture(lm).max() < 0.01


def test_nan_samples_are_silence_and_reported(beckett, reference):
    x, sr = beckett
    x = x.copy()
    x[0, 3 * sr:int(4.5 * sr)] = np.nan    # "no matter" region
    x[0, 100] = np.inf
    lm = generate_landmarks(x, sr, reference, fps=FPS, seed=0)
    assert len(lm) == n_video_frames(x.shape[1], sr, FPS) and np.isfinite(lm.points).all()
    assert lm.meta["nonfinite_samples"] == int(1.5 * sr) + 1
    assert any("NaN" in w for w in lm.meta["warnings"])
    ap = L.inner_lip_aperture(lm)
    assert ap[int(3.3 * FPS):int(4.2 * FPS)].max() < 0.02     # treated as silence: mouth closed
    assert ap.max() > 0.15                                      # the rest still talks


# ------------------------------------------------------------------------------------------ transcripts
def test_empty_transcript_is_the_same_as_none(beckett, reference):
    x, sr = beckett
    a = generate_landmarks(x, sr, reference, seed=5)
    b = generate_landmarks(x, sr, reference, seed=5, transcript="")
    c = generate_landmarks(x, sr, reference, seed=5, transcript="  ... ")
    d = generate_landmarks(x, sr, reference, seed=5, transcript=None)
    assert a.meta["alignment_mode"] == "phone_recognition"
    for other in (b, c, d):
        assert np.array_equal(a.points, other.points)
        assert other.meta["alignment_mode"] == "phone_recognition"


def test_forced_alignment_of_beckett_has_plausible_timing(beckett):
    x, sr = beckett
    mono = to_mono_16k(x, sr)
    res = phones_from_audio(mono, BECKETT_TEXT)
    assert res.mode == "forced_alignment" and not res.dropped_words
    assert [w for w, _, _ in res.words] == normalize_transcript(BECKETT_TEXT)
    # audio level on a 10 ms grid, to check the alignment against the signal itself
    n = int(len(mono) / 160)
    level = rms_dbfs(mono, 16000, 100.0, n)
    ref = np.percentile(level, 95)
    onset = np.argmax(level > ref - 20) / 100.0          # first clearly audible sound
    first_speech = min(s for p, s, _ in res.segments if p != SILENCE)
    assert onset - 0.12 <= first_speech <= onset + 0.12, (onset, first_speech)
    # every word holds loud audio; every long pause of the alignment is quiet
    for w, s, e in res.words:
        assert level[int(s * 100):int(e * 100)].max() > ref - 12, (w, s, e)
    pauses = [(s, e) for p, s, e in res.segments if p == SILENCE and e - s > 0.3 and s > 0.5]
    assert len(pauses) >= 5                               # between the six two-word sentences
    for s, e in pauses:
        assert np.median(level[int(s * 100) + 5:int(e * 100) - 5]) < ref - 18, (s, e)
    # phone recognition (no transcript) sees speech in the same places
    rec = phones_from_audio(mono, "")
    assert rec.mode == "phone_recognition"
    speech_a = np.zeros(n, bool)
    speech_r = np.zeros(n, bool)
    for segs, mask in ((res.segments, speech_a), (rec.segments, speech_r)):
        for p, s, e in segs:
            if p != SILENCE:
                mask[int(s * 100):int(e * 100)] = True
    assert (speech_a == speech_r).mean() > 0.8


def test_unknown_words_are_dropped_and_impossible_alignment_falls_back(beckett):
    x, sr = beckett
    mono = to_mono_16k(x, sr)
    res = phones_from_audio(mono, "Ever tried, zorblax! Ever failed. No matter. Try again. Fail again. Fail better.")
    assert res.mode == "forced_alignment" and res.dropped_words == ["zorblax"]
    assert any("zorblax" in w for w in res.warnings)
    short = phones_from_audio(mono[:8000], BECKETT_TEXT + " " + BECKETT_TEXT)   # 0.5 s, 24 words
    assert short.mode == "phone_recognition"
    assert any("fell back" in w for w in short.warnings)


# ------------------------------------------------------------------------------------------ coarticulation
def test_coarticulation_is_symmetric_and_closes_for_bilabials():
    segs = [("SIL", 0.0, 1.0), ("AA", 1.0, 1.4), ("SIL", 1.4, 2.4)]
    c = viseme_curves(segs, 60, FPS)[:, 0]
    # vowel centred at 1.2 s = between frames 29 and 30 (frame k is centred at (k + 0.5) / fps)
    assert set(np.argsort(c)[-2:]) == {29, 30}
    np.testing.assert_allclose(c[15:30], c[44:29:-1], atol=1e-6)   # symmetric: no lag
    vmv = [("SIL", 0.0, 1.0), ("AA", 1.0, 1.3), ("M", 1.3, 1.38), ("AA", 1.38, 1.7), ("SIL", 1.7, 2.4)]
    v = viseme_curves(vmv, 60, FPS)
    k = int(1.34 * FPS)
    assert v[k, 0] < 0.2 * v[:, 0].max() and v[k, 3] > 0.5      # lips closed and pressed for /m/


def test_loudness_gate_closes_the_mouth_whatever_the_phones_say(beckett):
    """Phones claiming an open vowel over silence / faint noise must not open the mouth."""
    x, sr = beckett
    speech = to_mono_16k(x, sr)[:2 * 16000]
    rng = np.random.default_rng(1)
    segs = [("AA", 0.0, 2.0)]
    for audio in (np.zeros(2 * 16000), rng.standard_normal(2 * 16000) * 10 ** (-70 / 20)):
        mc = mouth_parameters(segs, audio, 50, FPS)
        assert np.abs(mc.params).max() < 1e-3
    loud = mouth_parameters(segs, speech, 50, FPS)
    assert loud.params[:, 0].max() > 0.3     # the same phones over real speech do open it


# ------------------------------------------------------------------------------------------ seeds, options
def test_seed_controls_blinks_and_head_but_not_the_mouth(beckett, reference):
    x, sr = beckett
    a = generate_landmarks(x, sr, reference, seed=11)
    b = generate_landmarks(x, sr, reference, seed=11)
    c = generate_landmarks(x, sr, reference, seed=12)
    assert np.array_equal(a.points, b.points)
    assert not np.allclose(a.points, c.points)
    assert a.meta["mouth_params"] == c.meta["mouth_params"]
    # blinks: eyes close fully at some frames, at different times for different seeds
    ea, ec = eye_openness(a), eye_openness(c)
    e0 = eye_openness(reference)[0]
    assert ea.min() < 0.15 * e0 and ec.min() < 0.15 * e0
    assert not np.array_equal(ea < 0.5 * e0, ec < 0.5 * e0)
    # without blinks and head motion the seed changes nothing
    d = generate_landmarks(x, sr, reference, seed=11, blink=False, head_motion=False)
    e = generate_landmarks(x, sr, reference, seed=12, blink=False, head_motion=False)
    assert np.array_equal(d.points, e.points)
    # head motion is small: nose tip moves a few pixels at most
    nose = a.pixels()[:, L.NOSE_TIP] - reference.pixels(0)[L.NOSE_TIP]
    iod = float(L.inter_ocular_px(reference.pixels(0)))
    assert 0.005 * iod < np.abs(nose).max() < 0.25 * iod


def test_expressiveness_scales_the_mouth(beckett, reference):
    x, sr = beckett
    kw = dict(seed=0, blink=False, head_motion=False)
    still = generate_landmarks(x, sr, reference, expressiveness=0.0, **kw)
    np.testing.assert_allclose(still.points, np.repeat(reference.points[:1], len(still), 0), atol=1e-6)
    one = L.inner_lip_aperture(generate_landmarks(x, sr, reference, expressiveness=1.0, **kw))
    two = L.inner_lip_aperture(generate_landmarks(x, sr, reference, expressiveness=2.0, **kw))
    # calibrated speech peaks around 0.2 IOD; 2x expressiveness doubles the deviation from the reference
    # (gap0 ~0.1 here: 0.1 + 2 * (0.2 - 0.1) = 0.3), soft-limited below 0.55 IOD
    gap0 = float(L.inner_lip_aperture(reference)[0])
    assert 0.15 < one.max() <= 0.36
    assert two.max() == pytest.approx(gap0 + 2 * (one.max() - gap0), abs=0.03)
    assert two.max() <= 0.55


def test_bad_arguments_raise_clear_errors(beckett, reference):
    x, sr = beckett
    for kwargs, msg in [(dict(expressiveness=3.0), "expressiveness"), (dict(fps=0), "fps"),
                        (dict(backend="nope"), "backend"), (dict(transcript=5), "transcript")]:
        with pytest.raises(ValueError, match=msg):
            generate_landmarks(x, sr, reference, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        generate_landmarks(np.zeros((2, 0), np.float32), sr, reference)
    with pytest.raises(ValueError, match="sample_rate"):
        generate_landmarks(x, 0, reference)
    absent = L.FaceLandmarks.from_points(reference.points, reference.image_size, present=[False])
    with pytest.raises(ValueError, match="no detected face"):
        generate_landmarks(x, sr, absent)


def test_errors_name_the_argument_and_reach_the_node_input(comfy, beckett, reference):
    """generate_landmarks raises InputErrors naming the rejected parameter; Audio → Landmarks reports each on the
    node input it came from (an fps within the node's widget range but passed past the engine's 240 fps reaches
    'fps', a faceless reference 'reference', an unusable waveform 'audio')."""
    import torch

    from portraittalk.ptalk_models.errors import InputError

    x, sr = beckett
    absent = L.FaceLandmarks.from_points(reference.points, reference.image_size, present=[False])
    for args, kwargs, argument in [((x, sr, reference), dict(fps=500.0), "fps"),
                                   ((x, sr, reference), dict(expressiveness="x"), "expressiveness"),
                                   ((x, sr, reference), dict(seed="x"), "seed"),
                                   ((x, sr, reference), dict(backend="nope"), "backend"),
                                   ((x, sr, reference), dict(transcript=5), "transcript"),
                                   ((x, sr, absent), {}, "reference"),
                                   ((x, sr, "face"), {}, "reference"),
                                   ((x, 0, reference), {}, "sample_rate"),
                                   ((x.T, sr, reference), {}, "waveform")]:
        with pytest.raises(InputError) as e:
            generate_landmarks(*args, **kwargs)
        assert e.value.argument == argument, (kwargs, str(e.value))

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkAudioToLandmarks"]
    audio = {"waveform": torch.from_numpy(np.ascontiguousarray(x, np.float32))[None], "sample_rate": sr}
    backend = next(iter(BACKENDS))
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Audio → Landmarks\] input 'fps': fps must be in"):
        node.execute(audio, reference, backend, 500.0, 0, 1.0, True, True, "")
    with pytest.raises(ValueError, match=r"input 'reference': reference frame 0 has no detected face"):
        node.execute(audio, absent, backend, 25.0, 0, 1.0, True, True, "")
    with pytest.raises(ValueError, match=r"input 'expressiveness': expressiveness must be in"):
        node.execute(audio, reference, backend, 25.0, 0, 3.0, True, True, "")
