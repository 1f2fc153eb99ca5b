"""The in-node player's data (``ptalk_models.preview``, ``nodes/glue/preview.py``) on real landmarks and speech.

Engine:
* the point encoding is exact (decode(encode(q)) == q, also for jumps up to the largest level) and the quantised
  points of a real Audio → Landmarks sequence (astronaut.png + jfk.flac) are within half a quantisation step of
  the landmarks, inside the preview window;
* the lip-sync curves match ``inner_lip_aperture`` and ``rms_dbfs`` within their one-byte step; absent frames and
  the mesh topology (the 1322 tessellation edges, the highlighted contours) come through;
* a real 10-minute sequence (15000 frames at 25 fps; jfk.flac and beckett.wav alternated) stays a small payload
  (printed; bound :data:`TEN_MINUTES_MAX_BYTES`);
* an ADFD report's per-frame curves come through within their step.

Nodes (in-process ComfyUI, real MediaPipe / pocketsphinx): Face Landmarks, Audio → Landmarks, Audio → Dub
Landmarks and ADFD Score return the preview as their UI output; the speech is a mono FLAC (44.1 kHz resampled to
24 kHz) and the backdrop a JPEG in ComfyUI's temp folder (the FLAC lasts as long as the speech, to a sample),
nothing is written anywhere else.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from portraittalk.nodes.glue.preview import UI_KEY
from portraittalk.ptalk_models import preview as P
from portraittalk.ptalk_models.audio import rms_dbfs
from portraittalk.ptalk_models.audio2landmarks import generate_landmarks
from portraittalk.ptalk_models.errors import InputError
from portraittalk.ptalk_models.landmarks import FaceLandmarks, inner_lip_aperture
from portraittalk.ptalk_models.metrics import evaluate
from portraittalk.ptalk_models.topology import tesselation_edges

FPS = 25.0
#: the payload of a 10-minute sequence stays below this (measured: see the printed figure)
TEN_MINUTES_MAX_BYTES = 3_000_000


@pytest.fixture(scope="module")
def talking(astronaut_lm, jfk):
    """Audio → Landmarks engine output for astronaut.png + jfk.flac at 25 fps (seed 0)."""
    wav, sr = jfk
    return generate_landmarks(wav, sr, astronaut_lm, fps=FPS, seed=0)


def _max_error_px(payload, lm) -> float:
    return float(np.abs(P.payload_points(payload) - lm.pixels()).max())


# ------------------------------------------------------------------------------------------------ engine
def test_point_encoding_is_exact():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (40, 478, 2)).astype(np.uint16)
    assert np.array_equal(P.decode_points(P.encode_points(q), 40), q)
    jumps = np.zeros((6, 3, 2), np.uint16)
    jumps[1::2] = P.MAX_LEVELS - 1  # 0 -> 16383 -> 0 ...: the largest deltas
    assert np.array_equal(P.decode_points(P.encode_points(jumps), 6, 3), jumps)
    with pytest.raises(ValueError, match="levels below"):
        P.encode_points(jumps + 1)
    with pytest.raises(ValueError, match="expected"):
        P.decode_points(P.encode_points(q), 41)


def test_quantised_points_within_half_a_step(talking, jfk):
    wav, sr = jfk
    payload = P.landmark_payload(talking, wav, sr, node="Audio → Landmarks")
    x0, y0, side = payload["box"]
    step = P.quantisation_step(payload["box"], payload["levels"])
    px = talking.pixels()
    assert px[..., 0].min() >= x0 and px[..., 1].min() >= y0
    assert px[..., 0].max() <= x0 + side and px[..., 1].max() <= y0 + side
    err = _max_error_px(payload, talking)
    print(f"\n[preview] {len(talking)} frames, window {side:.1f} px, step {step:.3f} px, max error {err:.4f} px, "
          f"payload {P.payload_size(payload)} bytes")
    assert err <= step / 2 + 1e-3
    assert step < 0.006 * (px[..., 1].max() - px[..., 1].min()) * 1.3  # ~0.5 % of the face height
    assert payload["frames"] == len(talking) and payload["fps"] == FPS and payload["present"] is None
    assert payload["duration"] == pytest.approx(wav.shape[1] / sr)
    # more levels: a proportionally smaller error
    fine = P.landmark_payload(talking, levels=4096)
    assert _max_error_px(fine, talking) <= P.quantisation_step(fine["box"], 4096) / 2 + 1e-3


def test_lip_sync_curves_match_the_engine(talking, jfk):
    wav, sr = jfk
    payload = P.landmark_payload(talking, wav, sr)
    curves = {c["name"]: c for c in payload["curves"]}
    mouth = P.decode_curve(curves["mouth"])
    ap = inner_lip_aperture(talking)
    lo, hi = P.MOUTH_RANGE
    assert ap.max() < hi, "the jfk sequence stays inside the mouth range"
    assert np.abs(mouth - ap).max() <= (hi - lo) / 508 + 1e-6
    loud = P.decode_curve(curves["loudness"])
    ref = np.clip(rms_dbfs(wav.mean(axis=0), sr, FPS, len(talking)), *P.LOUDNESS_RANGE)
    assert np.abs(loud - ref).max() <= (P.LOUDNESS_RANGE[1] - P.LOUDNESS_RANGE[0]) / 508 + 1e-4
    # the two curves tell the lip-sync story: louder frames, wider mouth
    assert np.corrcoef(mouth, loud)[0, 1] > 0.3
    # without audio: the mouth curve only
    assert [c["name"] for c in P.landmark_payload(talking)["curves"]] == ["mouth"]


def test_absent_frames_and_topology(astronaut_lm):
    pts = np.repeat(astronaut_lm.points, 5, axis=0)
    present = np.array([True, False, True, True, False])
    lm = FaceLandmarks.from_points(pts, astronaut_lm.image_size, fps=0.0, present=present)
    payload = P.landmark_payload(lm)
    flags = np.unpackbits(np.frombuffer(P._unb64(payload["present"]), np.uint8))[:5].astype(bool)
    assert np.array_equal(flags, present)
    edges = P.decode_u16(payload["topology"]["edges"]).reshape(-1, 2)
    assert edges.shape == (1322, 2) and np.array_equal(edges, tesselation_edges())
    contours = payload["topology"]["contours"]
    assert {"lips", "mouth", "eyes", "irises", "oval"} <= set(contours)
    assert all(0 <= i < 478 for cs in contours.values() for c in cs for i in c)
    with pytest.raises(InputError) as e:
        P.landmark_payload(lm, np.zeros(1600, np.float32), 16000)  # fps 0: no loudness per frame
    assert e.value.argument == "waveform"
    with pytest.raises(InputError):
        P.landmark_payload(None)


def _speech(shared_data, seconds: float, sr: int = 16000) -> np.ndarray:
    """float32 ``[N]`` at ``sr``: jfk.flac and beckett.wav alternated (mono, soxr) to ``seconds`` (as
    bench/bench_memory.py's 10-minute job)."""
    import soxr

    from portraittalk.ptalk_models.media import read_audio

    parts = []
    for name in ("jfk.flac", "beckett.wav"):
        wav, rate = read_audio(shared_data / "audio" / name)
        parts.append(soxr.resample(wav.mean(0), rate, sr).astype(np.float32))
    reps = int(np.ceil(seconds * sr / (len(parts[0]) + len(parts[1]))))
    return np.concatenate(parts * reps)[: int(seconds * sr)]


def test_ten_minutes_stay_a_small_payload(astronaut_lm, shared_data):
    """A real 10-minute Audio → Landmarks sequence (15000 frames: 36 s to generate on the 2-core machine)."""
    sr = 16000
    speech = _speech(shared_data, 600.0, sr)
    lm = generate_landmarks(speech, sr, astronaut_lm, fps=FPS, seed=0)
    assert len(lm) == 15000
    t0 = time.perf_counter()
    payload = P.landmark_payload(lm, speech, sr)
    seconds = time.perf_counter() - t0
    size = P.payload_size(payload)
    print(f"\n[preview] 10 min (15000 frames): {size} bytes ({size / 1e6:.2f} MB; points {len(payload['points'])}, "
          f"curves {sum(len(c['data']) for c in payload['curves'])}, topology {P.payload_size(payload['topology'])}) "
          f"built in {seconds:.1f} s")
    assert size < TEN_MINUTES_MAX_BYTES
    assert _max_error_px(payload, lm) <= P.quantisation_step(payload["box"]) / 2 + 1e-3


def test_adfd_report_curves(talking, jfk):
    wav, sr = jfk
    other = generate_landmarks(wav, sr, talking.frame(0), fps=FPS, seed=3)
    report = evaluate(talking, other, audio=(wav, sr), identity_backend=None)
    payload = P.report_curves(report, node="ADFD Score")
    assert payload["kind"] == "curves" and payload["frames"] == len(talking) and payload["fps"] == FPS
    labels = [lane["label"] for lane in payload["lanes"]]
    assert labels == ["spatial term", "motion term", "mouth LMD", "lip aperture", "audio energy"]  # no identity
    pf = report["per_frame"]
    for lane, keys in zip(payload["lanes"], [["spatial"], ["motion"], ["mouth_lmd_px"],
                                             ["aperture_generated", "aperture_ground_truth"], ["audio_energy_db"]]):
        for entry, key in zip(lane["series"], keys):
            want = np.array([np.nan if v is None else v for v in pf[key]], np.float64)
            got = P.decode_curve(entry)
            assert np.array_equal(np.isnan(got), np.isnan(want)), key
            ok = ~np.isnan(want)
            assert np.abs(got[ok] - np.clip(want[ok], lane["lo"], lane["hi"])).max() <= \
                (lane["hi"] - lane["lo"]) / 508 + 1e-9, key


def test_preview_audio_and_write_flac(jfk, tmp_path):
    from portraittalk.ptalk_models.media import read_audio, write_flac

    wav, sr = jfk
    mono, rate = P.preview_audio(wav, sr)
    assert rate == P.AUDIO_RATE and mono.dtype == np.float32 and abs(len(mono) / rate - wav.shape[1] / sr) <= 1 / rate
    low, r16 = P.preview_audio(wav[:, :16000], 16000)  # at or below 24 kHz: mixed down only
    assert r16 == 16000 and np.allclose(low, wav[:, :16000].mean(axis=0))
    path = write_flac(tmp_path / "x.flac", mono, rate, chunk=10_000)  # chunks not dividing the length
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.shape == (1, len(mono))
    assert np.abs(back[0] - np.clip(mono, -1, 1)).max() < 2.0 / 32768  # 16-bit FLAC
    with pytest.raises(ValueError, match="NaN"):
        write_flac(tmp_path / "nan.flac", np.array([0.0, np.nan]), 8000)


# ------------------------------------------------------------------------------------------------ nodes
def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}


