"""Tags: computed from the versions found inside a built image, then checked against the manifest.

The tag is a promise about the image's contents, so it is derived from what the image reports
about itself, never from what we meant to put in it; the manifest only gets to veto.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from builder.manifest import Variant


@dataclass(frozen=True)
class ImageVersions:
    """The versions a tag is made of."""

    torch: str  # public version, "2.8.0"
    # not in the tag's text, but checked with it: the pair PyTorch released with that torch
    torchvision: str
    torchaudio: str
    cuda: str  # "12.8"
    cudnn_major: int
    python: str  # "3.12"
    os_id: str  # "ubuntu"
    os_version: str  # "24.04"


def full_tag(v: ImageVersions, flavor: str) -> str:
    """`{torch}-cu{cuda}-cudnn{major}-py{python}-{os}{version}-{flavor}`, e.g.
    2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime."""
    cuda = v.cuda.replace(".", "")
    return f"{v.torch}-cu{cuda}-cudnn{v.cudnn_major}-py{v.python}-{v.os_id}{v.os_version}-{flavor}"


def build_date(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y%m%d")


def short_tag(v: ImageVersions, flavor: str) -> str:
    """The moving tag, e.g. 2.8-cu128-runtime: follows the newest patch release."""
    torch = Version(v.torch)
    return f"{torch.major}.{torch.minor}-cu{v.cuda.replace('.', '')}-{flavor}"


def tags_for(v: ImageVersions, flavor: str, epoch: int) -> list[str]:
    """The full tag, its immutable dated twin (the date is the manifest's build date), the short moving tag."""
    tag = full_tag(v, flavor)
    return [tag, f"{tag}-{build_date(epoch)}", short_tag(v, flavor)]


def expected_versions(variant: Variant) -> ImageVersions:
    """What the manifest says the image should report."""
    m = variant.manifest
    return ImageVersions(torch=variant.cuda.torch, torchvision=variant.cuda.torchvision,
                         torchaudio=variant.cuda.torchaudio, cuda=variant.cuda.cuda,
                         cudnn_major=Version(variant.cuda.cudnn).major,
                         python=m.python, os_id=m.os["name"], os_version=m.os["version"])


def cudnn_version(code: int) -> str:
    """torch.backends.cudnn.version() → "9.10.2" (cuDNN 9 encodes major*10000+minor*100+patch)."""
    if code >= 90000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"  # cuDNN 8 and older


def observed_versions(facts: dict[str, Any]) -> ImageVersions:
    """What the image reported about itself (see builder/inside/facts.py)."""
    python = Version(facts["python"])
    return ImageVersions(torch=Version(facts["torch"]).public,
                         torchvision=Version(facts.get("torchvision") or "0").public,
                         torchaudio=Version(facts.get("torchaudio") or "0").public, cuda=facts["cuda"],
                         cudnn_major=Version(cudnn_version(facts["cudnn"])).major,
                         python=f"{python.major}.{python.minor}",
                         os_id=facts["os_id"], os_version=facts["os_version"])


def mismatches(expected: ImageVersions, observed: ImageVersions) -> list[str]:
    """Human-readable differences, one per field."""
    return [f"{field}: manifest says {getattr(expected, field)!r}, image has {getattr(observed, field)!r}"
            for field in expected.__dataclass_fields__
            if getattr(expected, field) != getattr(observed, field)]
