"""The Kubernetes path: whole manifests from KubeSpawner's own ``get_pod_manifest``, the
workspace NetworkPolicy, schema validation, and the hardening checks that catch a weaker room.

No cluster: KubeSpawner builds manifests without an API server. It only needs a client
configuration, so the tests give it a kubeconfig naming a loopback address that nothing is
ever sent to (the gate and the manifest make no API call). The registry is the demo's (real
SQLite, real extract built on disk), so the manifest is built from the same registry facts
the Docker path uses. Every manifest is validated against the Kubernetes schemas of
:data:`K8S_VERSIONS` (``kubernetes-validate``, strict: an unknown field fails).
"""

from __future__ import annotations

import copy
import os
import types

import jupyterhub
import kubernetes_validate
import kubespawner
import pytest
from kubernetes_asyncio.config import kube_config

from sde_spawner import audit
from sde_spawner.containers import Limits
from sde_spawner.kube import (
    HubPeers,
    check_network_policy,
    check_pod_hardening,
    kube_labels,
    kube_names,
    kube_resources,
    network_policy,
    pod_volume_mounts,
    pod_volumes,
)
from sde_spawner.kube_spawner import SDEKubeSpawner, manifest_dict
from sde_spawner.rooms import SDC_SETTINGS, SpawnRefused
from tests.support import seeded_registry

#: The oldest Kubernetes Zero to JupyterHub's chart supports (Chart.yaml kubeVersion
#: ">=1.32.0-0") and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.32", kubernetes_validate.utils.latest_version())

HUB_IP = "10.96.0.10"
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: none
  cluster: {server: "https://127.0.0.1:9"}
users:
- name: none
  user: {token: unused}
contexts:
- name: none
  context: {cluster: none, user: none, namespace: tre}
