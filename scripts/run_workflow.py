#!/usr/bin/env python3
"""Run a saved ComfyUI workflow headless, in-process, and copy the video it saves to --out.

    python scripts/run_workflow.py workflows/talking_photo.json --image face.png --audio speech.wav --out talk.mp4
    python scripts/run_workflow.py workflows/dubbing.json --video clip.mp4 --audio speech.wav --out dubbed.mp4
    python scripts/run_workflow.py workflows/dubbing_diffusion.json --video clip.mp4 --audio speech.wav \
        --models-dir ~/ComfyUI/models --set CheckpointLoaderSimple.ckpt_name=my_sd15.safetensors

The command line of :mod:`ptalk_harness.workflow_cli` (inputs, demo defaults, options and exit status: its
docstring). Exit status: 0 done; 1 the workflow failed (the message names the node); 2 bad arguments / missing files.
"""
import sys

from ptalk_harness.workflow_cli import main

if __name__ == "__main__":
    sys.exit(main())
