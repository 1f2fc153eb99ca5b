"""Shared pytest fixtures for ComfyUI-PortraitTalk.

* ``comfy`` (session): the real ComfyUI booted once in-process by ``scripts/comfy_headless.py`` with
  temporary input/output/temp directories and this pack loaded through ``nodes.load_custom_node``.
* ``shared_data``: ``Path`` of the shared real-media directory (``$PTALK_SHARED_DATA`` or
  ``<repo>/../shared/data``); skips when absent, but fails under CI (env ``CI`` set), where it must exist.

The repo root is *appended* to ``sys.path`` so tests can ``import ptalk_models`` without shadowing
ComfyUI's top-level ``nodes`` module with this pack's ``nodes/`` package; so is ``scripts/`` (for
``import comfy_headless``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (str(REPO_ROOT), str(REPO_ROOT / "scripts")):
    if _p not in sys.path:
        sys.path.append(_p)

import comfy_headless  # noqa: E402  (scripts/, appended above; importing it has no side effects)

# The repo root holds the pack's __init__.py, so pytest collects the root as a package and imports that
# __init__.py (which imports comfy_api) before running any test; make ComfyUI importable first (cheap: no
# node is loaded here).
comfy_headless.prepare()


def _shared_data_dir() -> Path:
    env = os.environ.get("PTALK_SHARED_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory of the shared real media (photos/, audio/, video/, grid_s1/; see its MANIFEST.md)."""
    d = _shared_data_dir()
    if not d.is_dir():
        msg = (f"shared media directory {d} not found; set PTALK_SHARED_DATA to the directory holding "
               f"photos/ audio/ video/")
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must provide it)")
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> "comfy_headless.Comfy":
    """The in-process ComfyUI (core nodes + this pack), booted once per test session."""
    root = tmp_path_factory.mktemp("comfyui")
    return comfy_headless.boot(input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp",
                               load_pack=True)


# Real media used by several test files (read once per session; arrays are shared: do not modify them).
@pytest.fixture(scope="session")
def astronaut(shared_data):
    """photos/astronaut.png as uint8 RGB [512, 512, 3]."""
    from ptalk_models.media import read_image

    return read_image(shared_data / "photos" / "astronaut.png")


@pytest.fixture(scope="session")
def grid_still(shared_data):
    """photos/grid_still_lbax4n.png as uint8 RGB [288, 360, 3]."""
    from ptalk_models.media import read_image

    return read_image(shared_data / "photos" / "grid_still_lbax4n.png")


@pytest.fixture(scope="session")
def jfk(shared_data):
    """audio/jfk.flac: (float32 [2, N], 44100)."""
    from ptalk_models.media import read_audio

    return read_audio(shared_data / "audio" / "jfk.flac")


@pytest.fixture(scope="session")
def beckett(shared_data):
    """audio/beckett.wav: (float32 [1, N], 16000)."""
    from ptalk_models.media import read_audio

    return read_audio(shared_data / "audio" / "beckett.wav")
