"""Where the builder keeps what it learned on this machine (normalized layers, layer scans).

Everything here is keyed by content (layer digests), so a stale entry is never wrong, only
unused; deleting the directory costs time, not correctness.
"""
from __future__ import annotations

import os
from pathlib import Path


def path(*parts: str) -> Path:
    """A path under $XDG_CACHE_HOME/pytorch-cuda (read at each call, so tests and benches can move it)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytorch-cuda"
    return root.joinpath(*parts)
