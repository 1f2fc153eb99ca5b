"""Visual dubbing nodes in the real ComfyUI (CPU preview path): a real GRID clip (lbax4n) re-voiced with another
GRID speaker's sentence (lwbsza), through Face Landmarks → Audio → Dub Landmarks → Dub Render, and
workflows/dubbing.json end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ptalk_harness as harness

TRANSCRIPT = "lay white by s zero again"  # lwbsza


@pytest.fixture(scope="module")
def clip(shared_data):
    from portraittalk.ptalk_models.media import read_audio, read_video

    frames, fps = read_video(shared_data / "video" / "lbax4n.mpg")
    return frames, fps, read_audio(shared_data / "video" / "lbax4n.mpg"), read_audio(shared_data / "video" /
                                                                                      "lwbsza.mpg")


def _audio(wav_sr):
    wav, sr = wav_sr
    return {"waveform": torch.from_numpy(wav)[None], "sample_rate": sr}


@pytest.fixture(scope="module")
def dubbed(comfy, clip):
    frames, fps, _, new = clip
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    images = torch.from_numpy(frames).float().div(255.0)
    lm = m["PTalkFaceLandmarks"].execute(images, "auto", "largest", 0, "keep", fps, 0.5).result[0]
    plan, dub, aligned, fps_out = m["PTalkDubLandmarks"].execute(lm, _audio(new), "hold", 1.0, True, 1.0,
                                                                 "phonemes (pocketsphinx)", TRANSCRIPT).result
    out = m["PTalkDubRender"].execute(images, plan, 0.25, True).result[0]
    return lm, dub, aligned, fps_out, out, plan


def test_dubbed_mouth_follows_the_new_speech(clip, dubbed):
    """Re-detected on the rendered frames, the inner-lip aperture follows the new audio clearly better than the
    clip's own audio (lip-sync proxy, lag 0)."""
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.metrics import sync_proxy

    frames, fps, old, new = clip
    _, dub, _, fps_out, out, _ = dubbed
    rendered = (out.numpy() * 255.0 + 0.5).astype(np.uint8)
    assert out.shape[0] == len(dub) and fps_out == fps
    re = detect_landmarks(rendered, fps=fps)
    to_new = sync_proxy(re, *new)["corr_lag0"]
    to_old = sync_proxy(re, *old)["corr_lag0"]
    src = detect_landmarks(frames, fps=fps)
    assert to_new > 0.5 and to_new > to_old + 0.2, (to_new, to_old)
    assert sync_proxy(src, *new)["corr_lag0"] < to_new - 0.2


def test_pixels_above_the_mouth_region_are_untouched(clip, dubbed):
    frames, _, _, _ = clip
    lm, dub, aligned, _, out, plan = dubbed
    idx = plan.source_index
    rendered = (out.numpy() * 255.0 + 0.5).astype(np.uint8)
    eyes_y = int(aligned.pixels()[:, [33, 263], 1].min()) - 2  # rows above both eyes, every frame
    assert eyes_y > 20
    assert np.array_equal(rendered[:, :eyes_y], frames[idx][:, :eyes_y])
    assert not np.array_equal(rendered, frames[idx])


def test_length_policies_and_faceless_frames(comfy, clip):
    """Audio longer than the video under each policy; a black (faceless) frame passes through unchanged."""
    frames, fps, old, new = clip
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    short = frames[:20].copy()
    short[5] = 0
    images = torch.from_numpy(short).float().div(255.0)
    lm = m["PTalkFaceLandmarks"].execute(images, "auto", "largest", 0, "keep", fps, 0.5).result[0]
    assert not lm.present[5] and lm.present[[0, 4, 6]].all()
    wav, sr = new
    n_audio = round(wav.shape[-1] / sr * fps)
    for policy, n_out in (("hold", n_audio), ("loop", n_audio), ("ping-pong", n_audio), ("trim", 20)):
        plan, dub, aligned, _ = m["PTalkDubLandmarks"].execute(lm, _audio(new), policy, 1.0, True, 1.0,
                                                               "phonemes (pocketsphinx)", TRANSCRIPT).result
        assert abs(len(dub) - n_out) <= 1, policy
    out = m["PTalkDubRender"].execute(images, plan, 0.25, True).result[0]  # trim: frames 0..19
    assert torch.equal(out[5], images[5])


def test_dubbing_workflow_end_to_end(comfy, shared_data, tmp_path):
    """workflows/dubbing.json: Load Video (GRID .mpg) + Load Audio (beckett.wav) → mp4 with the new audio at the
    source fps, one frame per audio frame (any length policy but trim: the speech outlasts the 3 s clip)."""
    from portraittalk.ptalk_models.media import read_audio, read_video

    ui = harness.apply_inputs(harness.load_workflow(harness.REPO_ROOT / "workflows" /
                                                                  "dubbing.json"),
                                     {"Source video": shared_data / "video" / "lbax4n.mpg",
                                      "New speech": shared_data / "audio" / "beckett.wav"})
    files = harness.run_workflow(ui, out_dir=tmp_path)
    assert len(files) == 1 and files[0].suffix == ".mp4"
    frames, fps = read_video(files[0])
    wav, sr = read_audio(shared_data / "audio" / "beckett.wav")
    assert abs(fps - 25.0) < 1e-3 and abs(len(frames) - round(wav.shape[-1] / sr * 25)) <= 1
    assert frames.shape[1:] == (288, 360, 3)


