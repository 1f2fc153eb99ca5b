#!/usr/bin/env python3
"""AnimateNet training (PortraitTalk §III-B, loss Eq. 3) on a user's SD1.5 checkpoint, headless.

    .venv/bin/python scripts/train_animatenet.py --help

The command line of :mod:`ptalk_harness.train_animatenet` (options, outputs and exit status: its docstring).
"""
import sys

from ptalk_harness.train_animatenet import main

if __name__ == "__main__":
    sys.exit(main())
