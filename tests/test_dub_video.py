"""Dub Video (streamed VIDEO → VIDEO dubbing) in the real ComfyUI, on real media: a CREMA-D FLV clip (a container
core Get Video Components cannot read), the LatentSync pair (1080x1920 HEVC + a different 18.6 s speech track)
through workflows/dubbing_long.json, a variable-frame-rate clip, and agreement with the IMAGE-batch nodes."""
from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch

import ptalk_harness as harness

BACKEND = "phonemes (pocketsphinx)"


def _audio(wav, sr):
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None], "sample_rate": sr}


def _dub(comfy, path, audio, policy="hold", transcript=""):
    from comfy_api.latest import InputImpl

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubVideo"]
    return node.execute(InputImpl.VideoFromFile(str(path)), _audio(*audio), "largest", 0, policy, 1.0, True, 1.0,
                        BACKEND, 0.25, True, transcript).result


@pytest.fixture(scope="module")
def flv(shared_data):
    return shared_data / "video" / "crema-d" / "1001_DFA_ANG_XX.flv"


def test_flv_under_each_length_policy(comfy, flv, shared_data):
    """CREMA-D FLV (2.2 s, 29.97 fps, millisecond timestamps) dubbed with a longer (3 s) and a shorter (1 s)
    speech track under each policy: output length, frame mapping, and — rendered — the rows above the eyes of
    every output frame equal its source frame bit for bit (the ping-pong path holds frames, the others re-decode)."""
    from portraittalk.ptalk_models.dubbing import apply_length_policy
    from portraittalk.ptalk_models.media import read_audio, read_video

    src, fps = read_video(flv)
    wav, sr = read_audio(shared_data / "video" / "lbax4n.mpg")
    assert len(src) == 67 and abs(fps - 29.97) < 0.01
    for audio, n_audio in ((wav, round(wav.shape[1] / sr * fps)), (wav[:, :sr], round(fps))):
        for policy in ("hold", "loop", "ping-pong", "trim"):
            video, plan, dub, aligned = _dub(comfy, flv, (audio, sr), policy)
            n = min(n_audio, len(src)) if policy == "trim" else n_audio
            assert abs(video.get_frame_count() - n) <= 1 and len(dub) == video.get_frame_count(), policy
            assert video.get_frame_rate() == fractions.Fraction(2997, 100)
            idx = plan.source_index
            assert np.array_equal(idx, apply_length_policy(len(src), len(dub), policy)), policy
            if n_audio < len(src) and policy != "hold":
                continue
            out = video.get_components()
            frames = (out.images.numpy() * 255.0 + 0.5).astype(np.uint8)
            eyes_y = int(aligned.pixels()[:, [33, 263], 1].min()) - 2
            assert eyes_y > 40
            assert np.array_equal(frames[:, :eyes_y], src[idx][:, :eyes_y]), policy
            assert not np.array_equal(frames, src[idx])
            assert out.audio["sample_rate"] == sr


def test_matches_the_image_batch_nodes(comfy, shared_data):
    """Streamed and IMAGE-batch dubbing of a GRID clip give the same frames (Face Landmarks → Audio → Dub
    Landmarks → Dub Render on the decoded IMAGE batch)."""
    from portraittalk.ptalk_models.media import read_audio, read_video

    path = shared_data / "video" / "lbax4n.mpg"
    new = read_audio(shared_data / "video" / "lwbsza.mpg")
    video, plan, dub, aligned = _dub(comfy, path, new)
    streamed = video.get_components().images
    frames, fps = read_video(path)
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    images = torch.from_numpy(frames).float().div(255.0)
    lm = m["PTalkFaceLandmarks"].execute(images, "auto", "largest", 0, "keep", fps, 0.5).result[0]
    plan2, dub2, aligned2, _ = m["PTalkDubLandmarks"].execute(lm, _audio(*new), "hold", 1.0, True, 1.0, BACKEND,
                                                              "").result
    batch = m["PTalkDubRender"].execute(images, plan2, 0.25, True).result[0]
    assert np.allclose(dub.points, dub2.points, atol=1e-6)
    assert np.array_equal(plan.source_index, plan2.source_index) and plan.fps == plan2.fps == fps
    assert streamed.shape == batch.shape and torch.equal(streamed, batch)


