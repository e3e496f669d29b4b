"""deploy/kubernetes/: every static manifest against the Kubernetes schemas, and the Zero to
JupyterHub values against the chart's own values schema.

No helm binary here, so the chart is not rendered: the values are merged over the chart's
default values (as helm does before it validates) and checked with the chart's
``values.schema.json``. Both files are vendored in tests/unit/z2jh/ from
jupyterhub/zero-to-jupyterhub-k8s at 48ea50e3 (4.3.2-226, the schema built by the chart's
tools/generate-json-schema.py). What the values configure on our classes is checked against
their traits, so a misspelt setting fails here rather than being ignored by the hub.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from traitlets import import_item

from sde_spawner.kube_spawner import SDEKubeSpawner
from tests.unit.test_kube import K8S_VERSIONS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
Z2JH = Path(__file__).resolve().parent / "z2jh"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "values.yaml")


def merge(base: dict, over: dict) -> dict:
    """Helm's merge of user values over chart defaults: maps merge, everything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merge(base[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


@pytest.fixture(scope="module")
def chart_validator():
    return jsonschema.Draft7Validator(json.loads((Z2JH / "values.schema.json").read_text()))


@pytest.fixture(scope="module")
def chart_defaults() -> dict:
    return yaml.safe_load((Z2JH / "values.yaml").read_text())


def test_there_are_static_manifests():
    assert {p.name for p in MANIFESTS} == {"extracts.yaml", "postgres.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_static_manifest_is_valid(path, version):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_database_admits_only_the_hub_and_reaches_nobody():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "postgres.yaml").read_text())}
    spec = docs["NetworkPolicy"]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == []
    assert spec["ingress"] == [
        {
            "from": [
                {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub", "release": "sde"}}}  # noqa: E501
            ],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]  # fmt: skip
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_values_are_valid_for_the_chart(values, chart_defaults, chart_validator):
    errors = list(chart_validator.iter_errors(merge(chart_defaults, values)))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_the_chart_schema_catches_a_misspelt_value(values, chart_defaults, chart_validator):
    """Control: the schema is strict, so the test above can fail."""
    bad = copy.deepcopy(values)
    bad["singleuser"]["networkPolicy"]["enabeld"] = False
    errors = list(chart_validator.iter_errors(merge(chart_defaults, bad)))
    assert [list(e.path) for e in errors] == [["singleuser", "networkPolicy"]]


def test_what_would_undo_the_workspace_policy_is_off(values):
    single = values["singleuser"]
    # NetworkPolicies add up: the chart's shared single-user policy allows DNS and the internet.
    assert single["networkPolicy"]["enabled"] is False
    # a privileged init container in every workspace pod (the hub would refuse the pod anyway)
    assert single["cloudMetadata"]["blockWithIptables"] is False
    assert single["allowPrivilegeEscalation"] is False
    assert single["storage"]["type"] == "none"


def test_the_sde_service_port_is_open_to_workspaces_and_the_proxy_only(values):
    hub = values["hub"]
    port = hub["config"]["SDEKubeSpawner"]["service_port"]
    assert hub["service"]["extraPorts"] == [{"name": "sde", "port": port, "targetPort": port}]
    assert hub["services"]["sde"]["url"] == f"http://hub:{port}"
    assert hub["networkPolicy"]["ingress"] == [
        {
            "ports": [{"port": port}],
            "from": [
                {"podSelector": {"matchLabels": {"org.sde-tre.managed-by": "sde"}}},
                {"podSelector": {"matchLabels": hub["config"]["SDEKubeSpawner"]["proxy_pod_labels"]}},  # noqa: E501
            ],
        }
    ]  # fmt: skip


def test_configured_settings_are_real_traits(values):
    """Every hub.config setting names a configurable trait of its class (a typo would be
    silently ignored by the hub)."""
    classes = {
        "SDEKubeSpawner": SDEKubeSpawner,
        "Spawner": import_item("jupyterhub.spawner.Spawner"),
        "JupyterHub": import_item("jupyterhub.app.JupyterHub"),
    }
    config = values["hub"]["config"]
    assert set(config) == set(classes)
    for section, settings in config.items():
        traits = classes[section].class_traits(config=True)
        unknown = sorted(set(settings) - set(traits))
        assert unknown == [], f"{section}: {unknown}"


def test_the_spawner_entry_point_names_the_class(values):
    name = values["hub"]["config"]["JupyterHub"]["spawner_class"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["jupyterhub.spawners"][name]
    module, _, attr = target.partition(":")
    assert import_item(f"{module}.{attr}") is SDEKubeSpawner


def test_extra_config_compiles(values):
    for name, source in values["hub"]["extraConfig"].items():
        compile(source, f"hub.extraConfig.{name}", "exec")
