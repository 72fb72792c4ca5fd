"""Which venv groups a rebuild reinstalled, read from each builder's output: the lock-bump test
and bench depend on it. Excerpts of real output (Docker 20.10's classic builder,
BuildKit's plain progress), commands shortened."""
from __future__ import annotations

from builder.engine.buildlog import downloaded, reinstalled

RUN = ("RUN --mount=type=secret,id=build-ca,target=/tmp/build/build-ca.pem --mount=type=cache,id=pytorch-cuda-pip,"
       "target=/var/cache/pip PIP_CACHE_DIR=/var/cache/pip /tmp/build/install-layer venv-{g} --index-url "
       "https://pypi.org/simple  && /tmp/build/drop-staged venv-{g}")
BUILDKIT = f"""#21 [venv-rest 2/2] {RUN.format(g="rest")}
#21 sha256:a8673723ccfde36ccb78ff417e435721c8810b76ac2cb4f20d534bb914994178
#21 0.612 Collecting numpy==2.3.2 (from -r venv-rest.lock (line 3))
#21 DONE 14.2s

#15 [venv-torch 2/2] {RUN.format(g="torch")}
#15 sha256:0c2bd23e4b0c4e3f4b7e0c2b1ad6f73c5c6f1c2d9cbbbe4b2e3a0e7f2c1d0b9a
#15 CACHED
"""
CLASSIC = """Step 14/40 : RUN /tmp/build/install-layer venv-torch --index-url https://pypi.org/simple
 ---> Using cache
 ---> 3f1c0d2e9a8b
Step 15/40 : RUN /tmp/build/install-layer venv-rest --index-url https://pypi.org/simple
 ---> Running in 6a7b8c9d0e1f
Collecting numpy==2.3.2
"""


def test_buildkit_steps_run_and_cached():
    assert reinstalled(BUILDKIT, "buildkit", "rest")
    assert not reinstalled(BUILDKIT, "buildkit", "torch")


def test_classic_steps_run_and_cached():
    assert reinstalled(CLASSIC, "classic", "rest")
    assert not reinstalled(CLASSIC, "classic", "torch")


def test_a_group_whose_step_is_not_in_the_output_counts_as_reinstalled():
    """Never report "not reinstalled" for a step the parser did not find."""
    assert reinstalled(BUILDKIT, "buildkit", "triton")
    assert reinstalled(CLASSIC, "classic", "nvidia")


def test_downloaded_names_what_pip_fetched_not_what_it_had_cached():
    log = """#21 1.2 Collecting numpy==2.3.2 (from -r venv-rest.lock (line 3))
#21 1.3   Downloading numpy-2.3.2-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl (16.6 MB)
#21 1.9 Collecting nvidia-ml-py==13.580.65 (from -r venv-rest.lock (line 9))
#21 2.0   Downloading https://pypi.org/packages/ab/cd/nvidia_ml_py-13.580.65-py3-none-any.whl (48 kB)
#21 2.1 Collecting typing-extensions==4.15.0
#21 2.1   Using cached typing_extensions-4.15.0-py3-none-any.whl (44 kB)
"""
    assert downloaded(log) == ["numpy", "nvidia-ml-py"]
    assert downloaded(CLASSIC) == []
