"""Whole-dict tests of the pure Docker builders: a dropped control fails here."""

import ipaddress
import re

import pytest

from sde_spawner.containers import (
    Limits,
    container_spec,
    escape,
    labels,
    network_spec,
    network_subnets,
    pick_subnet,
    volume_spec,
    workspace_names,
)


def test_escape_is_injective_and_docker_safe():
    names = ["alice", "Alice", "a.lice", "a-lice", "a_2elice", "ünï", "a/../b", "a b", "x@y.org"]
    escaped = [escape(n) for n in names]
    assert len(set(escaped)) == len(names)
    for e in escaped:
        assert re.fullmatch(r"[a-z0-9_-]+", e) and "__" not in e
    # person/project split is unambiguous even with '-' and '_' in the inputs
    pairs = [("a--b", "c"), ("a", "b--c"), ("a_", "b"), ("a", "_b"), ("a__b", "c")]
    assert len({workspace_names(u, p).container for u, p in pairs}) == len(pairs)


def test_names_are_bounded_and_bridge_fits_ifnamsiz():
    n = workspace_names("alice", "diabetes-outcomes")
    assert n.container == "sde-alice__diabetes-outcomes"
    assert n.network == "sde-alice__diabetes-outcomes-net"
    assert n.home_volume == "sde-alice__diabetes-outcomes-home"
    assert re.fullmatch(r"sde[0-9a-f]{12}", n.bridge)
    long = workspace_names("x" * 300, "p" * 40)
    assert len(long.container) <= 100 and len(long.bridge) <= 15
    assert workspace_names("x" * 300, "p" * 40) == long
    assert workspace_names("x" * 299 + "y", "p" * 40).container != long.container


def test_network_spec_whole():
    n = workspace_names("bob", "proj-a")
    assert network_spec(n, labels("bob", "proj-a")) == {
        "name": "sde-bob__proj-a-net",
        "driver": "bridge",
        "internal": True,
        "check_duplicate": True,
        "labels": {
            "org.sde-tre.managed-by": "sde",
            "org.sde-tre.user": "bob",
            "org.sde-tre.project": "proj-a",
        },
        "options": {
            "com.docker.network.bridge.name": n.bridge,
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "false",
        },
    }


def test_network_spec_with_subnet_whole():
    n = workspace_names("bob", "proj-a")
    assert network_spec(n, {"k": "v"}, "10.213.4.16/28") == {
        "name": "sde-bob__proj-a-net",
        "driver": "bridge",
        "internal": True,
        "check_duplicate": True,
        "labels": {"k": "v"},
        "options": {
            "com.docker.network.bridge.name": n.bridge,
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "false",
        },
        "ipam": {
            "Driver": "default",
            "Config": [{"Subnet": "10.213.4.16/28", "Gateway": "10.213.4.17"}],
        },
    }


def test_network_subnets_from_the_engine_listing():
    listing = [
        {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "x"}]}},
        {"Name": "none", "IPAM": {"Config": []}},
        {"Name": "host", "IPAM": {"Config": None}},
        {"Name": "v6", "IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}, {"Subnet": "fd00::/64"}]}},
    ]
    assert network_subnets(listing) == ["172.17.0.0/16", "10.9.0.0/24", "fd00::/64"]


def test_pick_subnet_avoids_every_taken_range_until_the_pool_is_full():
    pool = "10.213.0.0/24"  # sixteen /28s
    taken: list[str] = ["172.17.0.0/16", "fd00::/64", "not a subnet"]
    picked = []
    for i in range(16):
        subnet = pick_subnet(pool, 28, taken + picked, f"net-{i}")
        assert subnet is not None
        picked.append(subnet)
    assert len(set(picked)) == 16
    assert all(ipaddress.ip_network(p).subnet_of(ipaddress.ip_network(pool)) for p in picked)
    assert pick_subnet(pool, 28, taken + picked, "one-more") is None
    # a larger range someone else uses blocks every /28 inside it
    half = pick_subnet(pool, 28, ["10.213.0.0/25"], "x")
    assert not ipaddress.ip_network(half).overlaps(ipaddress.ip_network("10.213.0.0/25"))


