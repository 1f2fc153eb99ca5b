"""Which face speaks (issue 14 item 2): face = auto dubs, per shot, the face whose mouth moves with the video's own
audio; face tracks survive short occlusions and restart at scene cuts (PySceneDetect).

The two-face video is MADE from real clips: GRID lbax4n and lwbsza (360x288, 25 fps, each with its own audio) put
side by side (720x288). Shot 1 (3 s) = lbax4n | lwbsza with lbax4n's audio (the left face speaks), then a cut to
shot 2 (3 s) = lwbsza | lbax4n with lwbsza's audio (the left face speaks again, now the other person). In shot 1
the left face is hidden for 6 frames (0.24 s) by a flat box painted over it (an occlusion). Both GRID speakers
say six-word commands with similar rhythm, so the silent face is a hard negative. Measured when written:
cut found at frame 75 exactly; the occluded face stays one track (69 of 75 frames detected); lip-sync scores
(best lag within ±2) shot 1: speaker 0.60 vs other 0.37; shot 2: 0.51 vs 0.30.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ptalk_harness as harness

OCCLUDED = slice(20, 26)


@pytest.fixture(scope="module")
def two_faces(shared_data, tmp_path_factory):
    """(frames uint8 [150, 288, 720, 3], audio float32 [C, N], sr, mp4 path with that audio)."""
    from portraittalk.ptalk_models.media import read_audio, read_video, write_mp4

    a, _ = read_video(shared_data / "video" / "lbax4n.mpg")
    b, _ = read_video(shared_data / "video" / "lwbsza.mpg")
    wa, sr = read_audio(shared_data / "video" / "lbax4n.mpg")
    wb, _ = read_audio(shared_data / "video" / "lwbsza.mpg")
    n = min(len(a), len(b), 75)
    frames = np.concatenate([np.concatenate([a[:n], b[:n]], axis=2), np.concatenate([b[:n], a[:n]], axis=2)])
    frames[OCCLUDED, 60:230, 100:260] = frames[0, 5, 5]  # a flat box in the background's colour over face 1
    L = int(round(n / 25 * sr))
    audio = np.concatenate([wa[:, :L], wb[:, :L]], axis=1)
    path = tmp_path_factory.mktemp("two_faces") / "two_faces.mp4"
    write_mp4(str(path), iter(frames), 25.0, 720, 288, audio, sr, crf=12)
    return frames, audio, sr, path


def test_tracks_cuts_and_active_speaker(two_faces):
    """Engine: one pass of track_faces (MediaPipe + PySceneDetect), then active_speaker on the clip's own audio."""
    from portraittalk.ptalk_models.active_speaker import MIN_SPEAKER_CORR, active_speaker
    from portraittalk.ptalk_models.face_tracks import track_faces

    frames, audio, sr, _ = two_faces
    tv = track_faces(iter(frames), 25.0)
    assert tv.cuts == [75], tv.cuts
    assert (tv.faces_per_frame[OCCLUDED] == 1).all()
    by_shot = {s: [k for k in tv.tracks if k.shot == s] for s in (0, 1)}
    assert [len(v) for v in by_shot.values()] == [2, 2]  # no track crosses the cut, no extra track after the gap
    left0 = min(by_shot[0], key=lambda k: k.points[0][1, 0])
    assert left0.first == 0 and left0.last == 74 and len(left0.frames) == 75 - 6  # survived the occlusion
    assert all(k.first == 75 for k in by_shot[1])
    choice = active_speaker(tv, audio, sr)
    assert choice.shots == [(0, 75), (75, 150)] and not choice.warnings
    for s in (0, 1):
        spk = choice.speaker[s]
        nose_x = [k for k in tv.tracks if k.track_id == spk][0].points[0][1, 0]
        assert nose_x < 0.5, (s, nose_x)  # the left face speaks in both shots
        others = [v for k, v in choice.scores[s].items() if k != spk]
        assert choice.scores[s][spk] >= MIN_SPEAKER_CORR and choice.scores[s][spk] > max(others) + 0.1, choice.scores
    lm = choice.landmarks
    assert not lm.present[OCCLUDED].any() and lm.present[:20].all() and lm.present[75:].all()
    assert (lm.points[:75, 1, 0] < 0.5).all() and (lm.points[75:, 1, 0] < 0.5).all()


def test_no_matching_face_is_reported(two_faces):
    """Audio no face moves with (generated noise): a clear error naming the fix; no tracks: its own error."""
    from portraittalk.ptalk_models.active_speaker import choose_speakers
    from portraittalk.ptalk_models.errors import InputError
    from portraittalk.ptalk_models.face_tracks import track_faces

    frames, _, _, _ = two_faces
    tv = track_faces(iter(frames[:75]), 25.0)
    noise = np.random.default_rng(0).normal(0, 0.05, (1, 3 * 16000)).astype(np.float32)
    tracks = {k.track_id: k.landmarks(tv.n_frames, tv.image_size, 25.0) for k in tv.tracks}
    with pytest.raises(InputError, match=r"no speaker.*face = largest or by index") as e:
        choose_speakers(tracks, [(0, 75)], noise, 16000, 25.0)
    assert e.value.argument == "waveform"
    with pytest.raises(InputError):
        choose_speakers({}, [(0, 75)], noise, 16000, 25.0)


