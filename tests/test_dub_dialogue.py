"""Dialogue dubbing (issue 14 item 3): two faces of one video, each driven by its own speech, in one streamed pass
(Dub Dialogue (streamed)).

The two-face video is MADE from real clips: GRID lbax4n and lwbsza (360x288, 25 fps) side by side (720x288) for
shot 1 (3 s), then a cut to shot 2 (3 s) showing one face on the right half (lbax4n mirrored and played backwards) and a
flat grey left half: a reverse shot where the person shown keeps to the right side of the frame, so it is
face 2 there. The new speech is two other
GRID speakers' real audio: face 1 (left) gets sbwe5n's speech during 0-3 s and silence after; face 2 (right)
gets silence during 0-3 s and swwp2s's speech after. So in shot 1 the left face talks and the right one listens;
in shot 2 the right face talks. The output's faces are re-detected with MediaPipe on each half and their mouth
opening compared with each speech track (sync proxy: inner-lip aperture vs the speech's band energy, best lag
within ±2 frames).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ptalk_harness as harness

N = 75  # frames per shot (3 s at 25 fps)


@pytest.fixture(scope="module")
def dialogue(shared_data, tmp_path_factory):
    """(frames uint8 [150, 288, 720, 3], mp4 path, speech_1 (float32 [1, S], sr), speech_2)."""
    from portraittalk.ptalk_models.media import read_audio, read_video, write_mp4

    a, _ = read_video(shared_data / "video" / "lbax4n.mpg")
    b, _ = read_video(shared_data / "video" / "lwbsza.mpg")
    shot1 = np.concatenate([a[:N], b[:N]], axis=2)
    shot2 = np.concatenate([np.full_like(a[:N], 128), a[:N][::-1, :, ::-1]], axis=2)
    frames = np.ascontiguousarray(np.concatenate([shot1, shot2]))
    own, sr = read_audio(shared_data / "video" / "lbax4n.mpg")
    path = tmp_path_factory.mktemp("dialogue") / "dialogue.mp4"
    S = int(round(2 * N / 25 * sr))
    write_mp4(str(path), iter(frames), 25.0, 720, 288, np.resize(own, (own.shape[0], S)), sr, crf=12)
    half = int(round(N / 25 * 16000))
    s1, r1 = read_audio(shared_data / "video" / "sbwe5n.mpg")
    s2, r2 = read_audio(shared_data / "video" / "id2_vcd_swwp2s.mpg")
    import torchaudio.functional as AF

    s1, s2 = (np.pad(x[:, :half], ((0, 0), (0, max(0, half - x.shape[1])))) for x in (
        AF.resample(torch.from_numpy(s.mean(0, keepdims=True)), r, 16000).numpy() for s, r in ((s1, r1), (s2, r2))))
    z = np.zeros((1, half), np.float32)
    return frames, path, (np.concatenate([s1, z], 1), 16000), (np.concatenate([z, s2], 1), 16000)


def _audio(wav_sr):
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav_sr[0]))[None], "sample_rate": wav_sr[1]}


def _run(comfy, path, audio, audio_2=None, turns=""):
    from comfy_api.latest import InputImpl

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubDialogue"]
    return node.execute(InputImpl.VideoFromFile(str(path)), _audio(audio), "hold", 1.0, True, 1.0,
                        "phonemes (pocketsphinx)", 0.25, True, audio_2=None if audio_2 is None else _audio(audio_2),
                        turns=turns).result


def _sync(frames, wav, sr, a, b):
    from portraittalk.ptalk_models.face import track_landmarks
    from portraittalk.ptalk_models.landmarks import inner_lip_aperture
    from portraittalk.ptalk_models.metrics import sync_proxy

    lm = track_landmarks(iter(frames[a:b]), on_missing="keep", fps=25.0)
    seg = wav[:, int(a / 25 * sr):int(b / 25 * sr)]
    return sync_proxy(lm, seg, sr)["best_corr"], inner_lip_aperture(lm)[lm.present]


def test_assign_faces_follows_sides_across_cuts(dialogue):
    """Engine: face 1 = the left face of shot 1 only; face 2 = the right face in both shots (after the cut the
    lone face on the right half stays face 2)."""
    from portraittalk.ptalk_models.dialogue import assign_faces
    from portraittalk.ptalk_models.face_tracks import track_faces

    frames = dialogue[0]
    tv = track_faces(iter(frames), 25.0)
    assert tv.cuts == [N], tv.cuts
    picks = assign_faces(tv)
    nose = {j: float(np.median(np.asarray(k.points)[:, 1, 0])) for j, k in enumerate(tv.tracks)}
    assert (picks[0, :N] >= 0).mean() > 0.9 and (picks[0, N:] < 0).all()
    assert (picks[1, :N] >= 0).mean() > 0.9 and (picks[1, N:] >= 0).mean() > 0.9
    assert all(nose[j] < 0.5 for j in set(picks[0][picks[0] >= 0].tolist()))
    assert all(nose[j] > 0.5 for j in set(picks[1][picks[1] >= 0].tolist()))


def test_turn_parsing():
    from portraittalk.ptalk_models.dialogue import parse_turns, speech_for_faces, turn_mask
    from portraittalk.ptalk_models.errors import InputError

    assert parse_turns("") is None
    assert parse_turns("1: 0-3.2, 6.5-9\n2: 3.2-6.5") == [[(0.0, 3.2), (6.5, 9.0)], [(3.2, 6.5)]]
    assert parse_turns("2: 1-2") == [[], [(1.0, 2.0)]]
    for bad, what in (("1 0-3", "cannot read"), ("3: 0-1", "faces 1..2"), ("1: 2-1", "ends before"),
                      ("1: 0-1\n1: 2-3", "twice"), ("1: a-b", "cannot read the range")):
        with pytest.raises(InputError, match=what) as e:
            parse_turns(bad)
        assert e.value.argument == "turns"
    m = turn_mask([(0.5, 1.0)], 16000, 16000)
    assert m[:7990].max() == 0 and m[8160:15840].min() == 1 and m[16000 - 1] < 1
    wav = np.ones((1, 16000), np.float32)
    with pytest.raises(InputError, match="turns"):
        speech_for_faces([(wav, 16000)], None)
    faces, (mix, sr) = speech_for_faces([(wav, 16000), (0.8 * wav[:, :8000], 8000)])
    assert sr == 16000 and [f[0].shape for f in faces] == [(1, 16000), (1, 16000)]
    assert abs(float(np.abs(mix).max()) - 1.0) < 1e-6  # 1 + 0.8 scaled down to a peak of 1


def test_dialogue_two_tracks(comfy, dialogue):
    """Dub Dialogue with two speech tracks: in shot 1 the left face follows speech 1 and the right face rests
    closed; in shot 2 the right face follows speech 2 (re-detected mouths, sync proxy); the soundtrack is the
    mix; the left half of shot 2 (no face there) is untouched."""
    from portraittalk.ptalk_models.media import read_video

    frames, path, sp1, sp2 = dialogue
    video, plan1, plan2 = _run(comfy, path, sp1, sp2)
    assert len(plan1) == len(plan2) == 2 * N and np.array_equal(plan1.source_index, plan2.source_index)
    assert plan1.source.present[:N].mean() > 0.9 and not plan1.source.present[N:].any()
    got = (video.get_components().images.numpy() * 255.0 + 0.5).astype(np.uint8)
    src, _ = read_video(path)
    assert got.shape == src.shape
    assert np.array_equal(got[N:, :, :300], src[N:, :, :300])  # no face on the left in shot 2
    left_1, ap_l1 = _sync(got[:, :, :360], sp1[0], 16000, 0, N)
    right_1, ap_r1 = _sync(got[:, :, 360:], sp1[0], 16000, 0, N)
    right_2, ap_r2 = _sync(got[:, :, 360:], sp2[0], 16000, N, 2 * N)
    print(f"\nshot 1: left vs speech 1 {left_1:.2f}; right aperture mean {ap_r1.mean():.3f} max {ap_r1.max():.3f} "
          f"(left {ap_l1.mean():.3f} / {ap_l1.max():.3f}); shot 2: right vs speech 2 {right_2:.2f}, aperture "
          f"{ap_r2.mean():.3f} / {ap_r2.max():.3f}")
    assert left_1 > 0.4 and right_2 > 0.4
    assert ap_r1.max() < 0.6 * ap_l1.max() and ap_r1.mean() < 0.5 * ap_l1.mean()  # the listener rests
    wav = video.get_components().audio["waveform"][0].numpy()
    assert wav.shape[-1] == sp1[0].shape[-1]
    total = (sp1[0] + sp2[0])[0]
    assert np.allclose(wav.mean(0), total / max(1.0, float(np.abs(total).max())), atol=1e-6)


def test_dialogue_one_track_with_turns(comfy, dialogue):
    """One track (the two speeches in sequence) with each face's turns gives the same dub as two tracks (the
    turns' 10 ms fades aside: landmarks within 0.5 px)."""
    frames, path, sp1, sp2 = dialogue
    both = (sp1[0] + sp2[0], 16000)
    _, p1, p2 = _run(comfy, path, both, turns="1: 0-3\n2: 3-6")
    _, q1, q2 = _run(comfy, path, sp1, sp2)
    for a, b in ((p1, q1), (p2, q2)):
        d = np.abs(a.target.pixels() - b.target.pixels())[a.target.present]
        assert float(np.percentile(d, 99)) < 0.5, float(d.max())


