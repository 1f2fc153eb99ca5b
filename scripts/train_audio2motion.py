#!/usr/bin/env python3
"""Neural audio→motion training (PortraitTalk §III-B: dilated-conv VAE over speech features), on the CPU.

    .venv/bin/python scripts/prepare_audio2motion_data.py        # landmarks of the shared clips (~10 min)
    .venv/bin/python scripts/train_audio2motion.py --out runs/a2m

The command line of :mod:`ptalk_harness.train_audio2motion` (options, outputs and exit status: its docstring).
"""
import sys

from ptalk_harness.train_audio2motion import main

if __name__ == "__main__":
    sys.exit(main())
