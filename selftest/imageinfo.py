"""What the image says about itself: its labels and a GPU-hour price table.

The image build writes /etc/pytorch-cuda/image.json with the OCI labels (every
pinned version) and a default price per GPU model.  On a host run the file is
absent and the version checks are skipped rather than failed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

DEFAULT_PATH = "/etc/pytorch-cuda/image.json"
ENV_PATH = "SELFTEST_IMAGE_INFO"
ENV_IMAGE_REF = "PYTORCH_CUDA_IMAGE"

LABEL_VARIANT = "pytorch-cuda.variant"
LABEL_FLAVOR = "pytorch-cuda.flavor"
LABEL_TORCH = "pytorch-cuda.torch"
LABEL_CUDA = "pytorch-cuda.cuda"
LABEL_CUDNN = "pytorch-cuda.cudnn"
LABEL_NCCL = "pytorch-cuda.nccl"
LABEL_TRITON = "pytorch-cuda.triton"
LABEL_PYTHON = "pytorch-cuda.python"
LABEL_OS = "pytorch-cuda.os"
LABEL_VERSION = "org.opencontainers.image.version"


@dataclass
class ImageInfo:
    """Labels and prices read from the image, or why they could not be read."""

    path: str
    found: bool = False
    labels: dict = field(default_factory=dict)
    gpu_hour_usd: dict = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def inside_image(self) -> bool:
        return self.found and self.error is None

    @property
    def tag(self) -> Optional[str]:
        """The image reference: each flavor stage sets PYTORCH_CUDA_IMAGE (image.json is shared)."""
        return os.environ.get(ENV_IMAGE_REF) or self.labels.get(LABEL_VERSION)


def info_path() -> str:
    return os.environ.get(ENV_PATH) or DEFAULT_PATH


def load_image_info(path: Optional[str] = None) -> ImageInfo:
    """Read the image's self-description; never raises."""
    path = path or info_path()
    info = ImageInfo(path=path)
    if not os.path.exists(path):
        return info
    info.found = True
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        info.error = f"cannot read {path}: {exc}"
        return info
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        info.error = f"{path} has no 'labels' object"
        return info
    info.labels = {str(k): str(v) for k, v in data["labels"].items()}
    prices = data.get("gpu_hour_usd") or {}
    if not isinstance(prices, dict):
        info.error = f"{path}: 'gpu_hour_usd' is not an object"
        return info
    try:
        info.gpu_hour_usd = {str(k): float(v) for k, v in prices.items()}
    except (TypeError, ValueError):
        info.error = f"{path}: 'gpu_hour_usd' holds a non-numeric price"
    return info


def _name_matches(key: str, gpu_name: str) -> bool:
    """'H100' matches 'NVIDIA H100 80GB HBM3' but 'L4' does not match 'NVIDIA L40S'."""
    pattern = r"(?<![A-Za-z0-9])" + re.escape(key) + r"(?![0-9A-Za-z])"
    return re.search(pattern, gpu_name, flags=re.IGNORECASE) is not None


def price_for_gpu(prices: dict, gpu_name: Optional[str]) -> Optional[tuple[str, float]]:
    """(matched key, price) for the longest key found in the GPU name, else None."""
    if not gpu_name:
        return None
    matches = [(k, v) for k, v in prices.items() if _name_matches(k, gpu_name)]
    if not matches:
        return None
    return max(matches, key=lambda kv: len(kv[0]))
