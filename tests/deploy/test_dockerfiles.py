"""deploy/docker/: the images run slm-server as a non-root user, on the ports settings use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.settings import Settings

from . import compose, dockerfile, k8s
from .project import (
    DOCKERFILE,
    DOCKERFILE_GPU,
    ROOT,
    command_problems,
    known_subcommands,
    pyproject,
)

DOCKERFILES = [DOCKERFILE, DOCKERFILE_GPU]
WORKER_PORT = 9100  # SLM_WORKER_PORT in compose and Kubernetes


def ids(path: Path) -> str:
    return path.name


@pytest.fixture(params=DOCKERFILES, ids=ids)
def image(request: pytest.FixtureRequest) -> dockerfile.Dockerfile:
    return dockerfile.parse(request.param)


def runs(stage: dockerfile.Stage) -> str:
    return "\n".join(i.value for i in stage.all("RUN"))


def test_runs_as_a_numeric_non_root_user(image: dockerfile.Dockerfile) -> None:
    user = image.final.last("USER")
    assert user is not None, "no USER: the container would run as root"
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    assert f"--uid {uid}" in runs(image.final), "the user is created in the image"


def test_entrypoint_is_the_slm_server_console_script(image: dockerfile.Dockerfile) -> None:
    entrypoint = image.final.exec_form("ENTRYPOINT")
    assert entrypoint == ["tini", "--", "slm-server"]
    assert "tini" in runs(image.final), "tini is installed in the runtime stage"
    assert pyproject()["project"]["scripts"]["slm-server"] == "server.cli:main"
    cmd = image.final.exec_form("CMD")
    assert cmd is not None and command_problems(cmd, known_subcommands()) == []


def test_exposed_ports_are_the_gateway_and_worker_ports(image: dockerfile.Dockerfile) -> None:
    env = image.final.env()
    assert env["SLM_HOST"] == "0.0.0.0", "reachable from outside the container"
    gateway_port = int(env["SLM_PORT"])
    assert gateway_port == Settings.model_fields["port"].default
    assert image.final.exposed_ports() == {gateway_port, WORKER_PORT}


def test_worker_port_is_what_compose_and_kubernetes_set() -> None:
    spec = compose.load()
    for name in ("worker-cpu", "worker-gpu"):
        assert compose.effective_environment(spec["services"][name])["SLM_WORKER_PORT"] == str(WORKER_PORT)
    for _, container in k8s.slm_containers(k8s.render(k8s.overlay("cpu"))):
        if k8s.role(container) == "worker":
            assert container["env"] == [{"name": "SLM_WORKER_PORT", "value": str(WORKER_PORT)}]


def test_dependencies_come_from_the_lock_by_hash(image: dockerfile.Dockerfile) -> None:
    (build,) = [s for s in image.stages if "uv export" in runs(s)]
    assert "uv export --frozen" in runs(build), "the lock as it is, never re-resolved"
    from_files = re.findall(r"pip install ([^&\n]*?)-r (\S+)", runs(build))
    assert {path for _, path in from_files} == {"/tmp/uv-requirements.txt", "/tmp/requirements.txt"}
    assert all("--require-hashes" in options for options, _ in from_files), from_files
    assert "pip install --no-deps ." in runs(build), "the project itself adds nothing the lock lacks"
    assert 'CMAKE_ARGS="${CMAKE_ARGS}' in runs(build), "the build flags reach pip"
    assert "-DGGML_NATIVE=OFF" in str(build.args()["CMAKE_ARGS"]), "no -march=native of the build host"


def test_gpu_image_builds_llama_cpp_with_cuda_on_nvidia_bases() -> None:
    image = dockerfile.parse(DOCKERFILE_GPU)
    build = image.stage("build")
    assert "-DGGML_CUDA=on" in str(build.args()["CMAKE_ARGS"]).split()
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", build.base)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", image.final.base)
    assert build.base.replace("-devel-", "-runtime-") == image.final.base, "same CUDA on both sides"
    assert "python3.11" in runs(build) and "python3.11" in runs(image.final)


def test_cpu_image_is_python_slim() -> None:
    image = dockerfile.parse(DOCKERFILE)
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", s.base) for s in image.stages)
    assert "libgomp1" in runs(image.final), "llama.cpp's OpenMP runtime"


def test_python_version_satisfies_requires_python(image: dockerfile.Dockerfile) -> None:
    required = re.fullmatch(r">=\s*3\.(\d+)", pyproject()["project"]["requires-python"])
    assert required is not None
    versions = {int(m) for s in image.stages for m in re.findall(r"python:?3\.(\d+)", s.base + runs(s))}
    assert versions and min(versions) >= int(required.group(1))


def test_copied_files_exist_and_pass_the_dockerignore(image: dockerfile.Dockerfile) -> None:
    text = image.path.with_name(image.path.name + ".dockerignore").read_text(encoding="utf-8")
    ignore = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "allow-list: nothing but what is copied enters the build context"
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for stage in image.stages:
        for instruction in stage.all("COPY"):
            if instruction.value.startswith("--from"):
                continue
            *sources, _ = instruction.value.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: missing in the repository"
                assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is ignored"


def test_baked_registry_serves_cmd_and_its_models_are_installed(image: dockerfile.Dockerfile) -> None:
    env = image.final.env()
    copies = {i.value.split()[-1]: i.value.split()[-2] for i in image.final.all("COPY") if not i.value.startswith("--")}
    source = copies[env["SLM_REGISTRY"]]
    registry = compose.load_raw(ROOT / source)
    assert registry["models"], "the default registry of the image"
    for entry in registry["models"].values():
        package = entry["gguf"].split("/")[0]
        distribution = package.replace("_", "-")
        assert any(d.startswith(distribution) for d in pyproject()["project"]["dependencies"]), package
