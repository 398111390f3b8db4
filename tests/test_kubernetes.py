"""deploy/kubernetes: valid against the Kubernetes schemas (offline), and in step with the gateway's settings."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tentaculo import __version__
from tentaculo.db.migrate import MIGRATION_TIMEOUT
from tentaculo.http.server import shutdown_total
from tentaculo.settings import (
    PLUGIN_ALIASES,
    PLUGIN_PREFIX,
    SERVICE_OPTION_SUFFIXES,
    SERVICE_PREFIX,
    SERVICE_SUFFIX,
    Settings,
    SettingsError,
)

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
# The oldest Kubernetes these manifests are written for, and the newest the validator knows.
OLDEST_KUBERNETES = "1.29"
# Settings read from families of variables rather than one name each (settings.py).
FAMILY_FIELDS = {"provider_options", "provider_option_sources", *SERVICE_OPTION_SUFFIXES.values(), "service_urls"}
FAMILIES = re.compile(
    rf"^{SERVICE_PREFIX}[A-Z0-9_]+(?:{'|'.join(map(re.escape, [SERVICE_SUFFIX, *SERVICE_OPTION_SUFFIXES]))})$"
    rf"|^{PLUGIN_PREFIX}[A-Z0-9_]+__[A-Z0-9_]+$"
)


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _setting_names() -> set[str]:
    return {f"TENTACULO_{f.name.upper()}" for f in fields(Settings) if f.name not in FAMILY_FIELDS} | set(PLUGIN_ALIASES)


def _is_setting(name: str) -> bool:
    return name in _setting_names() or FAMILIES.match(name) is not None


def _config() -> dict[str, str]:
    return {k: str(v) for k, v in _one("ConfigMap")["data"].items()}


def _settings() -> Settings:
    """The gateway's settings as a pod gets them from the ConfigMap."""
    return Settings.from_env(_config())


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _container_port(port: int | str) -> int:
    """A probe's or Service's port, a named one resolved through the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    return named[port]


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path.name} holds no resource"
    for version in (OLDEST_KUBERNETES, latest_version()):
        for doc in docs:
            # Strict: an unknown field (a typo, a field of another version) is an error, not ignored.
            # An unknown kind raises SchemaNotFoundError, which fails the test too.
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in _manifest_files())
    kinds = {doc["kind"] for _, doc in _documents()}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "NetworkPolicy"}
    # The image is the release of this tree, never a moving tag like latest.
    image, _, tag = _container()["image"].partition(":")
    assert tag == __version__
    assert kustomization["images"] == [{"name": image, "newTag": __version__}]


def test_probes_use_the_gateways_paths_and_port() -> None:
    container = _container()
    assert _settings().port == Settings().port == 8000
    assert _container_port("http") == _settings().port
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    app = (ROOT / "tentaculo" / "app.py").read_text()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert _container_port(get["port"]) == _settings().port, probe
        assert f'add_get("{get["path"]}"' in app, f"{probe}: the gateway serves no {get['path']}"
    assert _config()["TENTACULO_HOST"] == "0.0.0.0"  # noqa: S104 - reachable from outside the pod


def test_the_grace_period_outlasts_a_stop_and_probes_do_not_cut_start_or_stop() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    bound = shutdown_total(_settings())
    assert bound == 21.0  # drain 5 + requests 10 + flush 5 + 1 s: what the comments and docs say
    assert pod["terminationGracePeriodSeconds"] > bound, "SIGKILL would come before the final flush"

    def window(probe: str) -> int:
        return container[probe]["periodSeconds"] * container[probe]["failureThreshold"]

    # Start-up migrates (possibly after waiting on another pod's lock) before the port opens.
    assert window("startupProbe") > MIGRATION_TIMEOUT
    # The listener closes during a stop: liveness must not restart a pod that is stopping.
    assert window("livenessProbe") > bound
    assert "lifecycle" not in container  # the drain is the gateway's own (see deployment.yaml)


def test_the_container_runs_unprivileged_on_a_read_only_root() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid != 0
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == uid
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
    # What the gateway writes lives in emptyDirs: its state directory and /tmp.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounted = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
    assert mounted == {str(_settings().state_dir), "/tmp"}
    assert pod["automountServiceAccountToken"] is False


def test_every_variable_given_to_the_pod_is_a_setting() -> None:
    config = _config()
    secret = _one("Secret")["stringData"]
    env = [e["name"] for e in _container()["env"]]
    strays = [name for name in (*config, *secret, *env) if not _is_setting(name)]
    assert strays == []
    sources = _container()["envFrom"]
    assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} == {_one("ConfigMap")["metadata"]["name"]}
    assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} == {_one("Secret")["metadata"]["name"]}
    # Service links would add TENTACULO_PORT=tcp://... (the Service is named tentaculo) and others.
    assert _one("Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False
    assert _is_setting("TENTACULO_SERVICE_MADRE_URL") and _is_setting("TENTACULO_PLUGIN_LOCAL__API_KEY")
    assert not _is_setting("TENTACULO_SERVICE_HOST") and not _is_setting("TENTACULO_PORT_80_TCP")


def test_the_secret_holds_placeholders_that_the_gateway_refuses_to_run_with() -> None:
    secret = _one("Secret")
    assert "data" not in secret  # stringData only: readable placeholders, nothing encoded to hide
    values = secret["stringData"]
    assert values and all("change-me" in value for value in values.values())
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**_config(), **values})
    assert refused.value.variable == "TENTACULO_ADMIN_TOKEN"


def test_service_budget_autoscaler_and_policy_point_at_the_gateway() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    assert [_container_port(p["targetPort"]) for p in service["spec"]["ports"]] == [_settings().port]

    budget = _one("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()

    autoscaler = _one("HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "name": deployment["metadata"]["name"]}
    assert autoscaler["spec"]["minReplicas"] >= budget["spec"]["minAvailable"] + 1
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in _container()["resources"]["requests"]  # utilisation is a share of the request
    assert {"cpu", "memory"} <= set(_container()["resources"]["limits"])

    policy = _one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress left open: see networkpolicy.yaml
    [rule] = policy["spec"]["ingress"]
    assert [set(peer) for peer in rule["from"]] == [{"namespaceSelector"}]
    assert [p["port"] for p in rule["ports"]] == [_settings().port]