current-context: none
"""


def validate_all(manifest: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with seeded_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture
def make_spawner(registry, tmp_path, monkeypatch):
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    # kubernetes_asyncio reads KUBECONFIG when imported; its module default is what it uses.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for name in SDC_SETTINGS:
        monkeypatch.delenv(name, raising=False)

    def make(username="alice", **traits):
        user = types.SimpleNamespace(name=username, id=7, url=f"/user/{username}/", spawners={})
        hub = types.SimpleNamespace(
            public_host="",
            url="http://hub:8081/hub/",
            base_url="/hub/",
            api_url="http://hub:8081/hub/api",
        )
        spawner = SDEKubeSpawner(
            _mock=True,
            user=user,
            hub=hub,
            namespace="tre",
            registry_url=registry.url,
            extracts_dir=registry.extracts,
            **traits,
        )
        spawner.api_token = "token-of-alice"
        return spawner

    return make


async def admitted(spawner, project="diabetes-outcomes"):
    """The gate and the extract, for real; then the pod traits from the builders."""
    spawner.user_options = {"project": project}
    _, built = await spawner._admit()
    spawner.apply_room(
        extract_subpath=os.path.relpath(built.path, spawner.extracts_dir), hub_ip=HUB_IP
    )
    return spawner


def env_list(env: dict[str, str]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


POD_NAME = "sde-alice-diabetes-outcomes-217cbb8881"
WORKSPACE_ID = "217cbb8881"


def expected_pod() -> dict:
    scopes = '["access:servers!server=alice/", "access:servers!user=alice"]'
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD_NAME,
            "annotations": {
                "hub.jupyter.org/username": "alice",
                "hub.jupyter.org/kubespawner-version": kubespawner.__version__,
                "hub.jupyter.org/jupyterhub-version": jupyterhub.__version__,
            },
            "labels": {
                "hub.jupyter.org/username": "alice",
                "hub.jupyter.org/servername": "",
                "org.sde-tre.managed-by": "sde",
                "org.sde-tre.project": "diabetes-outcomes",
                "org.sde-tre.workspace": WORKSPACE_ID,
                "app.kubernetes.io/name": "jupyterhub",
                "app.kubernetes.io/managed-by": "kubespawner",
                "app.kubernetes.io/component": "singleuser-server",
                "app": "jupyterhub",
                "heritage": "jupyterhub",
                "component": "singleuser-server",
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "shareProcessNamespace": False,
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["0.0.0.0"]},
            "hostAliases": [{"ip": HUB_IP, "hostnames": ["hub"]}],
            "imagePullSecrets": [],
            "restartPolicy": "OnFailure",
            "securityContext": {
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "runAsNonRoot": True,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "notebook",
                    "image": "sde-notebook:latest",
                    "args": ["jupyterhub-singleuser"],
                    "lifecycle": {},
                    "ports": [{"containerPort": 8888, "name": "notebook-port"}],
                    "env": env_list(
                        {
                            "CPU_GUARANTEE": "0.1",
                            "CPU_LIMIT": "1.0",
                            "JPY_API_TOKEN": "token-of-alice",
                            "JUPYTERHUB_API_TOKEN": "token-of-alice",
                            "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
                            "JUPYTERHUB_BASE_URL": "/",
                            "JUPYTERHUB_CLIENT_ID": "",
                            "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
                            "JUPYTERHUB_HOST": "",
                            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes,
                            "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/alice/oauth_callback",
                            "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "[]",
                            "JUPYTERHUB_OAUTH_SCOPES": scopes,
                            "JUPYTERHUB_PUBLIC_HUB_URL": "",
                            "JUPYTERHUB_PUBLIC_URL": "",
                            "JUPYTERHUB_SERVER_NAME": "",
                            "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/",
                            "JUPYTERHUB_USER": "alice",
                            "JUPYTER_IMAGE": "sde-notebook:latest",
                            "JUPYTER_IMAGE_SPEC": "sde-notebook:latest",
                            # the project's limits and output policy, from the registry
                            "MEM_GUARANTEE": "2147483648",
                            "MEM_LIMIT": "2147483648",
                            "SDE_CLIPBOARD_OUT": "block",
                            "SDE_PROJECT": "diabetes-outcomes",
                            "SDE_SDC_DOF_THRESHOLD": "10",
                            "SDE_SDC_THRESHOLD": "10",
                            "SDE_SDC_ZEROS_ARE_DISCLOSIVE": "true",
                            "SDE_SERVICE_URL": "http://hub:9100/services/sde/",
                        }
                    ),
                    "resources": {
                        "limits": {"cpu": 1.0, "memory": 2147483648},
                        "requests": {"cpu": 0.1, "memory": 2147483648},
                    },
                    "securityContext": {
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "runAsNonRoot": True,
                        "privileged": False,
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [
                        {"name": "home", "mountPath": "/home/researcher"},
                        {
                            "name": "data",
                            "mountPath": "/data",
                            "readOnly": True,
                            "subPath": "diabetes-outcomes/alice/v0001",
                        },
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "home", "persistentVolumeClaim": {"claimName": f"{POD_NAME}-home"}},
                {
                    "name": "data",
                    "persistentVolumeClaim": {"claimName": "sde-extracts", "readOnly": True},
                },
                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
            ],
        },
    }


HUB_POD = {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}
PROXY_POD = {"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "proxy"}}}


def expected_policy() -> dict:
    labels = {
        "org.sde-tre.managed-by": "sde",
        "org.sde-tre.project": "diabetes-outcomes",
        "org.sde-tre.workspace": WORKSPACE_ID,
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{POD_NAME}-egress", "namespace": "tre", "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": {"org.sde-tre.workspace": WORKSPACE_ID}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [PROXY_POD, HUB_POD],
                    "ports": [{"protocol": "TCP", "port": 8888}],
                }
            ],
            # No rule names port 53 or any address: DNS is denied with everything else.
            "egress": [
                {
                    "to": [HUB_POD],
                    "ports": [{"protocol": "TCP", "port": 8081}, {"protocol": "TCP", "port": 9100}],
                }
            ],
        },
    }  # fmt: skip


# ---- the whole manifests, from KubeSpawner itself ---------------------------------------
async def test_pod_manifest_whole_from_kubespawner(make_spawner):
    spawner = await admitted(make_spawner())
    pod = manifest_dict(await spawner.get_pod_manifest())
    assert pod == expected_pod()
    validate_all(pod)
    assert check_pod_hardening(pod) == []


async def test_network_policy_whole_and_valid(make_spawner):
    spawner = await admitted(make_spawner())
    policy = spawner.network_policy_manifest()
    assert policy == expected_policy()
    validate_all(policy)
    pod = manifest_dict(await spawner.get_pod_manifest())
    assert check_network_policy(policy, pod["metadata"]["labels"], spawner.peers) == []


async def test_home_claim_manifest_is_valid(make_spawner):
    spawner = await admitted(make_spawner())
    pvc = manifest_dict(spawner.get_pvc_manifest())
    assert pvc["metadata"]["name"] == f"{POD_NAME}-home"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "10Gi"}},
    }
    validate_all(pvc)


async def test_a_projects_own_limits_reach_the_pod(make_spawner, registry):
    from sde_spawner.registry import ops

    project = "diabetes-outcomes"
    ops.perform(registry.sm, ops.add_project, "admin", project, cpu_limit=2, mem_limit="4g")
    try:
        spawner = await admitted(make_spawner(), project)
        pod = manifest_dict(await spawner.get_pod_manifest())
    finally:  # the module's registry goes back to the demo's limits
        ops.perform(registry.sm, ops.add_project, "admin", project, cpu_limit=1, mem_limit="2g")
    assert pod["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": 2.0, "memory": 4 * 2**30},
        "requests": {"cpu": 0.1, "memory": 4 * 2**30},
    }
    validate_all(pod)


# ---- the gate: the same policy as on Docker, before any cluster call ----------------------
async def test_an_ineligible_person_is_refused_and_audited_before_any_api_call(
    make_spawner, registry
):
    spawner = make_spawner("eve")  # the demo's researcher whose training has expired
    spawner.user_options = {"project": "diabetes-outcomes"}
    with pytest.raises(SpawnRefused) as exc:
        await spawner.start()
    assert "training" in exc.value.reason_text
    with registry.sm() as s:
        last = audit.query(s)[-1]
    assert (last.action, last.actor, last.outcome) == ("spawn.refused", "eve", "denied")
    assert last.reason == exc.value.reason_text
    assert spawner.project == ""


async def test_options_other_than_the_project_are_refused(make_spawner):
    spawner = make_spawner()
    spawner.user_options = {"project": "diabetes-outcomes", "image": "evil:latest"}
    with pytest.raises(SpawnRefused, match="only a project may be chosen"):
        await spawner.start()


async def test_the_spawn_form_is_the_project_form(make_spawner):
    spawner = make_spawner()
    form = await spawner.options_form(spawner)
    assert 'name="project" value="diabetes-outcomes"' in form
    assert spawner.options_from_form({"project": ["diabetes-outcomes"]}) == {
        "project": "diabetes-outcomes"
    }


# ---- removing a control is caught --------------------------------------------------------
def _container(pod):
    return pod["spec"]["containers"][0]


POD_MUTATIONS = {
    "readOnlyRootFilesystem": (
        lambda p: _container(p)["securityContext"].pop("readOnlyRootFilesystem"),
        "container notebook: readOnlyRootFilesystem is not true",
    ),
    "allowPrivilegeEscalation": (
        lambda p: _container(p)["securityContext"].update(allowPrivilegeEscalation=True),
        "container notebook: allowPrivilegeEscalation is not false",
    ),
    "capabilities": (
        lambda p: _container(p)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "container notebook: capabilities are not all dropped",
    ),
    "seccomp": (
        lambda p: (
            _container(p)["securityContext"].pop("seccompProfile"),
            p["spec"]["securityContext"].pop("seccompProfile"),
        ),
        "container notebook: seccomp is not RuntimeDefault",
    ),
    "token": (
        lambda p: p["spec"].pop("automountServiceAccountToken"),
        "pod: the service-account token is mounted",
    ),
    "dns": (
        lambda p: (p["spec"].update(dnsPolicy="ClusterFirst"), p["spec"].pop("dnsConfig")),
        "pod: DNS is not sunk (dnsPolicy None, nameserver 0.0.0.0)",
    ),
    "writable data": (
        lambda p: p["spec"]["volumes"][1]["persistentVolumeClaim"].pop("readOnly"),
        "container notebook: the dataset at /data is not read-only",
    ),
    "memory limit": (
        lambda p: _container(p)["resources"]["limits"].pop("memory"),
        "container notebook: no memory limit",
    ),
    "host path": (
        lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "volume h: a host path",
    ),
    "host network": (lambda p: p["spec"].update(hostNetwork=True), "pod: hostNetwork is on"),
    "privileged init container": (
        lambda p: p["spec"].update(
            initContainers=[
                {
                    "name": "block-cloud-metadata",
                    "image": "busybox",
                    "securityContext": {"privileged": True, "runAsUser": 0},
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                }
            ]
        ),
        None,  # several findings: listed below
    ),
}


@pytest.mark.parametrize("control", sorted(POD_MUTATIONS))
async def test_removing_a_pod_control_is_found_though_the_schema_accepts_it(make_spawner, control):
    spawner = await admitted(make_spawner())
    pod = manifest_dict(await spawner.get_pod_manifest())
    mutate, finding = POD_MUTATIONS[control]
    weaker = copy.deepcopy(pod)
    mutate(weaker)
    validate_all(weaker)  # still a valid pod: only our check stands between it and a cluster
    if finding is None:
        assert check_pod_hardening(weaker) == [
            "container block-cloud-metadata: privileged is not false",
            "container block-cloud-metadata: allowPrivilegeEscalation is not false",
            "container block-cloud-metadata: readOnlyRootFilesystem is not true",
            "container block-cloud-metadata: capabilities are not all dropped",
            "container block-cloud-metadata: may run as root (runAsUser unset or 0)",
        ]
    else:
        assert check_pod_hardening(weaker) == [finding]


async def test_a_weakened_setting_refuses_the_spawn_and_is_audited(make_spawner, registry):
    """The check runs at spawn on KubeSpawner's real manifest: a configuration that drops a
    control (here an operator's container_security_context) starts nothing."""
    weak = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    spawner = await admitted(make_spawner(container_security_context=weak))
    with pytest.raises(SpawnRefused) as exc:
        await spawner.get_pod_manifest()
    assert exc.value.status_code == 500
    assert "readOnlyRootFilesystem is not true" in exc.value.reason_text
    assert "seccomp" not in exc.value.reason_text  # the pod-level profile still applies
    with registry.sm() as s:
        last = audit.query(s)[-1]
    assert (last.action, last.outcome) == ("spawn.refused", "denied")
    assert last.reason == exc.value.reason_text


POLICY_MUTATIONS = {
    "no egress type": (
        lambda s: s["policyTypes"].remove("Egress"),
        ["policy does not govern egress"],
    ),
    "dns": (
        lambda s: s["egress"].append({"ports": [{"protocol": "UDP", "port": 53}]}),
        ["egress rule 1: allows every destination", "egress rule 1: allows port 53"],
    ),
    "anywhere": (
        lambda s: s["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
        [
            "egress rule 1: allows a destination other than the hub",
            "egress rule 1: allows every port",
        ],
    ),
    "other pods": (
        lambda s: s["egress"][0]["to"].append({"podSelector": {}}),
        ["egress rule 0: allows a destination other than the hub"],
    ),
    "another pod selected": (
        lambda s: s["podSelector"]["matchLabels"].update({"org.sde-tre.workspace": "other"}),
        ["policy does not select the workspace pod"],
    ),
    "open ingress": (
        lambda s: s["ingress"].append({}),
        ["ingress rule 1: admits every source"],
    ),
}


@pytest.mark.parametrize("change", sorted(POLICY_MUTATIONS))
def test_weakening_the_network_policy_is_found(change):
    names = kube_names("alice", "diabetes-outcomes")
    labels = kube_labels(names, "diabetes-outcomes")
    policy = network_policy(names, labels, HubPeers(), "tre")
    assert check_network_policy(policy, labels, HubPeers()) == []
    mutate, findings = POLICY_MUTATIONS[change]
    mutate(policy["spec"])
    validate_all(policy)
    assert check_network_policy(policy, labels, HubPeers()) == findings


# ---- the pure builders ------------------------------------------------------------------
def test_names_are_dns_labels_bounded_and_collision_free():
    pairs = [("alice", "p-a"), ("Alice", "p-a"), ("a.lice", "p-a"), ("x" * 300, "p" * 40)]
    names = [kube_names(u, p) for u, p in pairs]
    assert len({n.pod for n in names}) == len(pairs)
    for n in names:
        assert len(n.pod) <= 63 and len(n.home_claim) <= 63
        for value in (n.pod, n.home_claim, n.network_policy, n.workspace_id):
            assert kubernetes_validate_label(value)


def kubernetes_validate_label(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value))


def test_volumes_and_mounts_come_from_the_shared_mount_list():
    names = kube_names("bob", "proj-a")
    limits = Limits(tmp_size="64Mi")
    assert pod_volumes(names, extracts_claim="x", limits=limits) == [
        {"name": "home", "persistentVolumeClaim": {"claimName": names.home_claim}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "x", "readOnly": True}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    assert pod_volume_mounts(names, extract_subpath="proj-a/bob/v0002") == [
        {"name": "home", "mountPath": "/home/researcher"},
        {"name": "data", "mountPath": "/data", "subPath": "proj-a/bob/v0002", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def test_resources_from_registry_limits():
    assert kube_resources(Limits(mem_limit="4g", cpu_limit=2)) == {
        "cpu_limit": 2.0,
        "cpu_guarantee": 0.1,
        "mem_limit": "4G",
        "mem_guarantee": "4G",
    }
    assert kube_resources(Limits(mem_limit=2**30, cpu_limit=0.05))["cpu_guarantee"] == 0.05


async def test_operator_pod_config_cannot_reopen_dns_or_host_namespaces(make_spawner):
    """The room's pod fields are applied over extra_pod_config, so a chart setting cannot
    bring back cluster DNS or a host namespace."""
    spawner = make_spawner(extra_pod_config={"dnsPolicy": "ClusterFirst", "hostNetwork": True})
    pod = manifest_dict(await (await admitted(spawner)).get_pod_manifest())
    assert (pod["spec"]["dnsPolicy"], pod["spec"]["hostNetwork"]) == ("None", False)


async def test_state_keeps_the_project_so_stop_finds_the_policy(make_spawner):
    spawner = await admitted(make_spawner())
    state = spawner.get_state()
    assert (state["project"], state["pod_name"]) == ("diabetes-outcomes", POD_NAME)
    again = make_spawner()
    again.load_state(state)
    assert again.project == "diabetes-outcomes"
    assert again.network_policy_manifest()["metadata"]["name"] == f"{POD_NAME}-egress"
