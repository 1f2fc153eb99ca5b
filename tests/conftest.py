"""Shared pytest fixtures for ComfyUI-PortraitTalk.

* ``comfy`` (session): the real ComfyUI booted once in-process by :func:`ptalk_harness.boot` with
  temporary input/output/temp directories and this pack loaded through ``nodes.load_custom_node``.
* ``browser`` (module): Chromium driven by Playwright for the real-frontend tests (skips without it, fails under CI).
* ``shared_data``: ``Path`` of the shared real-media directory (``$PTALK_SHARED_DATA`` or
  ``<repo>/../shared/data``); skips when absent, but fails under CI (env ``CI`` set), where it must exist.
* real media read once per session: ``astronaut``, ``grid_still`` (uint8 RGB photos), ``jfk``, ``beckett``
  (``(waveform, sample_rate)``), and the photos' MediaPipe landmarks ``astronaut_lm``, ``grid_still_lm``.
* ``a2m_cache`` (session): a folder of audio→motion clips prepared by ``ptalk_harness.audio2motion_data`` from
  the real media -- 4 GRID s1 clips, 2 retalking training speakers and 2 held-out clips (GRID lbax4n, CREMA-D NEU).

The tests import the pack as ``portraittalk`` (``from portraittalk.ptalk_models.x import y``): the modules of the
pack as ComfyUI loads it, one copy (see ``harness/ptalk_harness/pack.py``; the venv's ``portraittalk.pth``
installs that import hook and puts ``ptalk_harness`` on the path).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import ptalk_harness as harness

REPO_ROOT = harness.REPO_ROOT

# The repo root holds the pack's __init__.py, so pytest collects the root as a package; the tests import
# portraittalk.nodes (which imports comfy_api) at module level: make ComfyUI importable first (cheap: no node
# is loaded here).
harness.prepare()


@pytest.fixture(scope="session", autouse=True)
def _release_models_before_exit():
    """Set up first, torn down last: once the fixtures holding MODEL/CLIP/VAE objects are gone, unload and
    collect them while ComfyUI's modules are still intact (else ModelPatcher.__del__ runs during interpreter
    shutdown and prints ignored exceptions)."""
    yield
    import gc

    sd15 = sys.modules.get("ptalk_harness.sd15")  # the trainers' per-process SD1.5 cache
    if sd15 is not None:
        sd15.clear_cache()
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
    gc.collect()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the shared real media (photos/, audio/, video/, grid_s1/; see its MANIFEST.md)."""
    d = harness.shared_data_dir()
    if not d.is_dir():
        msg = (f"shared media directory {d} not found; set PTALK_SHARED_DATA to the directory holding "
               f"photos/ audio/ video/")
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must provide it)")
        pytest.skip(msg)
    return d


def _skip_or_fail(msg: str):
    """Skip the test for a missing tool, or fail it under CI (env ``CI`` set), where the tool must be there."""
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must provide it)")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    """Chromium (the system one, ``ptalk_harness.frontend.find_chromium``, launched by Playwright), module-scoped;
    skips without Chromium or the playwright package (fails under CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the frontend tests need the playwright Python package (pip install playwright) and Chromium "
                      "(apt-get install chromium)")
    from ptalk_harness import frontend

    try:
        exe = frontend.find_chromium()
    except frontend.BrowserUnavailable as e:
        _skip_or_fail(str(e))
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, args=frontend.CHROMIUM_ARGS)
    except Exception as e:  # noqa: BLE001 - a broken browser install
        pw.stop()
        _skip_or_fail(f"Chromium at {exe} does not start under Playwright ({type(e).__name__}: {e}); "
                      f"apt-get install chromium")
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> "harness.Comfy":
    """The in-process ComfyUI (core nodes + this pack), booted once per test session."""
    root = tmp_path_factory.mktemp("comfyui")
    return harness.boot(input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp",
                               load_pack=True)


# Real media used by several test files (read once per session; arrays are shared: do not modify them).
@pytest.fixture(scope="session")
def astronaut(shared_data):
    """photos/astronaut.png as uint8 RGB [512, 512, 3]."""
    from portraittalk.ptalk_models.media import read_image

    return read_image(shared_data / "photos" / "astronaut.png")


