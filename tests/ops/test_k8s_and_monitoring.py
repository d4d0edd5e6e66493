"""The Kubernetes manifests, the Prometheus rules and the Grafana dashboard stay true:
they render, validate against the Kubernetes schema, pass promtool, and query only series
the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from monitoring_queries import STANDARD, monitoring_queries, queried_series

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # a current release: schemas ship with kubernetes-validate


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is needed (kubectl; Debian's prometheus package for promtool)")
    return path


def rendered(overlay: str) -> list[dict]:
    out = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=["dev", "prod"])
def manifests(request) -> tuple[str, list[dict]]:
    return request.param, rendered(request.param)


def test_overlays_validate_against_the_kubernetes_schema(manifests):
    import kubernetes_validate

    _, docs = manifests
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _deployments(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def test_every_service_runs_a_real_cli_command_with_probes_and_limits(manifests):
    from tsfl.cli.main import build_parser
    from tsfl.pipeline.roles import ROLES

    _, docs = manifests
    deployments = _deployments(docs)
    assert set(deployments) == {f"tsfl-{name}" for name in ROLES}
    parser = build_parser()
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (ctr,) = pod["containers"]
        assert ctr["command"][0] == "tsfl"
        args = parser.parse_args(ctr["command"][1:])
        assert (args.command, args.name) == ("service", name.removeprefix("tsfl-"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["grpc"]["port"] == 50052, (name, probe)
        assert {"cpu", "memory"} <= set(ctr["resources"]["limits"])
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == "tsfl"  # no API token mounted (serviceaccount)
    migrate = next(d for d in docs if d["kind"] == "Job")
    ctr = migrate["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(ctr["command"][1:]).command == "db"


def test_no_literal_secrets_only_references(manifests):
    _, docs = manifests
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"postgres(ql)?(\+asyncpg)?://[^\s@]*:[^\s@]*@", text), \
        "a database URL with a password is written into the manifests"
    for dep in _deployments(docs).values():
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TSFL_DATABASE"]["valueFrom"]["secretKeyRef"]["name"] == "tsfl-database"


def test_tls_by_default_plaintext_only_in_dev(manifests):
    overlay, docs = manifests
    ctr = _deployments(docs)["tsfl-coordinator"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    if overlay == "prod":
        assert env["TSFL_TLS_CERT"] and env["TSFL_TLS_KEY"] and env["TSFL_TLS_CLIENT_CA"]
        assert "TSFL_ALLOW_INSECURE" not in env
    else:
        assert env.get("TSFL_ALLOW_INSECURE") == "1"


def test_only_the_coordinator_device_port_is_reachable_from_outside(manifests):
    _, docs = manifests
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "truststram-fl"}
    open_to_all = [(p["spec"]["podSelector"], rule["ports"]) for p in policies
                   for rule in p["spec"].get("ingress", []) if not rule.get("from")]
    assert open_to_all == [({"matchLabels": {"app.kubernetes.io/name": "tsfl-coordinator"}},
                            [{"port": 50051, "protocol": "TCP"}])]
    # every pod carries the label the default-deny policy selects
    for dep in _deployments(docs).values():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "truststram-fl"


def test_alert_rules_and_prometheus_config_pass_promtool():
    promtool = _tool("promtool")
    for args in (["check", "rules", "deploy/prometheus/alerts.yml"],
                 ["check", "config", "deploy/prometheus/prometheus.yml"]):
        out = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_and_alerts_query_only_exported_series():
    from tsfl.metrics import exposed_names

    used = set().union(*(queried_series(e) for e in monitoring_queries()))
    unknown = used - exposed_names() - STANDARD
    assert not unknown, f"queried but never exported: {sorted(unknown)}"
    assert "tsfl_model_accuracy" in used and "tsfl_privacy_budget_consumption" in used


def test_the_dashboard_shows_every_seed_metric():
    dash = json.loads((ROOT / "deploy" / "grafana" / "truststram-fl.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for metric in ("round duration", "communication overhead", "accuracy", "convergence",
                   "byzantine", "privacy budget", "anomaly", "participation",
                   "resource utilisation", "bandwidth"):
        assert metric in titles, metric
