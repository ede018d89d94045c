"""Container and Kubernetes manifests are valid and use the ports, probes, flags, files and packages that exist.

Every Kubernetes manifest is checked against the API schemas (kubernetes-validate, strict: an unknown or
misspelt field fails), then against the product: server flags, the model fetch command line and the file it
writes, the volume that carries it, the images and what the Dockerfiles install and check.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from segstream.models.catalog import get_model
from segstream.models.cli import _parser as models_parser
from segstream.server.cli import build_parser
from segstream.server.healthcheck import build_parser as healthcheck_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BAKED = DEPLOY / "k8s-baked-model"
KUSTOMIZATION = "kustomization.yaml"
# The oldest Kubernetes release still commonly run, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in _manifests():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _model_path(server_args: list[str]) -> PurePosixPath:
    """The file the server's first --model names."""
    return PurePosixPath(_flag(server_args, "--model").partition("=")[2])


def _pod_specs() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in _documents() if d["kind"] in ("Deployment", "Job")]


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _claim_mount(pod: dict[str, Any], container: dict[str, Any], claim: str) -> dict[str, Any]:
    """The container's mount of the pod volume backed by PersistentVolumeClaim `claim`."""
    (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    mounts: list[dict[str, Any]] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    (mount,) = mounts
    return mount


# --- schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_every_manifest_is_a_valid_kubernetes_object(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at /{where}")


def test_the_kustomization_lists_every_manifest_and_names_every_image() -> None:
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert sorted(resources) == [p.name for p in _manifests()]
    assert len(set(resources)) == len(resources)
    # The images are placeholders that the kustomization replaces with a registry image and tag.
    replaced = {i["name"]: i for i in kustomization["images"]}
    for pod in _pod_specs():
        for container in _all_containers(pod):
            image = replaced.get(container["image"])
            assert image is not None, f"{container['name']}: image {container['image']!r} is not in images:"
            assert "/" in image["newName"] and image["newTag"]


# --- the Deployment, the Services and their neighbours --------------------------------------------


def test_deployment_args_are_real_server_flags_and_ports_match() -> None:
    (deployment,) = _kind("Deployment")
    container = _server_container(deployment)
    args = container["args"]
    parsed = build_parser().parse_args(args)  # exits on an unknown flag
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == parsed.port == 50051
    assert ports["metrics"] == parsed.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == parsed.port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == parsed.metrics_port
    # The pod must outlive the server's drain, and the wait for a batch that may be hung.
    grace_period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_period > parsed.grace + parsed.stall_timeout
    assert parsed.max_connection_age > 0


def test_services_hpa_and_pdb_point_at_the_deployment() -> None:
    (deployment,) = _kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _server_container(deployment)["ports"]}
    services = _kind("Service")
    assert any(s["spec"].get("clusterIP") == "None" for s in services)  # for client-side balancing
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (pdb,) = _kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- the models volume and how it is filled --------------------------------------------------------


