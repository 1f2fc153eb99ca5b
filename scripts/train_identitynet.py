#!/usr/bin/env python3
"""IdentityNet masked fine-tuning (PortraitTalk §III-A, Eq. 1) on a user's SD1.5 checkpoint, headless.

    .venv/bin/python scripts/train_identitynet.py --help

The command line of :mod:`ptalk_harness.train_identitynet` (options, outputs and exit status: its docstring).
"""
import sys

from ptalk_harness.train_identitynet import main

if __name__ == "__main__":
    sys.exit(main())
