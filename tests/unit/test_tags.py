"""Tags come from what the image reports; the manifest can only veto."""
from builder import manifest, tags

FACTS = {"python": "3.12.3", "torch": "2.8.0+cu128", "cuda": "12.8", "cudnn": 91002,
         "torchvision": "0.23.0+cu128", "torchaudio": "2.8.0+cu128", "os_id": "ubuntu", "os_version": "24.04"}


def test_tags_from_reported_versions():
    observed = tags.observed_versions(FACTS)
    assert tags.tags_for(observed, "runtime", 1795824000) == [
        "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
        "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime-20261128",
        "2.8-cu128-runtime",
    ]


def test_cudnn_version_codes():
    assert tags.cudnn_version(91002) == "9.10.2"
    assert tags.cudnn_version(90100) == "9.1.0"
    assert tags.cudnn_version(8902) == "8.9.2"


def test_manifest_and_image_agree():
    variant = manifest.load().variant("runtime")
    assert tags.mismatches(tags.expected_versions(variant), tags.observed_versions(FACTS)) == []


def test_mismatch_names_the_field_and_both_values():
    variant = manifest.load().variant("runtime")
    observed = tags.observed_versions({**FACTS, "torch": "2.7.1+cu126", "cuda": "12.6"})
    wrong = tags.mismatches(tags.expected_versions(variant), observed)
    assert "torch: manifest says '2.8.0', image has '2.7.1'" in wrong
    assert "cuda: manifest says '12.8', image has '12.6'" in wrong
    assert len(wrong) == 2


def test_a_torchaudio_built_for_another_torch_vetoes_the_tag():
    """What an unpinned resolve next to torch 2.8.0 picks: torchaudio 2.11.0."""
    variant = manifest.load().variant("runtime")
    observed = tags.observed_versions({**FACTS, "torchaudio": "2.11.0"})
    assert tags.mismatches(tags.expected_versions(variant), observed) == [
        "torchaudio: manifest says '2.8.0', image has '2.11.0'"]
    missing = tags.observed_versions({k: v for k, v in FACTS.items() if k != "torchvision"})
    assert tags.mismatches(tags.expected_versions(variant), missing) == [
        "torchvision: manifest says '0.23.0', image has '0'"]


def test_tag_of_another_cuda_build():
    variant = manifest.load().variant("jupyter-cu126")
    assert tags.full_tag(tags.expected_versions(variant), "jupyter") == \
        "2.8.0-cu126-cudnn9-py3.12-ubuntu24.04-jupyter"
