#!/usr/bin/env python3
"""Build, tag and verify reproducible PyTorch/CUDA images. See `python build.py --help`."""
import sys

from builder.cli import main

if __name__ == "__main__":
    sys.exit(main())
