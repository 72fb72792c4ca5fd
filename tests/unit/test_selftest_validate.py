"""validate's pure helpers: version comparison, torch's CUDA warnings, arch coverage, env flags, image info."""

import json

import pytest

import selftest_samples  # noqa: F401  (puts the repo root on sys.path)
from selftest import validate
from selftest.check import FAIL, PASS, SKIP, WARN
from selftest.imageinfo import ImageInfo, load_image_info

LABELS = {
    "pytorch-cuda.variant": "runtime",
    "pytorch-cuda.flavor": "runtime",
    "pytorch-cuda.torch": "2.8.0",
    "pytorch-cuda.cuda": "12.8",
    "pytorch-cuda.cudnn": "9.10.2.21",
    "pytorch-cuda.nccl": "2.27.3",
    "pytorch-cuda.triton": "3.4.0",
    "pytorch-cuda.python": "3.12",
    "pytorch-cuda.os": "ubuntu24.04",
    "org.opencontainers.image.version": "2.8.0-cu128-cudnn9-py3.12-ubuntu24.04-runtime",
}
IMAGE = ImageInfo(path="/etc/pytorch-cuda/image.json", found=True, labels=LABELS, gpu_hour_usd={"H200": 3.5})
HOST = ImageInfo(path="/etc/pytorch-cuda/image.json")


def test_version_text():
    assert validate.public_version("2.8.0+cu128") == "2.8.0"
    assert validate.cudnn_version_text(91002) == "9.10.2"
    assert validate.cudnn_version_text(8902) == "8.9.2"
    assert validate.cudnn_version_text(None) is None
    assert validate.nccl_version_text((2, 27, 3)) == "2.27.3"
    assert validate.nccl_version_text(22703) == "2.27.3"
    assert validate.nccl_version_text(2708) == "2.7.8"


def test_versions_match_labels_inside_image():
    torch = validate.version_check(
        "torch.version", "torch", validate.public_version("2.8.0+cu128"), IMAGE, "pytorch-cuda.torch", 3, "rebuild"
    )
    cudnn = validate.version_check(
        "cudnn.version", "cuDNN", validate.cudnn_version_text(91002), IMAGE, "pytorch-cuda.cudnn", 3, "rebuild"
    )
    nccl = validate.version_check(
        "nccl.version", "NCCL", validate.nccl_version_text((2, 27, 3)), IMAGE, "pytorch-cuda.nccl", 3, "rebuild"
    )
    cuda = validate.version_check("cuda.version", "CUDA", "12.8", IMAGE, "pytorch-cuda.cuda", 2, "rebuild")
    assert [c.status for c in (torch, cudnn, nccl, cuda)] == [PASS] * 4


def test_version_mismatch_fails_with_remedy():
    c = validate.version_check("torch.version", "torch", "2.7.1", IMAGE, "pytorch-cuda.torch", 3, "rebuild the image")
    assert c.status == FAIL and "2.7.1" in c.message and "2.8.0" in c.message and c.remedy == "rebuild the image"


def test_versions_are_skipped_outside_an_image():
    c = validate.version_check("torch.version", "torch", "2.8.0", HOST, "pytorch-cuda.torch", 3, "x")
    assert c.status == SKIP


def test_missing_version_inside_image_fails():
    c = validate.version_check("nccl.version", "NCCL", None, IMAGE, "pytorch-cuda.nccl", 3, "x")
    assert c.status == FAIL


def test_torch_warning_driver_too_old_becomes_failure_with_fix():
    text = (
        "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040). Please update "
        "your GPU driver by downloading and installing a new version from the URL: "
        "http://www.nvidia.com/Download/index.aspx"
    )
    status, message, remedy = validate.interpret_cuda_warnings([text], "12.8")
    assert status == FAIL
    assert "too old" in message and "11.4" in message
    assert "570.26" in remedy


def test_torch_warning_no_driver_points_to_gpus_all():
    text = "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver"
    status, _, remedy = validate.interpret_cuda_warnings([text], "12.8")
    assert status == WARN and "--gpus all" in remedy and "Container Toolkit" in remedy


