"""The streamed VIDEO outputs (Landmark Warp Render → Video, Dub Video) implement the whole ``VideoInput``
interface of the ComfyUI they run in: trimming (abstract since ComfyUI 0.33, used by core Trim Video) gives a
really shorter video whose frames and audio are the matching part of the untrimmed one, and ``save_to`` takes
0.33's encoding arguments (crf, colour space). Real media: photos/grid_still_lbax4n.png, audio/beckett.wav,
video/lbax4n.mpg."""
from __future__ import annotations

import copy

import av
import numpy as np
import pytest
import torch

import ptalk_harness as harness

REPO = harness.REPO_ROOT
BACKEND = "phonemes (pocketsphinx)"


def _audio(wav, sr):
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav, np.float32))[None], "sample_rate": sr}


@pytest.fixture(scope="module")
def speech(beckett):
    """Two seconds of beckett.wav (16 kHz mono) from 0.5 s."""
    wav, sr = beckett
    return wav[:, int(0.5 * sr): int(2.5 * sr)], sr


@pytest.fixture(scope="module")
def talking(comfy, grid_still, speech):
    """Landmark Warp Render → Video's VIDEO: the GRID still driven by two seconds of speech at 25 fps."""
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    image = torch.from_numpy(grid_still)[None].float() / 255
    ref = nodes["PTalkFaceLandmarks"].execute(image, "auto", "largest", 0, "error", 0.0, 0.5)[0]
    seq = nodes["PTalkAudioToLandmarks"].execute(_audio(*speech), ref, BACKEND, 25, 0, 1.0, True, True, "")[0]
    return nodes["PTalkLandmarkWarpRenderVideo"].execute(image, seq, "cavity_and_teeth", True,
                                                         reference_landmarks=ref, audio=_audio(*speech))[0]


@pytest.fixture(scope="module")
def dubbed(comfy, shared_data, speech):
    """Dub Video's VIDEO: video/lbax4n.mpg dubbed with two seconds of other speech."""
    from comfy_api.latest import InputImpl

    node = comfy.nodes.NODE_CLASS_MAPPINGS["PTalkDubVideo"]
    source = InputImpl.VideoFromFile(str(shared_data / "video" / "lbax4n.mpg"))
    return node.execute(source, _audio(*speech), "largest", 0, "hold", 1.0, True, 1.0, BACKEND, 0.25, True,
                        "").result[0]


@pytest.mark.parametrize("which", ["talking", "dubbed"])
def test_trimmed_video_is_the_matching_part(which, request, speech):
    video = request.getfixturevalue(which)
    full = video.get_components()
    n, fps = video.get_frame_count(), float(video.get_frame_rate())
    assert n == 50 and fps == 25.0 and full.images.shape[0] == n

    cut = video.as_trimmed(0.4, 0.8)
    assert type(cut) is type(video) and cut.get_frame_count() == 20 and abs(cut.get_duration() - 0.8) < 1e-9
    assert cut.get_dimensions() == video.get_dimensions() and cut.get_frame_rate() == video.get_frame_rate()
    part = cut.get_components()
    assert torch.equal(part.images, full.images[10:30])
    wav, sr = speech
    assert part.audio["sample_rate"] == sr
    assert torch.equal(part.audio["waveform"][0], torch.from_numpy(wav[:, int(0.4 * sr): int(1.2 * sr)]))
    assert video.get_frame_count() == 50  # the original is untouched

    tail = video.as_trimmed(-0.4)  # negative start: from the end; duration 0: to the end
    assert tail.get_frame_count() == 10 and torch.equal(tail.get_components().images, full.images[40:])
    again = cut.as_trimmed(0.2, 0.2)  # trimming a trimmed video counts from its own start
    assert torch.equal(again.get_components().images, full.images[15:20])
    assert video.as_trimmed(2.5, 1.0) is None               # starts after the end
    assert video.as_trimmed(1.6, 1.0, strict_duration=True) is None  # only 0.4 s left
    assert video.as_trimmed(1.6, 1.0).get_frame_count() == 10


def test_save_to_takes_the_encoding_arguments(talking, tmp_path):
    """ComfyUI 0.33's Save Video passes crf and color_space; a lower crf gives a larger file; HDR is refused
    with the setting to change."""
    cut = talking.as_trimmed(0.0, 0.4)
    sizes = {}
    for crf in (10.0, 40.0):
        path = tmp_path / f"crf{int(crf)}.mp4"
        cut.save_to(str(path), format="mp4", codec="h264", crf=crf, color_space="sRGB")
        with av.open(str(path)) as f:
            assert f.streams.video[0].frames == 10 and f.streams.audio
        sizes[crf] = path.stat().st_size
    assert sizes[10.0] > sizes[40.0]
    with pytest.raises(ValueError, match="color space to auto or sRGB"):
        cut.save_to(str(tmp_path / "hdr.mp4"), color_space="HDR")


