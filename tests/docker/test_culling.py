"""Idle culling on a real hub: a workspace idle past its project's timeout is stopped (its
container gone, ``workspace.culled`` audited with the reason), while the same person's
workspace on a project with a longer timeout, equally idle, keeps running."""

from __future__ import annotations

import pytest

from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT_FILE = """
slug = "{slug}"
title = "Idle culling test ({idle})"
purpose = "research"
ethics_reference = "IRAS 399999"
lay_summary = "A test project."
public_benefit = "Tests."

[organisation]
name = "Test Trust"
kind = "nhs"

[approval]
dac_reference = "DAC-TEST-1"
dac_date = 2026-10-15
lay_member = "Pat Lewis"
lay_member_signed = 2026-10-12

[[agreements]]
reference = "DSA-{slug}"
signed = 2026-10-20
start = 2026-11-01
end = 2030-10-31
delete_by = 2031-01-31

[[members]]
username = "ivy"
name = "Ivy"
role = "researcher"
training_expires = 2030-06-30

[[datasets]]
slug = "patients"

[[datasets.grants]]
member = "ivy"
columns = ["pseudonym", "age"]

[limits]
idle = "{idle}"
"""


def containers(docker_client, hub, project):
    return docker_client.containers.list(
        filters={
            "label": [f"org.sde-tre.managed-by={hub.prefix}", f"org.sde-tre.project={project}"]
        }
    )


def test_an_idle_workspace_is_culled_at_its_projects_timeout(hub, docker_client, tmp_path):
    for slug, idle in (("idle-long", "2h"), ("idle-short", "20s")):
        path = tmp_path / f"{slug}.toml"
        path.write_text(PROJECT_FILE.format(slug=slug, idle=idle))
        res = hub.admin("apply", str(path))
        assert res.returncode == 0, res.stderr + res.stdout
    ivy = User(hub, "ivy")  # a person of this test's own (others' spawn forms stay as they are)
    for slug in ("idle-long", "idle-short"):
        ivy.ensure_stopped(slug)
        assert ivy.spawn_with_form(slug, slug).status_code == 302
        ivy.wait_ready(slug)
    assert containers(docker_client, hub, "idle-short")

    # Nobody uses either; the hub reads activity from the proxy every 3 s and the service
    # looks for idle rooms every 3 s (tests/support.py).
    wait_for(lambda: ivy.server("idle-short") is None, 120, "the idle room to be culled")
    wait_for(lambda: not containers(docker_client, hub, "idle-short"), 60, "its container")
    (ev,) = [e for e in hub.events(action="workspace.culled") if e["project"] == "idle-short"]
    assert ev["actor"] == "lifecycle" and ev["outcome"] == "allowed"
    assert ev["details"]["target"] == "ivy" and ev["details"]["timeout"] == 20
    assert ev["reason"].startswith("idle for ") and ev["details"]["idle_seconds"] >= 20
    assert ev["reason"].endswith("project idle-short's idle timeout is 20 s")

    # the control: idle as long, on a project with a longer timeout, still running
    info = ivy.server("idle-long")
    assert info is not None and info["ready"]
    assert containers(docker_client, hub, "idle-long")
    assert not [e for e in hub.events(action="workspace.culled") if e["project"] == "idle-long"]
    ivy.stop("idle-long")
