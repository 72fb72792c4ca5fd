"""Rendering is deterministic, free of surprises, and images/ matches the templates."""
from __future__ import annotations

import re

import pytest

from builder import manifest, render
from builder.errors import UserError


def test_committed_images_match_the_templates():
    assert render.check_drift(manifest.load()) == [], "run `python build.py render --all` and commit images/"


def test_rendering_twice_gives_the_same_bytes():
    m = manifest.load()
    assert render.render_all(m) == render.render_all(m)


def test_drift_is_detected(tmp_path):
    m = manifest.load()
    render.write(m, list(m.variants()), out=tmp_path)
    assert render.check_drift(m, out=tmp_path) == []
    dockerfile = tmp_path / "runtime" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("tini", "dumb-init"))
    (tmp_path / "stale-variant").mkdir()
    problems = render.check_drift(m, out=tmp_path)
    assert any("runtime/Dockerfile differs" in p for p in problems)
    assert any("stale-variant is not a variant" in p for p in problems)


def test_templates_hold_no_version_numbers():
    for path in render.TEMPLATES.rglob("*.j2"):
        text = path.read_text()
        assert not re.search(r"\b(2\.8\.0|12\.[6-9]|9\.10|3\.12|24\.04|noble)\b", text), path


def test_every_pinned_version_reaches_the_labels():
    m = manifest.load()
    dockerfile = render.render_variant(m.variant("runtime"))["Dockerfile"]
    cuda = m.cudas["cu128"]
    for key, value in [("torch", cuda.torch), ("cuda", cuda.cuda), ("cudnn", cuda.cudnn),
                       ("nccl", cuda.nccl), ("triton", cuda.triton), ("python", m.python),
                       *m.data["python_packages"].items()]:
        assert f'pytorch-cuda.{key}="{value}"' in dockerfile


def test_runtime_stage_is_the_same_in_every_flavor_of_a_cuda_build():
    """Flavors build on runtime's layers, so its stage must render identically in each."""
    m = manifest.load()

    def runtime_stage(name: str) -> str:
        text = render.render_variant(m.variant(name))["Dockerfile"]
        return text[text.index("FROM os AS runtime"):text.index("CMD [")]
    assert runtime_stage("runtime") == runtime_stage("jupyter") == runtime_stage("workstation")


def test_other_cuda_builds_use_their_own_index_and_pypi_as_extra():
    m = manifest.load()
    text = render.render_variant(m.variant("runtime-cu129"))["Dockerfile"]
    assert "--index-url https://download.pytorch.org/whl/cu129" in text
    assert "--extra-index-url https://pypi.org/simple" in text


def test_missing_template_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(render, "TEMPLATES", tmp_path)
    with pytest.raises(UserError, match="Dockerfile.j2 is missing"):
        render.render_variant(manifest.load().variant("runtime"))