def test_core_trim_video_node_in_a_workflow(comfy, shared_data, tmp_path):
    """talking_photo.json (the streamed graph) with core Trim Video between the renderer and Save Video, run by ComfyUI's
    executor: the saved mp4 is the trimmed length (ComfyUI 0.33 has Trim Video; 0.3.75 does not)."""
    if "Video Slice" not in comfy.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"this ComfyUI ({comfy.comfy_dir}) has no core Trim Video node (ComfyUI 0.33 has)")
    ui = harness.apply_inputs(
        harness.load_workflow(REPO / "workflows" / "talking_photo.json"),
        {"Portrait": str(shared_data / "photos" / "grid_still_lbax4n.png"),
         "Speech": str(shared_data / "audio" / "beckett.wav")})
    prompt = harness.workflow_to_prompt(ui)
    render = next(k for k, v in prompt.items() if v["class_type"] == "PTalkLandmarkWarpRenderVideo")
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")
    prompt = copy.deepcopy(prompt)
    prompt["99"] = {"class_type": "Video Slice",
                    "inputs": {"video": [render, 0], "start_time": 1.0, "duration": 2.0, "strict_duration": True}}
    prompt[save]["inputs"]["video"] = ["99", 0]
    prompt[save]["inputs"]["filename_prefix"] = "ptalk_test/trimmed"
    files = harness.output_files(harness.run_prompt(prompt))
    mp4 = [f for f in files if f.suffix == ".mp4"]
    assert len(mp4) == 1
    with av.open(str(mp4[0])) as f:
        v, a = f.streams.video[0], f.streams.audio[0]
        frames = sum(1 for _ in f.decode(video=0))
        assert frames == 50 and float(v.average_rate) == 25.0
        assert abs(float(a.duration * a.time_base) - 2.0) < 0.1


def test_same_frames_encode_to_the_same_file(shared_data, beckett, tmp_path):
    """write_mp4 is deterministic: 249 frames of a GRID clip played ping-pong (360x288, not a multiple of 16
    wide) and speech encoded four times in one process give bit-identical video packets. With x264's
    macroblock-tree rate control on, PyAV 18's libx264 gave a different first encode (decoded frames up to 36
    levels apart), which broke the reliability suite's server-twice determinism check (media.X264_PARAMS)."""
    from portraittalk.ptalk_models.media import read_video, write_mp4

    clip, fps = read_video(shared_data / "video" / "bbaf2n.mpg")
    frames = np.concatenate([clip, clip[::-1], clip, clip[::-1]])[:249]  # ping-pong, as a dub plays it
    wav, sr = beckett
    packets = []
    for i in range(4):
        path = tmp_path / f"enc{i}.mp4"
        assert write_mp4(path, iter(frames), fps, frames.shape[2], frames.shape[1], wav, sr) == len(frames)
        with av.open(str(path)) as c:
            packets.append([bytes(p) for p in c.demux(video=0) if p.size])
    assert len(packets[0]) == len(frames)
    assert all(p == packets[0] for p in packets[1:]), [p == packets[0] for p in packets[1:]]


def test_nan_audio_samples_are_muted_in_the_soundtrack(beckett, tmp_path):
    """NaN/Inf samples in the speech (a damaged float WAV; Audio → Landmarks treats them as silence) are written
    as silence: FFmpeg's AAC encoder refuses them, which made the whole Save Video fail."""
    from portraittalk.ptalk_models.media import read_audio, write_mp4

    wav, sr = beckett
    wav = wav[:, :sr].copy()
    wav[0, 1000:1100], wav[0, 5000:5010] = np.nan, np.inf
    frames = [np.full((64, 64, 3), 128, np.uint8)] * 25
    path = tmp_path / "nan.mp4"
    assert write_mp4(path, iter(frames), 25.0, 64, 64, wav, sr) == 25
    got, got_sr = read_audio(path)
    assert got_sr == sr and np.isfinite(got).all() and 0.9 * sr < got.shape[1] < 1.1 * sr
    assert np.abs(got).max() > 0.05  # the speech is there