def test_every_claim_a_pod_mounts_is_a_claim_the_manifests_create() -> None:
    claims = {c["metadata"]["name"] for c in _kind("PersistentVolumeClaim")}
    mounted = {
        v["persistentVolumeClaim"]["claimName"]
        for pod in _pod_specs()
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert mounted == claims == {"segstream-models"}
    (deployment,) = _kind("Deployment")
    (claim,) = _kind("PersistentVolumeClaim")
    # Server pods on several nodes mount it at once.
    if deployment["spec"]["replicas"] > 1:
        assert "ReadWriteMany" in claim["spec"]["accessModes"]


def test_the_fetch_job_writes_the_file_the_server_loads() -> None:
    (job,) = _kind("Job")
    pod = job["spec"]["template"]["spec"]
    (fetcher,) = pod["containers"]
    assert fetcher["command"] == ["segstream-models"]
    parsed = models_parser().parse_args(fetcher["args"])  # exits on an unknown subcommand or flag
    assert parsed.command == "fetch"
    written = PurePosixPath(str(parsed.dir)) / get_model(parsed.name).file_name
    mount = _claim_mount(pod, fetcher, "segstream-models")
    assert not mount.get("readOnly", False)
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(str(parsed.dir))
    (deployment,) = _kind("Deployment")
    server_pod = deployment["spec"]["template"]["spec"]
    server = _server_container(deployment)
    loaded = _model_path(server["args"])
    assert loaded == written
    server_mount = _claim_mount(server_pod, server, "segstream-models")
    assert server_mount["readOnly"] is True
    assert loaded.parent == PurePosixPath(server_mount["mountPath"])
    # The fetch pod runs as the image's user and can write to a freshly provisioned volume.
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001
    assert pod["restartPolicy"] in ("Never", "OnFailure")


def test_the_server_pod_waits_for_the_model_file() -> None:
    (deployment,) = _kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    loaded = _model_path(_server_container(deployment)["args"])
    (waiter,) = pod["initContainers"]
    script = " ".join(waiter["command"] + waiter["args"])
    assert f"[ -f {loaded} ]" in script
    assert _claim_mount(pod, waiter, "segstream-models")["mountPath"] == str(loaded.parent)


def test_the_fetch_job_is_no_server_pod() -> None:
    # The Services and the PodDisruptionBudget must not count the fetch pod as a server.
    (job,) = _kind("Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    selectors = [s["spec"]["selector"] for s in _kind("Service")]
    selectors += [d["spec"]["selector"]["matchLabels"] for d in _kind("PodDisruptionBudget") + _kind("Deployment")]
    for selector in selectors:
        assert not selector.items() <= labels.items()


# --- rendered with kustomize -----------------------------------------------------------------------


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_kustomization_renders_valid_objects_with_the_registry_image() -> None:
    docs = _kustomize(K8S)
    _validate_all(docs)
    assert sorted(d["kind"] for d in docs) == sorted(d["kind"] for d in _documents())
    (image,) = yaml.safe_load((K8S / KUSTOMIZATION).read_text())["images"]
    wanted = f"{image['newName']}:{image['newTag']}"
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert {c["image"] for pod in pods for c in _all_containers(pod)} == {wanted}


def test_the_baked_model_variant_drops_the_volume_and_the_fetch() -> None:
    overlay = yaml.safe_load((BAKED / KUSTOMIZATION).read_text())
    assert overlay["resources"] == ["../k8s"]
    docs = _kustomize(BAKED)
    _validate_all(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(d["kind"] for d in _documents() if d["kind"] not in ("Job", "PersistentVolumeClaim"))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "volumes" not in pod
    server = _server_container(deployment)
    assert "volumeMounts" not in server
    # The with-model stage of the Dockerfiles bakes the file in where the server looks, into an image of its own.
    assert str(_model_path(server["args"])) in _stage_copies(DEPLOY / "Dockerfile", "with-model")
    (image,) = yaml.safe_load((K8S / KUSTOMIZATION).read_text())["images"]
    assert server["image"].startswith(image["newName"] + ":")
    assert server["image"] != f"{image['newName']}:{image['newTag']}"


# --- Dockerfiles -----------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str, str]]:
    """(stage, KEYWORD, arguments) for each instruction, continuation lines joined, comments dropped."""
    found: list[tuple[str, str, str]] = []
    stage, pending = "", ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        keyword, arguments = keyword.upper(), " ".join(arguments.split())
        if keyword == "FROM":
            stage = arguments.split(" AS ")[-1] if " AS " in arguments else arguments
        found.append((stage, keyword, arguments))
    assert not pending, f"{path.name} ends inside a continued line"
    return found


def _only(path: Path, keyword: str, stage: str = "server") -> str:
    (arguments,) = [a for s, k, a in _instructions(path) if k == keyword and s == stage]
    return arguments


def _stage_copies(path: Path, stage: str) -> list[str]:
    """The destinations of the COPY instructions of one stage."""
    return [a.split()[-1] for s, k, a in _instructions(path) if s == stage and k == "COPY"]


# Each image and the extra it installs: the CUDA image gets onnxruntime-gpu, the CPU one CPU onnxruntime alone.
DOCKERFILES = {"Dockerfile": "server-cpu", "Dockerfile.cuda": "server"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_container_images_start_the_server_with_real_flags(name: str) -> None:
    path = DEPLOY / name
    assert _only(path, "ENTRYPOINT") == '["segstream-server"]'
    parsed = build_parser().parse_args(json.loads(_only(path, "CMD")))
    exposed = {int(p) for p in _only(path, "EXPOSE").split()}
    assert {parsed.port, parsed.metrics_port} <= exposed


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_container_images_check_health_over_grpc(name: str) -> None:
    path = DEPLOY / name
    match = re.fullmatch(r"((?:--[a-z-]+=\S+ )*)CMD (\[.*\])", _only(path, "HEALTHCHECK"))
    assert match, "HEALTHCHECK [OPTIONS] CMD [exec form]"
    options = dict(o.lstrip("-").split("=") for o in match.group(1).split())
    command = json.loads(match.group(2))
    assert command[:3] == ["python3", "-m", "segstream.server.healthcheck"]
    check = healthcheck_parser().parse_args(command[3:])
    served = build_parser().parse_args(json.loads(_only(path, "CMD")))
    assert check.port == served.port
    # The check gives up before Docker kills it, so its one line always reaches `docker inspect`.
    assert check.timeout < int(options["timeout"].removesuffix("s"))
    assert int(options["start-period"].removesuffix("s")) >= 60  # the models load and warm up first


@pytest.mark.parametrize(("name", "extra"), sorted(DOCKERFILES.items()))
def test_container_images_install_their_server_extra_from_every_source_root(name: str, extra: str) -> None:
    path = DEPLOY / name
    (install,) = [a for s, k, a in _instructions(path) if k == "RUN" and "install '." in a]
    installed = re.search(r"\bpip3? install '\.\[([a-z-]+)\]'", install)
    assert installed is not None and installed.group(1) == extra
    copied = {
        PurePosixPath(source)
        for s, k, a in _instructions(path)
        if k == "COPY" and s == "server"
        for source in shlex.split(a)[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for root in roots:
        assert any(PurePosixPath(root).is_relative_to(c) for c in copied), f"{name} does not copy {root}"
    assert {PurePosixPath("pyproject.toml"), PurePosixPath(pyproject["project"]["readme"])} <= copied


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_default_image_has_no_model_and_the_with_model_stage_one(name: str) -> None:
    path = DEPLOY / name
    froms = [a for _, k, a in _instructions(path) if k == "FROM"]
    # A plain `docker build` builds the last stage: the server alone, needing no model file in the context.
    assert froms[-1] == "server"
    assert "server AS with-model" in froms
    model = str(_model_path(json.loads(_only(path, "CMD"))))
    assert _stage_copies(path, "with-model") == [model]
    (arg,) = [a for s, k, a in _instructions(path) if k == "ARG" and s == "with-model"]
    assert arg.startswith("MODEL_FILE=")


def test_the_deployment_guide_covers_every_manifest() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for path in [*_manifests(), K8S / KUSTOMIZATION]:
        assert f"`{path.name}`" in guide, path.name
    assert "kubectl apply -k deploy/k8s-baked-model" in guide
    # Without kustomize the guide substitutes `image: segstream` at the end of a line: every image line is one.
    for path in _manifests():
        images = [line for line in path.read_text().splitlines() if line.strip().startswith("image:")]
        assert all(line.endswith("image: segstream") for line in images), path.name
