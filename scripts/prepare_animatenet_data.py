#!/usr/bin/env python3
"""Prepare consecutive frame pairs of talking-head videos for AnimateNet training (PortraitTalk §III-B).

    .venv/bin/python scripts/prepare_animatenet_data.py --help

The command line of :mod:`ptalk_harness.animatenet_data` (options, outputs and exit status: its docstring).
"""
import sys

from ptalk_harness.animatenet_data import main

if __name__ == "__main__":
    sys.exit(main())