def test_pick_subnet_start_depends_on_the_name_and_is_stable():
    a = pick_subnet("10.213.0.0/16", 28, [], "sde-alice__p-net")
    assert a == pick_subnet("10.213.0.0/16", 28, [], "sde-alice__p-net")
    others = {pick_subnet("10.213.0.0/16", 28, [], f"sde-u{i}__p-net") for i in range(20)}
    assert len(others) > 15  # spread out: two hubs on one engine rarely collide


def test_pick_subnet_refuses_an_impossible_prefix():
    with pytest.raises(ValueError, match="cannot carve"):
        pick_subnet("10.213.0.0/24", 16, [], "x")
    with pytest.raises(ValueError, match="cannot carve"):
        pick_subnet("10.213.0.0/24", 31, [], "x")


def test_volume_spec_whole():
    n = workspace_names("bob", "proj-a")
    assert volume_spec(n, {"k": "v"}) == {
        "name": "sde-bob__proj-a-home",
        "driver": "local",
        "labels": {"k": "v"},
    }


def test_container_spec_whole():
    n = workspace_names("bob", "proj-a")
    spec = container_spec(
        names=n,
        image="sde-notebook:latest",
        command=["jupyterhub-singleuser"],
        env={"JUPYTERHUB_API_TOKEN": "t"},
        extract_dir="/srv/extracts/proj-a/bob",
        imports_dir="/srv/imports/mounts/proj-a/0123abcd",
        limits=Limits(mem_limit="1G", cpu_limit=0.5, pids_limit=128, tmp_size="64m"),
        object_labels={"k": "v"},
    )
    assert spec == {
        "image": "sde-notebook:latest",
        "name": "sde-bob__proj-a",
        "command": ["jupyterhub-singleuser"],
        "environment": {"JUPYTERHUB_API_TOKEN": "t"},
        "user": "1000:1000",
        "working_dir": "/home/researcher",
        "hostname": "workspace",
        "labels": {"k": "v"},
        "ports": {"8888/tcp": None},
        "host_config": {
            "network_mode": "sde-bob__proj-a-net",
            "dns": ["0.0.0.0"],
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "sysctls": {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv4.ping_group_range": "1 0",
            },
            "privileged": False,
            "ipc_mode": "private",
            "pids_limit": 128,
            "mem_limit": "1G",
            "memswap_limit": "1G",
            "nano_cpus": 500_000_000,
            "mounts": [
                {
                    "Target": "/home/researcher",
                    "Source": "sde-bob__proj-a-home",
                    "Type": "volume",
                    "ReadOnly": False,
                },
                {
                    "Target": "/data",
                    "Source": "/srv/extracts/proj-a/bob",
                    "Type": "bind",
                    "ReadOnly": True,
                },
                {
                    "Target": "/imports",
                    "Source": "/srv/imports/mounts/proj-a/0123abcd",
                    "Type": "bind",
                    "ReadOnly": True,
                },
            ],
            "auto_remove": False,
        },
    }


def test_no_docker_socket_or_host_paths_besides_the_extract_and_imports():
    n = workspace_names("bob", "proj-a")
    spec = container_spec(
        names=n,
        image="i",
        command=[],
        env={},
        extract_dir="/x",
        imports_dir="/y",
        limits=Limits(),
        object_labels={},
    )
    binds = [m for m in spec["host_config"]["mounts"] if m["Type"] == "bind"]
    assert binds == [
        {"Target": "/data", "Source": "/x", "Type": "bind", "ReadOnly": True},
        {"Target": "/imports", "Source": "/y", "Type": "bind", "ReadOnly": True},
    ]
    assert "docker.sock" not in repr(spec)
