#!/usr/bin/env python3
"""Landmarks + speech of the shared talking-face clips for the neural audio→motion model, split by speaker.

    .venv/bin/python scripts/prepare_audio2motion_data.py [--cache DIR] [--grid-clips N]

The command line of :mod:`ptalk_harness.audio2motion_data` (clips, split and outputs: its docstring).
"""
import sys

from ptalk_harness.audio2motion_data import main

if __name__ == "__main__":
    sys.exit(main())
