"""Ask an image what it contains, by running builder/inside/facts.py in it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.engine import Engine
from builder.errors import BuildFailed

SCRIPT = Path(__file__).parent / "inside" / "facts.py"


def collect(c: Engine, image: str, full: bool = False) -> dict[str, Any]:
    """Run the facts script through the image's own entrypoint and user; parse its report."""
    command = ["python", "-c", SCRIPT.read_text()] + (["--full"] if full else [])
    result = c.run(image, command, network_disabled=True)
    for line in result.output.splitlines():
        if line.startswith("FACTS "):
            return json.loads(line[len("FACTS "):])
    raise BuildFailed(f"image {image} did not report its contents (exit {result.exit_code}):\n"
                      f"{result.output[-3000:]}")
