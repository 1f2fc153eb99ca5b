"""The one way the pack is imported outside ComfyUI: ``portraittalk`` (harness/ptalk_harness/pack.py).

* ``portraittalk.x`` is the very module ComfyUI's ``nodes.load_custom_node`` loaded (one copy, shared classes);
* the engine (``portraittalk.ptalk_models``) imports in a fresh interpreter without ComfyUI on ``sys.path``;
* the repository root is never on ``sys.path`` (its ``nodes/`` would shadow ComfyUI's ``nodes``).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import ptalk_harness as harness
from portraittalk.ptalk_models.landmarks import FaceLandmarks


def test_portraittalk_is_the_pack_comfyui_loaded(comfy):
    import nodes

    pack = sys.modules[comfy.pack_module]
    assert comfy.pack_module == harness.PACK_MODULE
    import portraittalk.ptalk_models.landmarks as via_alias

    assert via_alias is sys.modules[f"{comfy.pack_module}.ptalk_models.landmarks"]
    assert via_alias.FaceLandmarks is FaceLandmarks
    # the node classes ComfyUI registered come from the same modules
    draw = nodes.NODE_CLASS_MAPPINGS["PTalkDrawLandmarks"]
    assert sys.modules[draw.__module__] is sys.modules[f"{comfy.pack_module}.nodes.draw_landmarks"]
    assert pack.__file__ == str(harness.REPO_ROOT / "__init__.py")
    # the alias hands back the real module's own spec, not the alias's
    assert via_alias.__spec__.name == f"{comfy.pack_module}.ptalk_models.landmarks"


def test_repo_root_is_not_on_sys_path():
    root = str(harness.REPO_ROOT)
    assert root not in [str(p) for p in sys.path], sys.path
    import nodes

    assert harness.find_comfyui_dir() == __import__("pathlib").Path(nodes.__file__).resolve().parent


def test_engine_imports_without_comfyui_in_a_fresh_interpreter():
    code = textwrap.dedent("""
        import sys
        from portraittalk.ptalk_models.landmarks import FaceLandmarks
        from portraittalk.ptalk_models import render
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_api", "nodes", "folder_paths"))
        print("COMFY_MODULES", bad)
        print("NAME", FaceLandmarks.__module__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd="/")
    assert out.returncode == 0, out.stderr
    assert "COMFY_MODULES []" in out.stdout, out.stdout
    assert f"NAME {harness.PACK_MODULE}.ptalk_models.landmarks" in out.stdout