@pytest.fixture(scope="session")
def grid_still(shared_data):
    """photos/grid_still_lbax4n.png as uint8 RGB [288, 360, 3]."""
    from portraittalk.ptalk_models.media import read_image

    return read_image(shared_data / "photos" / "grid_still_lbax4n.png")


@pytest.fixture(scope="session")
def jfk(shared_data):
    """audio/jfk.flac: (float32 [2, N], 44100)."""
    from portraittalk.ptalk_models.media import read_audio

    return read_audio(shared_data / "audio" / "jfk.flac")


@pytest.fixture(scope="session")
def beckett(shared_data):
    """audio/beckett.wav: (float32 [1, N], 16000)."""
    from portraittalk.ptalk_models.media import read_audio

    return read_audio(shared_data / "audio" / "beckett.wav")


# MediaPipe landmarks of the two photos (IMAGE mode: deterministic), detected once per session for the tests
# that need them as an input rather than as the thing under test. Shared objects: do not modify them.
@pytest.fixture(scope="session")
def astronaut_lm(astronaut):
    """``detect_landmarks(astronaut)``: one-frame FaceLandmarks, image_size (512, 512)."""
    from portraittalk.ptalk_models.face import detect_landmarks

    return detect_landmarks(astronaut)


@pytest.fixture(scope="session")
def grid_still_lm(grid_still):
    """``detect_landmarks(grid_still)``: one-frame FaceLandmarks, image_size (360, 288)."""
    from portraittalk.ptalk_models.face import detect_landmarks

    return detect_landmarks(grid_still)


# A randomly initialised tiny SD1.5 checkpoint (scripts/random_sd15.py) for tests of the core SD graph
# (CheckpointLoaderSimple → CLIPTextEncode → KSampler → VAEDecode); written once per session (a few seconds, 466 MB).
@pytest.fixture(scope="session")
def tiny_sd15(comfy, tmp_path_factory):
    """``(path, name)`` of a tiny random SD1.5 checkpoint (size "tiny", seed 0, fp16) in a temporary directory
    registered as a ComfyUI "checkpoints" folder: ``name`` is the value for CheckpointLoaderSimple's
    ``ckpt_name``."""
    from collections import namedtuple

    from ptalk_harness import random_sd15

    d = tmp_path_factory.mktemp("checkpoints")
    path = random_sd15.write_sd15_checkpoint(d / "ptalk_random_sd15_tiny.safetensors", size="tiny", seed=0)
    comfy.folder_paths.add_model_folder_path("checkpoints", str(d))
    yield namedtuple("TinySD15", "path name")(path, path.name)
    paths = comfy.folder_paths.folder_names_and_paths["checkpoints"][0]
    if str(d) in paths:
        paths.remove(str(d))


@pytest.fixture(scope="session")
def tiny_sd15_loaded(comfy, tiny_sd15):
    """(MODEL, CLIP, VAE) of :func:`tiny_sd15`, loaded once by core CheckpointLoaderSimple."""
    return comfy.nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15.name)[:3]


@pytest.fixture(scope="session")
def tiny_identitynet(comfy, tiny_sd15_loaded, tmp_path_factory):
    """A random IdentityNet for the tiny UNet (dlib 128-D projection, seed 1) in a temporary
    ``models/portraittalk`` registered with folder_paths (a temporary ``models/ipadapter`` too).

    ``.root``: the temporary models dir; ``.name``: the IdentityNet Loader option
    (``portraittalk/ptalk_tiny_dlib.safetensors``); ``.layer_dims``: the tiny UNet's cross-attention widths.
    """
    from collections import namedtuple

    from portraittalk.nodes.glue.folders import IDENTITYNET_FOLDERS, register_identitynet_folders
    from portraittalk.nodes.glue.identity_patch import cross_attention_layers
    from portraittalk.ptalk_models.identitynet import IdentityNetConfig, new_identitynet, save_identitynet

    root = tmp_path_factory.mktemp("models")
    register_identitynet_folders()
    for folder in IDENTITYNET_FOLDERS:
        (root / folder).mkdir()
        comfy.folder_paths.add_model_folder_path(folder, str(root / folder))
    dims = [w for _, w, _ in cross_attention_layers(tiny_sd15_loaded[0])]
    cfg = IdentityNetConfig(id_dim=128, hidden=256, layer_dims=dims, embed_backend="dlib")
    save_identitynet(new_identitynet(cfg, seed=1), root / "portraittalk" / "ptalk_tiny_dlib.safetensors")
    return namedtuple("TinyIdentityNet", "root name layer_dims")(root, "portraittalk/ptalk_tiny_dlib.safetensors",
                                                                   dims)