def test_self_dubbing_keeps_the_mouth_and_scores_high_adfd(comfy, clip, dubbed):
    """lbax4n dubbed with its own speech, re-detected on the rendered frames, against the original detection:
    mouth LMD ≤ 0.04 inter-ocular and ADFD ≥ 0.70 (measured 0.030 and 0.77 on lbax4n; 0.015–0.020 and
    0.88–0.89 on lwbsza, bbaf2n, sbwe5n). Neither tells cross-dubbing apart on GRID (lwbsza's sentence on lbax4n:
    mouth LMD 0.036, ADFD 0.75 — same-structure sentences, the head and upper face unchanged): that is what the
    sync-proxy test above is for."""
    from portraittalk.ptalk_models.face import detect_landmarks
    from portraittalk.ptalk_models.metrics import evaluate

    frames, fps, old, _ = clip
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    images = torch.from_numpy(frames).float().div(255.0)
    lm = dubbed[0]
    plan, dub, aligned, _ = m["PTalkDubLandmarks"].execute(lm, _audio(old), "trim", 1.0, True, 1.0,
                                                           "phonemes (pocketsphinx)", "lay blue at x four now").result
    out = m["PTalkDubRender"].execute(images, plan, 0.25, True).result[0]
    re = detect_landmarks((out.numpy() * 255.0 + 0.5).astype(np.uint8), fps=fps, on_missing="keep")
    own = evaluate(re, lm.frames(0, len(re)), identity_backend=None)
    assert own["lmd"]["mouth_iod"] <= 0.04 and own["adfd"] >= 0.70, (own["lmd"], own["adfd"])



def test_plan_carries_the_frame_mapping_and_fps_and_is_checked_against_the_frames(comfy, clip, dubbed):
    """Audio → Dub Landmarks outputs a typed plan (PTALK_DUB_PLAN): the source frame of every output frame (the
    length policy's mapping), the fps (the source landmarks', the one owner; also the node's fps output), the
    source video's frame count and size, and its landmarks are the node's landmark outputs. Dub Render checks
    the frames against it by the one rule: another aspect ratio or another video length is a node error naming
    'images'; a resize of the same framing is accepted; a plan of another type names 'plan'."""
    from portraittalk.ptalk_models.dubbing import DubPlan, apply_length_policy

    frames, fps, _, _ = clip
    lm, dub, aligned, fps_out, out, plan = dubbed
    assert isinstance(plan, DubPlan) and len(plan) == len(dub) == out.shape[0]
    assert plan.source_index.dtype == np.int64
    assert np.array_equal(plan.source_index, apply_length_policy(len(frames), len(dub), "hold"))
    assert plan.fps == fps == fps_out == plan.target.fps == plan.source.fps
    assert plan.source_frames == len(frames) and plan.source_size == (360, 288)
    assert plan.target is dub and plan.source is aligned and "source_index" not in dub.meta
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    images = torch.from_numpy(frames).float().div(255.0)
    wide = torch.nn.functional.pad(images, (0, 0, 40, 40))                         # 440x288: another aspect
    with pytest.raises(ValueError, match=r"Dub Render\] input 'images':.*360x288.*440x288.*1%"):
        m["PTalkDubRender"].execute(wide, plan, 0.25, True)
    with pytest.raises(ValueError, match=r"Dub Render\] input 'images': 40 frames.*75 frames"):
        m["PTalkDubRender"].execute(images[:40], plan, 0.25, True)
    with pytest.raises(ValueError, match=r"Dub Render\] input 'plan': expected a dubbing plan"):
        m["PTalkDubRender"].execute(images, dub, 0.25, True)
    short = DubPlan(plan.target.frames(0, 3), plan.source.frames(0, 3), plan.source_index[:3], plan.fps,
                    plan.source_frames, plan.source_size)
    half = images[:, ::2, ::2]                                                     # 180x144: same framing
    assert m["PTalkDubRender"].execute(half, short, 0.25, True).result[0].shape == (3, 144, 180, 3)


def test_audio_model_errors_reach_the_dub_landmarks_inputs(comfy, clip, dubbed):
    """Audio → Dub Landmarks reports the audio model's errors (through plan_dub) on the input they came from:
    expressiveness past the engine's range on 'expressiveness', a frame rate the audio model cannot use (carried
    by the landmarks) on 'landmarks', a malformed waveform on 'audio'."""
    _, _, _, new = clip
    lm = dubbed[0]
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubLandmarks"]
    backend = "phonemes (pocketsphinx)"
    with pytest.raises(ValueError, match=r"\[PortraitTalk · Audio → Dub Landmarks\] input 'expressiveness': "
                                         r"expressiveness must be in"):
        node.execute(lm, _audio(new), "hold", 1.0, True, 3.0, backend, "")
    fast = lm.with_points(lm.points, fps=500.0, present=lm.present)
    with pytest.raises(ValueError, match=r"Audio → Dub Landmarks\] input 'landmarks': fps must be in"):
        node.execute(fast, _audio(new), "hold", 1.0, True, 1.0, backend, "")
    wav, sr = new
    transposed = {"waveform": torch.from_numpy(np.ascontiguousarray(wav.T))[None], "sample_rate": sr}
    with pytest.raises(ValueError, match=r"Audio → Dub Landmarks\] input 'audio':"):
        node.execute(lm, transposed, "hold", 1.0, True, 1.0, backend, "")