def test_torch_warning_fabric_manager():
    text = "CUDA initialization: Unexpected error from cudaGetDeviceCount(). Error 802: system not yet initialized"
    status, message, remedy = validate.interpret_cuda_warnings([text], "12.8")
    assert status == FAIL and "fabricmanager" in remedy


def test_unrelated_warnings_are_ignored():
    assert validate.interpret_cuda_warnings(["something else entirely"], "12.8") is None


@pytest.mark.parametrize(
    "cap,arch_list,status",
    [
        ((9, 0), ["sm_80", "sm_90", "sm_100"], PASS),
        ((8, 6), ["sm_80", "sm_90"], PASS),  # sm_80 binaries run on sm_86
        ((9, 0), ["sm_80", "compute_80"], WARN),  # PTX only: JIT at first use
        ((12, 0), ["sm_80", "sm_90"], FAIL),  # Blackwell on an old build
        ((9, 0), ["sm_90a"], FAIL),  # arch-specific code is not portable
    ],
)
def test_arch_check(cap, arch_list, status):
    c = validate.arch_check(0, "GPU", cap, arch_list)
    assert c.status == status
    if status == FAIL:
        assert f"no kernel image for sm_{cap[0]}{cap[1]} in this torch build" in c.message


def test_env_flags():
    checks, flagged = validate.env_flag_checks(
        {
            "CUDA_LAUNCH_BLOCKING": "1",
            "CUDA_INJECTION64_PATH": "/opt/nsight/libinj.so",
            "CUDA_VISIBLE_DEVICES": "",
            "NVIDIA_DRIVER_CAPABILITIES": "compute",
            "PATH": "/bin",
        }
    )
    ids = {c.id for c in checks}
    assert ids == {
        "env.CUDA_LAUNCH_BLOCKING",
        "env.CUDA_INJECTION64_PATH",
        "env.CUDA_VISIBLE_DEVICES",
        "env.NVIDIA_DRIVER_CAPABILITIES",
    }
    assert all(c.status == WARN and c.remedy for c in checks)
    assert flagged["CUDA_LAUNCH_BLOCKING"] == "1"


def test_harmless_env_passes():
    checks, flagged = validate.env_flag_checks(
        {"CUDA_LAUNCH_BLOCKING": "0", "CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    )
    assert [c.status for c in checks] == [PASS] and flagged == {}


def test_image_info_file(tmp_path, monkeypatch):
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"labels": LABELS, "gpu_hour_usd": {"H200": 3.5, "H100": 2.5}}))
    monkeypatch.setenv("SELFTEST_IMAGE_INFO", str(path))
    info = load_image_info()
    assert info.inside_image and info.tag == LABELS["org.opencontainers.image.version"]
    assert info.gpu_hour_usd == {"H200": 3.5, "H100": 2.5}


@pytest.mark.parametrize("content", ["{broken", "[]", '{"labels": {}, "gpu_hour_usd": {"H200": "cheap"}}'])
def test_damaged_image_info_is_reported_not_raised(tmp_path, content):
    path = tmp_path / "image.json"
    path.write_text(content)
    info = load_image_info(str(path))
    assert info.found and info.error and not info.inside_image


def test_missing_image_info():
    info = load_image_info("/nonexistent/image.json")
    assert not info.found and not info.inside_image and info.error is None


class _Vfs:
    def __init__(self, blocks: int, frsize: int = 4096):
        self.f_blocks, self.f_frsize = blocks, frsize


def test_docker_default_shm_warns_with_the_remedy():
    check = validate.shm_check(statvfs=lambda path: _Vfs(64 * 2**20 // 4096))
    assert check.status == WARN and "64 MiB" in check.message and "DataLoader" in check.message
    assert "--shm-size" in check.remedy and "--ipc=host" in check.remedy


def test_one_gib_of_shm_passes():
    check = validate.shm_check(statvfs=lambda path: _Vfs(2**30 // 4096))
    assert check.status == PASS and "1.0 GiB" in check.message


def test_unreadable_shm_warns_instead_of_raising():
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory")
    check = validate.shm_check(statvfs=missing)
    assert check.status == WARN and "No such file" in check.message