def test_variable_frame_rate_input(comfy, shared_data, tmp_path):
    """A VFR clip (GRID frames at irregular timestamps: every 4th frame shown for 3 frame times) is put on a
    constant 25 fps timeline by timestamps: gaps repeat the frame shown, the duration is kept."""
    import av

    from portraittalk.ptalk_models.media import constant_rate_index, iter_video, read_audio, read_video

    frames, _ = read_video(shared_data / "video" / "lbax4n.mpg")
    frames = frames[:40]
    pts = np.cumsum([0] + [3 if i % 4 == 3 else 1 for i in range(len(frames) - 1)])
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt, s.time_base = 360, 288, "yuv420p", fractions.Fraction(1, 25)
        for f, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = int(p), fractions.Fraction(1, 25)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    times = [t for _, t in iter_video(path)]
    assert np.allclose(times, pts / 25.0)
    cfr = constant_rate_index(times, 25.0)
    assert len(cfr) == pts[-1] + 1 and np.array_equal(cfr[pts], np.arange(len(frames)))
    wav, sr = read_audio(shared_data / "video" / "lwbsza.mpg")
    video, _, dub, _ = _dub(comfy, path, (wav, sr), "trim")
    assert video.get_frame_count() == len(cfr)  # the audio (3 s) is longer: trim keeps the video's 2.2 s
    assert np.array_equal(video._index, cfr)


def test_latentsync_pair_end_to_end(comfy, shared_data, tmp_path):
    """workflows/dubbing_long.json on the LatentSync demo pair: 1080x1920 HEVC (30 fps, 20 s) + a different 18.6 s
    speech track → an 18.6 s H.264 mp4 with that audio; re-detected on the output, the mouth follows the new
    speech (sync proxy) far better than the source video's mouth does (measured: lag-0 correlation 0.52 vs 0.08,
    faces re-detected in 99.5 % of the output frames at quarter resolution; thresholds 0.4 and +0.3)."""
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.media import iter_video, read_audio, video_info
    from portraittalk.ptalk_models.metrics import sync_proxy

    video, speech = shared_data / "video" / "demo3_video.mp4", shared_data / "video" / "demo3_audio.wav"
    ui = harness.apply_inputs(harness.load_workflow(harness.REPO_ROOT / "workflows" /
                                                                  "dubbing_long.json"),
                                     {"Source video": video, "New speech": speech})
    files = harness.run_workflow(ui, out_dir=tmp_path)
    assert len(files) == 1 and files[0].suffix == ".mp4"
    wav, sr = read_audio(speech)
    assert video_info(files[0])[:3] == (1080, 1920, 30.0)
    out_wav, out_sr = read_audio(files[0])
    assert out_sr == sr and abs(out_wav.shape[1] - wav.shape[1]) < 0.05 * sr
    small = [f[::4, ::4] for f, _ in iter_video(files[0])]
    assert len(small) == round(wav.shape[1] / sr * 30)
    re = detect_landmarks(np.stack(small), fps=30.0, on_missing="keep")
    src = detect_landmarks(np.stack([f[::4, ::4] for f, _ in iter_video(video)][:len(small)]), fps=30.0,
                           on_missing="keep")
    to_new, src_to_new = sync_proxy(re, wav, sr)["corr_lag0"], sync_proxy(src, wav, sr)["corr_lag0"]
    assert re.present.mean() > 0.95 and to_new > 0.4 and to_new > src_to_new + 0.3, (to_new, src_to_new)


def test_bad_inputs(comfy, shared_data, tmp_path):
    from comfy_api.latest import InputImpl

    from portraittalk.ptalk_models.media import read_audio, write_mp4

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubVideo"]
    speech = read_audio(shared_data / "video" / "lwbsza.mpg")
    blank = tmp_path / "blank.mp4"
    write_mp4(str(blank), (np.zeros((64, 64, 3), np.uint8) for _ in range(5)), 25.0, 64, 64)
    with pytest.raises(ValueError, match=r"Dub Video.*'video'.*no face"):
        node.execute(InputImpl.VideoFromFile(str(blank)), _audio(*speech), "largest", 0, "hold", 1.0, True, 1.0,
                     BACKEND, 0.25, True, "")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(ValueError, match=r"Dub Video.*'video'.*decode"):
        node.execute(InputImpl.VideoFromFile(str(junk)), _audio(*speech), "largest", 0, "hold", 1.0, True, 1.0,
                     BACKEND, 0.25, True, "")
    with pytest.raises(ValueError, match=r"Dub Video.*'audio'"):
        node.execute(InputImpl.VideoFromFile(str(shared_data / "video" / "lbax4n.mpg")),
                     _audio(np.zeros((1, 0), np.float32), 16000), "largest", 0, "hold", 1.0, True, 1.0, BACKEND,
                     0.25, True, "")
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Dub Video\] input 'face_index': face_index 5 is out of "
                                         r"range"):
        node.execute(InputImpl.VideoFromFile(str(shared_data / "video" / "lbax4n.mpg")), _audio(*speech),
                     "by index", 5, "hold", 1.0, True, 1.0, BACKEND, 0.25, True, "")
