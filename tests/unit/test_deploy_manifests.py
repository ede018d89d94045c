"""Container and Kubernetes manifests parse and use the ports, probes and flags the server really has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from segstream.server.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == kind]


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_deployment_args_are_real_server_flags_and_ports_match() -> None:
    (deployment,) = _kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    parsed = build_parser().parse_args(args)  # exits on an unknown flag
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == parsed.port == 50051
    assert ports["metrics"] == parsed.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == parsed.port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == parsed.metrics_port
    # The pod must outlive the server's drain.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > parsed.grace
    assert parsed.max_connection_age > 0


def test_services_hpa_and_pdb_point_at_the_deployment() -> None:
    (deployment,) = _kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    services = _kind("Service")
    assert any(s["spec"].get("clusterIP") == "None" for s in services)  # for client-side balancing
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    (hpa,) = _kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (pdb,) = _kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_container_images_start_the_server_with_real_flags(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert re.search(r'^ENTRYPOINT \["segstream-server"\]$', text, re.M)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    parsed = build_parser().parse_args(json.loads(cmd))
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.*)$", text, re.M)[0].split()}
    assert {parsed.port, parsed.metrics_port} <= exposed