def test_dub_video_auto_in_the_executor(comfy, two_faces):
    """Load Video → Dub Video (face = auto) → Save Video in the real ComfyUI executor (validated prompt, both
    ComfyUIs); then the same node called directly: in every output frame only the left (speaking) half changes,
    the right face's pixels are bit-identical to the decoded source."""
    from comfy_api.latest import InputImpl

    from portraittalk.ptalk_models.media import read_audio, read_video, video_info

    frames, audio, sr, path = two_faces
    speech, ssr = read_audio(path.parent / "two_faces.mp4")  # its own audio as the "new" speech (a self-dub)
    staged = harness.stage_input_file(path)
    wav_name = harness.stage_input_file(path)  # LoadAudio reads the mp4's audio stream
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": staged}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": wav_name}},
        "3": {"class_type": "PTalkDubVideo",
              "inputs": {"video": ["1", 0], "audio": ["2", 0], "face": "auto", "face_index": 0,
                         "length_policy": "hold", "smoothing": 1.0, "persona": True, "expressiveness": 1.0,
                         "backend": "phonemes (pocketsphinx)", "transcript": "", "feather": 0.25,
                         "color_match": True, "close_in_silence": True, "vad_threshold": 0.5}},
        "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "ptalk_speaker",
                                                   "format": "auto", "codec": "auto"}},
    }
    dub_inputs = prompt["3"]["inputs"]
    for i in comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubVideo"].GET_SCHEMA().inputs:  # e.g. render inputs added later
        if i.id not in dub_inputs and getattr(i, "default", None) is not None:
            dub_inputs[i.id] = i.default
    res = harness.run_prompt(prompt)
    assert res["status"]["completed"]
    import folder_paths

    out = sorted(p for p in __import__("pathlib").Path(folder_paths.get_output_directory()).rglob("ptalk_speaker*")
                 if p.suffix == ".mp4")
    assert out and video_info(out[-1])[:2] == (720, 288)

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubVideo"]
    video, plan, dub, aligned = node.execute(InputImpl.VideoFromFile(str(path)),
                                             {"waveform": torch.from_numpy(speech)[None], "sample_rate": ssr},
                                             "auto", 0, "hold", 1.0, True, 1.0, "phonemes (pocketsphinx)", 0.25, True,
                                             "").result
    src, _ = read_video(path)
    got = (video.get_components().images.numpy() * 255.0 + 0.5).astype(np.uint8)
    idx = plan.source_index
    assert np.array_equal(got[:, :, 360:], src[idx][:, :, 360:])  # the silent face is never touched
    changed = np.any(got[:, :, :360] != src[idx][:, :, :360], axis=(1, 2, 3))
    assert changed[aligned.present].mean() > 0.9 and not changed[~aligned.present].any()
    assert (~aligned.present).sum() >= 6  # the occluded frames pass through


def test_auto_own_frames_mouth_stays_with_its_person(two_faces):
    """face = auto with the own-frames mouth: the plan carries each output frame's person (DubPlan.person) and
    the mouth bank is one per person, every candidate taken from a frame of that same person (shot 1's speaker
    is lbax4n, shot 2's lwbsza: without this, one's mouth was pasted on the other's face)."""
    from portraittalk.ptalk_models.active_speaker import active_speaker
    from portraittalk.ptalk_models.dub_render import render_dub
    from portraittalk.ptalk_models.dubbing import plan_dub
    from portraittalk.ptalk_models.face_tracks import track_faces
    from portraittalk.ptalk_models.mouth_texture import build_mouth_banks

    frames, audio, sr, _ = two_faces
    choice = active_speaker(track_faces(iter(frames), 25.0), audio, sr)
    plan = plan_dub(choice.landmarks, audio, sr, "hold", speaker_labels=choice.labels, vad=False)
    assert plan.person is not None and set(np.unique(plan.person[plan.source.present])) == {
        int(choice.labels[0]), int(choice.labels[-1])}
    banks = build_mouth_banks(plan.source, lambda ids: (frames[i] for i in ids), plan.source_index, plan.person)
    assert set(banks) == set(np.unique(plan.person[plan.source.present]).tolist())
    for p, bank in banks.items():
        assert len(bank) > 3 and all(choice.labels[c.frame] == p for c in bank.candidates), p
    out = render_dub(frames[plan.source_index], plan.source, plan.target, mouth_source="own_frames", bank=banks,
                     person=plan.person)
    src = frames[plan.source_index]
    assert out.shape == src.shape and np.array_equal(out[:, :, 360:], src[:, :, 360:])