def _flac_seconds(path: Path) -> tuple[float, int, int]:
    """(decoded seconds, channels, Hz) of a FLAC file."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        assert s.codec_context.name == "flac"
        return sum(f.samples for f in c.decode(s)) / s.rate, s.codec_context.channels, s.rate


def _execute(comfy, node_id, *args, **kwargs):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id].execute(*args, **kwargs)


def test_nodes_send_the_preview_as_ui_output(comfy, astronaut, jfk):
    fp = comfy.folder_paths
    temp, others = Path(fp.get_temp_directory()), [Path(fp.get_output_directory()), Path(fp.get_input_directory())]
    before = {d: _files(d) for d in others if d.is_dir()}
    temp_before = _files(temp) if temp.is_dir() else set()
    image = torch.from_numpy(astronaut)[None].float() / 255

    out = _execute(comfy, "PTalkFaceLandmarks", image, "auto", "largest", 0, "error", 0.0, 0.5)
    face = out.ui[UI_KEY][0]
    assert face["kind"] == "landmarks" and face["frames"] == 1 and face["audio"] is None
    assert face["image"]["type"] == "temp" and face["backdrop_input"] is None
    from PIL import Image

    with Image.open(temp / face["image"]["subfolder"] / face["image"]["filename"]) as im:
        assert im.format == "JPEG" and im.size == (512, 512) == (face["image"]["width"], face["image"]["height"])

    wav, sr = jfk
    audio = {"waveform": torch.from_numpy(wav)[None], "sample_rate": sr}
    reference = out[0]
    out = _execute(comfy, "PTalkAudioToLandmarks", audio, reference, "phonemes (pocketsphinx)", FPS, 0, 1.0, True, True)
    lm, payload = out[0], out.ui[UI_KEY][0]
    assert payload["frames"] == len(lm) and payload["backdrop_input"] == "reference" and payload["image"] is None
    assert _max_error_px(payload, lm) <= P.quantisation_step(payload["box"]) / 2 + 1e-3
    entry = payload["audio"]
    assert entry["type"] == "temp" and entry["duration"] == pytest.approx(wav.shape[1] / sr)
    seconds, channels, rate = _flac_seconds(temp / entry["subfolder"] / entry["filename"])
    # the player's copy: mono, 44.1 kHz resampled to 24 kHz, as long as the speech to a sample
    assert channels == 1 and rate == entry["sample_rate"] == P.AUDIO_RATE
    assert seconds == pytest.approx(entry["duration"], abs=1e-9) and seconds == pytest.approx(wav.shape[1] / sr,
                                                                                              abs=1.0 / rate)

    # Audio → Dub Landmarks: the dubbed landmarks with the new speech, backdrop from its landmarks input
    src = FaceLandmarks.from_points(np.repeat(reference.points, 50, axis=0), reference.image_size, fps=FPS)
    out = _execute(comfy, "PTalkDubLandmarks", src, audio, "ping-pong", 1.0, True, 1.0, "phonemes (pocketsphinx)")
    dub = out.ui[UI_KEY][0]
    assert dub["frames"] == len(out[1]) and dub["backdrop_input"] == "landmarks" and dub["audio"]["type"] == "temp"
    assert _max_error_px(dub, out[1]) <= P.quantisation_step(dub["box"]) / 2 + 1e-3

    # ADFD Score: its per-frame curves next to its text and plot image
    out = _execute(comfy, "PTalkADFDScore", 0.0, 1.0, 1.0, "off", 1, "face", generated_landmarks=lm,
                   ground_truth_landmarks=lm, audio=audio)
    ui = out.ui
    assert ui["text"][0].startswith("ADFD 1.0000") and len(ui["images"]) == 1
    curves = ui[UI_KEY][0]
    assert curves["kind"] == "curves" and curves["frames"] == len(lm)
    assert [lane["label"] for lane in curves["lanes"]][:4] == ["spatial term", "motion term", "mouth LMD",
                                                               "lip aperture"]

    # only ComfyUI's temp folder received files
    assert {d: _files(d) for d in others if d.is_dir()} == before
    new = _files(temp) - temp_before
    assert {os.path.splitext(f)[1] for f in new} <= {".jpg", ".flac", ".png"}, new  # .png: ADFD's plot preview