# Random tiny SD1.5 ControlNets (scripts/random_sd15.py; lllyasviel ControlNet v1.1 layout) that fit the tiny_sd15
# UNet, for tests of core ControlNetLoader / ControlNetApplyAdvanced graphs; written once per session (~1 s, 103 MB
# each in fp16).
@pytest.fixture(scope="session")
def tiny_controlnets(comfy, tmp_path_factory):
    """Three tiny random SD1.5 ControlNets (size "tiny", fp16) in a temporary directory registered as a ComfyUI
    "controlnet" folder. Fields (``.landmarks``, ``.contour``, ``.zero``: values for core ControlNetLoader's
    ``control_net_name``):

    * ``landmarks``: ``ptalk_random_cn_landmarks_tiny.safetensors`` (seed 1, "trained": non-zero zero convs);
    * ``contour``: ``ptalk_random_cn_contour_tiny.safetensors`` (seed 2, "trained");
    * ``zero``: ``ptalk_random_cn_zero_tiny.safetensors`` (seed 1, ``zero_out=True``: an untrained ControlNet,
      which leaves the sampled image unchanged);
    * ``dir``: the directory (``Path``) holding the three files.
    """
    from collections import namedtuple

    from ptalk_harness import random_sd15

    d = tmp_path_factory.mktemp("controlnet")
    files = [random_sd15.write_controlnet(d / f"ptalk_random_cn_{name}_tiny.safetensors", size="tiny", seed=seed,
                                          zero_out=zero_out)
             for name, seed, zero_out in (("landmarks", 1, False), ("contour", 2, False), ("zero", 1, True))]
    comfy.folder_paths.add_model_folder_path("controlnet", str(d))
    yield namedtuple("TinyControlNets", "landmarks contour zero dir")(*(p.name for p in files), d)
    paths = comfy.folder_paths.folder_names_and_paths["controlnet"][0]
    if str(d) in paths:
        paths.remove(str(d))


@pytest.fixture(scope="session")
def tiny_animatenet(tiny_sd15_loaded, tiny_identitynet):
    """A tiny AnimateNet for the tiny UNet (initialised from it, seed 0; zero convs given small random values and
    w1..w3 set to 1 so the branch and its temporal term act, standing in for stage-2-trained weights) saved as ``models/portraittalk/ptalk_tiny_animatenet.
    safetensors`` in :func:`tiny_identitynet`'s registered folder. ``.name``: the AnimateNet Loader option;
    ``.net``: the module."""
    from collections import namedtuple

    import torch

    from portraittalk.nodes.glue.patcher import unet_config
    from portraittalk.ptalk_models.animatenet import AnimateNetConfig, new_animatenet, save_animatenet

    model = tiny_sd15_loaded[0]
    net = new_animatenet(AnimateNetConfig.from_unet_config(unet_config(model)), seed=0,
                         unet_sd=model.model.diffusion_model.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("zero_convs", "middle_block_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif name.endswith(".weights"):  # w1..w3 = 1: the temporal term on, as after stage 2
                p.fill_(1.0)
    net.eval().requires_grad_(False)
    name = "ptalk_tiny_animatenet.safetensors"
    save_animatenet(net, tiny_identitynet.root / "portraittalk" / name)
    return namedtuple("TinyAnimateNet", "name net")(name, net)


@pytest.fixture(scope="session")
def a2m_cache(shared_data, tmp_path_factory) -> Path:
    """Prepared audio→motion clips (see the module docstring); about 15 s to extract."""
    from ptalk_harness.audio2motion_data import extract_clip, list_clips

    cache = tmp_path_factory.mktemp("a2m_cache")
    wanted = {"grid_video_lbax4n", "crema_1001_DFA_NEU_XX", "retalking_face_1", "retalking_face_2"}
    clips = list_clips(shared_data, grid_clips=4)
    for c in clips:
        if c.speaker == "grid_s1" or c.name in wanted:
            extract_clip(c, cache)
    return cache
