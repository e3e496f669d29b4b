"""An agreement that ends while a workspace runs closes it: the room of a project whose data
access agreement the DAC ends early (its end date moved into the past, through
``sde-admin agreement add``, which records ``agreement.updated``) is stopped by the ``sde``
service's lifecycle watch without anyone running ``sde-admin enforce``, the closure is audited
with the reason, and the room cannot be started again.

The test hub's periodic sweep runs only every 600 s, so only the watch on the audit head
(:func:`sde_spawner.lifecycle.registry_changed`) can close it in time. An agreement that
ends by the calendar announces no change; the periodic sweep (``SDE_ENFORCE_SECONDS``)
closes those, with the same :func:`~sde_spawner.lifecycle.enforce` exercised here and the same
:func:`~sde_spawner.lifecycle.plan` (tests/unit/test_lifecycle.py).

The project, person and agreement are the test's own: the demo's agreement stays in force for
every other test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sde_spawner.containers import workspace_names
from tests.support import User, wait_for

pytestmark = pytest.mark.docker

PROJECT = "attack-ending"
AGREEMENT = "DSA-T-END"


def test_ending_the_agreement_closes_the_running_workspace(hub, docker_client):
    hub.add_project(PROJECT, ["hank"], agreement=AGREEMENT)
    hank = User(hub, "hank")
    assert hank.logged_in, hub.log_tail()
    hank.ensure_running(PROJECT)
    name = workspace_names("hank", PROJECT, hub.prefix).container
    try:
        # control: while the agreement is in force the room runs and no sweep would close it
        assert docker_client.containers.get(name).status == "running"
        dry = hub.admin("enforce", "--dry-run")
        assert dry.returncode == 0 and "hank" not in dry.stdout, dry.stdout
        assert hank.workspace_get(PROJECT, "api/status").status_code == 200

        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        res = hub.admin(
            "agreement", "add", PROJECT, AGREEMENT, "--signed", "2026-10-20",
            "--start", "2026-11-01", "--end", yesterday, "--delete-by", "2031-01-31",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + res.stdout

        reason = f"agreement {AGREEMENT} ended {yesterday}"
        wait_for(lambda: hank.server(PROJECT) is None, 60, "the service to close hank's room")
        closed = [
            e
            for e in hub.events(action="workspace.closed", project=PROJECT)
            if e["details"]["target"] == "hank"
        ]
        assert closed, hub.log_tail(30)
        assert closed[-1]["actor"] == "lifecycle" and closed[-1]["reason"] == reason
        wait_for(
            lambda: not docker_client.containers.list(all=True, filters={"name": f"^{name}$"}),
            60,
            "hank's container to be removed",
        )
        r = hank.api("POST", f"/users/hank/servers/{PROJECT}", json={"project": PROJECT})
        assert r.status_code == 403 and reason in r.json()["message"], r.text
        refused = hub.events(action="spawn.refused", actor="hank", project=PROJECT)
        assert refused and refused[-1]["reason"] == reason, refused
    finally:
        hank.ensure_stopped(PROJECT)