def test_dialogue_errors(comfy, dialogue, shared_data):
    """Clear node errors: one track without turns (names turns), bad turns, a one-face video (names video and
    face 2)."""
    frames, path, sp1, sp2 = dialogue
    from portraittalk.nodes.glue.errors import NodeInputError

    with pytest.raises(NodeInputError, match=r"Dub Dialogue.*turns") as e:
        _run(comfy, path, sp1)
    with pytest.raises(NodeInputError, match=r"Dub Dialogue.*turns.*cannot read"):
        _run(comfy, path, sp1, turns="one: 0-3")
    with pytest.raises(NodeInputError, match=r"Dub Dialogue.*video.*face 1 \(the left one\)") as e:
        _run(comfy, shared_data / "video" / "lbax4n.mpg", sp1, sp2)
    del e


def test_dialogue_in_the_executor(comfy, dialogue):
    """Load Video + two Load Audio → Dub Dialogue → Save Video in the real executor (validated prompt)."""
    import folder_paths
    from pathlib import Path

    from portraittalk.ptalk_models.media import video_info, write_wav

    frames, path, sp1, sp2 = dialogue
    names = []
    for i, sp in enumerate((sp1, sp2)):
        p = path.parent / f"speech_{i + 1}.wav"
        write_wav(str(p), sp[0], sp[1])
        names.append(harness.stage_input_file(p))
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": harness.stage_input_file(path)}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": names[0]}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": names[1]}},
        "4": {"class_type": "PTalkDubDialogue",
              "inputs": {"video": ["1", 0], "audio": ["2", 0], "audio_2": ["3", 0], "turns": "",
                         "length_policy": "hold", "smoothing": 1.0, "persona": True, "expressiveness": 1.0,
                         "backend": "phonemes (pocketsphinx)", "feather": 0.25, "color_match": True,
                         "mouth_source": "own frames", "close_in_silence": True, "vad_threshold": 0.5}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "ptalk_dialogue",
                                                   "format": "auto", "codec": "auto"}},
    }
    res = harness.run_prompt(prompt)
    assert res["status"]["completed"]
    out = sorted(p for p in Path(folder_paths.get_output_directory()).rglob("ptalk_dialogue*") if p.suffix == ".mp4")
    assert out
    w, h, fps, n = video_info(out[-1])
    assert (w, h) == (720, 288) and abs(fps - 25.0) < 1e-6 and abs(n - 2 * N) <= 1
