"""The BuildKit backend's command line: what the docker CLI is asked (the build itself runs in the
integration tests, against a real engine)."""
from pathlib import Path

from builder.engine import buildkit


def test_the_build_ca_is_a_secret_and_the_context_comes_on_stdin() -> None:
    argv = buildkit.build_argv(["docker", "buildx", "build", "--load"], dockerfile="Dockerfile.buildkit",
                               target="runtime", iidfile="/tmp/x/iid", nocache=False,
                               extra_hosts={"debs.internal": "172.17.0.2"}, buildargs={"SOURCE_REVISION": "abc"},
                               secrets={"build-ca": Path("/etc/ssl/certs/ca-certificates.crt")})
    assert argv[:4] == ["docker", "buildx", "build", "--load"] and argv[-1] == "-"
    assert argv[argv.index("-f") + 1] == "Dockerfile.buildkit"
    assert argv[argv.index("--target") + 1] == "runtime"
    assert argv[argv.index("--iidfile") + 1] == "/tmp/x/iid"
    assert argv[argv.index("--secret") + 1] == "id=build-ca,src=/etc/ssl/certs/ca-certificates.crt"
    assert argv[argv.index("--add-host") + 1] == "debs.internal:172.17.0.2"
    assert argv[argv.index("--build-arg") + 1] == "SOURCE_REVISION=abc"
    assert "--no-cache" not in argv


def test_no_cache_and_no_secret() -> None:
    argv = buildkit.build_argv(["docker", "build"], dockerfile="D", target="t", iidfile="i", nocache=True,
                               extra_hosts={}, buildargs={}, secrets={})
    assert "--no-cache" in argv and "--secret" not in argv and "--add-host" not in argv
