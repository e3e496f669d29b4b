"""The Swarm path's pure builders, compared as whole dicts (sde_spawner.swarm)."""

from __future__ import annotations

import copy

import pytest

from sde_spawner.containers import Limits, labels, workspace_names
from sde_spawner.swarm import (
    check_service_spec,
    overlay_network_spec,
    placement_constraints,
    service_spec,
    to_bytes,
)

NAMES = workspace_names("alice", "diabetes-outcomes")
LABELS = labels("alice", "diabetes-outcomes")


def spec(**kw):
    args = dict(
        names=NAMES,
        image="sde-notebook:latest",
        command=["jupyterhub-singleuser"],
        env={"JUPYTERHUB_API_TOKEN": "t", "SDE_PROJECT": "diabetes-outcomes"},
        extract_dir="/var/lib/sde/extracts/diabetes-outcomes/alice/v1",
        imports_dir="/var/lib/sde/imports/mounts/diabetes-outcomes/l1",
        limits=Limits(mem_limit="4g", cpu_limit=2.0, pids_limit=128, tmp_size="64m"),
        object_labels=LABELS,
        extracts_store="local",
    )
    args.update(kw)
    return service_spec(**args)


def test_the_overlay_is_internal_encrypted_attachable_and_swarm_scoped():
    assert overlay_network_spec(NAMES, LABELS) == {
        "name": "sde-alice__diabetes-outcomes-net",
        "driver": "overlay",
        "scope": "swarm",
        "internal": True,
        "attachable": True,
        "check_duplicate": True,
        "labels": LABELS,
        "options": {"encrypted": ""},
    }
    assert overlay_network_spec(NAMES, LABELS, encrypted=False)["options"] == {}


def test_the_service_spec_is_the_locked_room():
    assert spec() == {
        "name": "sde-alice__diabetes-outcomes",
        "labels": LABELS,
        "task_template": {
            "ContainerSpec": {
                "Image": "sde-notebook:latest",
                "Args": ["jupyterhub-singleuser"],
                "Env": ["JUPYTERHUB_API_TOKEN=t", "SDE_PROJECT=diabetes-outcomes"],
                "User": "1000:1000",
                "Dir": "/home/researcher",
                "Hostname": "workspace",
                "Labels": LABELS,
                "ReadOnly": True,
                "Mounts": [
                    {
                        "Target": "/home/researcher",
                        "Source": "sde-alice__diabetes-outcomes-home",
                        "Type": "volume",
                        "ReadOnly": False,
                    },
                    {
                        "Target": "/data",
                        "Source": "/var/lib/sde/extracts/diabetes-outcomes/alice/v1",
                        "Type": "bind",
                        "ReadOnly": True,
                    },
                    {
                        "Target": "/imports",
                        "Source": "/var/lib/sde/imports/mounts/diabetes-outcomes/l1",
                        "Type": "bind",
                        "ReadOnly": True,
                    },
                    {
                        "Target": "/tmp",
                        "Type": "tmpfs",
                        "TmpfsOptions": {"SizeBytes": 64 << 20, "Mode": 0o1777},
                    },
                ],
                "CapabilityDrop": ["ALL"],
                "Sysctls": {
                    "net.ipv6.conf.all.disable_ipv6": "1",
                    "net.ipv6.conf.default.disable_ipv6": "1",
                    "net.ipv4.ping_group_range": "1 0",
                },
                "DNSConfig": {"Nameservers": ["0.0.0.0"]},
                "Init": False,
            },
            "Resources": {
                "Limits": {"MemoryBytes": 4 << 30, "NanoCPUs": 2_000_000_000, "Pids": 128}
            },
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            "Placement": {"Constraints": ["node.labels.org.sde-tre.extracts==local"]},
            "Networks": [{"Target": "sde-alice__diabetes-outcomes-net", "Aliases": ["workspace"]}],
        },
        "mode": {"Replicated": {"Replicas": 1}},
        "endpoint_spec": {"Mode": "dnsrr"},
    }


def test_placement_names_the_extract_store():
    assert placement_constraints("nfs-1") == ["node.labels.org.sde-tre.extracts==nfs-1"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [("2g", 2 << 30), ("2G", 2 << 30), ("512Mi", 512 << 20), ("256m", 256 << 20), (7, 7), ("9", 9)],
)
def test_sizes_become_bytes(size, expected):
    assert to_bytes(size) == expected


def stored_from(wanted: dict) -> dict:
    """The Spec a 20.10 manager stores for ``wanted`` (ReadOnly=False mounts lose the key)."""
    task = copy.deepcopy(wanted["task_template"])
    for m in task["ContainerSpec"]["Mounts"]:
        if m.get("ReadOnly") is False:
            del m["ReadOnly"]
    return {"Name": wanted["name"], "TaskTemplate": task, "EndpointSpec": {"Mode": "dnsrr"}}


def test_a_faithfully_stored_spec_has_no_findings():
    assert check_service_spec(stored_from(spec()), spec()) == []


def test_a_manager_that_dropped_controls_is_caught():
    stored = stored_from(spec())
    del stored["TaskTemplate"]["ContainerSpec"]["CapabilityDrop"]  # an API < 1.41 manager
    del stored["TaskTemplate"]["Resources"]["Limits"]["Pids"]
    stored["TaskTemplate"]["ContainerSpec"]["Mounts"][1]["ReadOnly"] = False
    stored["EndpointSpec"]["Ports"] = [{"TargetPort": 8888, "PublishedPort": 30000}]
    assert check_service_spec(stored, spec()) == [
        "ContainerSpec.CapabilityDrop is None, not ['ALL']",
        "ContainerSpec.Mounts are " + repr(stored["TaskTemplate"]["ContainerSpec"]["Mounts"]),
        "Resources.Limits.Pids is None, not 128",
        "the service publishes ports",
    ]
