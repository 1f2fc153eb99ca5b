#!/usr/bin/env python3
"""Prepare face frames + Face Embed embeddings for IdentityNet masked fine-tuning (PortraitTalk §III-A).

    .venv/bin/python scripts/prepare_identity_data.py --help

The command line of :mod:`ptalk_harness.identity_data` (options, outputs and exit status: its docstring).
"""
import sys

from ptalk_harness.identity_data import main

if __name__ == "__main__":
    sys.exit(main())
