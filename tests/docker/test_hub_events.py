"""Hub-side events reach the audit trail with the right actor: login, failed login, token
creation, spawn requests, admin API calls and denials, logout."""

from __future__ import annotations

import pytest
import requests

from tests.support import User, wait_for

pytestmark = pytest.mark.docker


def latest(hub, **filters):
    found = hub.events(**filters)
    return found[-1] if found else None


def test_login_failed_login_token_and_logout_are_audited(hub):
    bad = User(hub, "alice", password="wrong")
    assert not bad.logged_in
    ev = latest(hub, action="login.failed", actor="alice")
    assert ev["outcome"] == "denied" and ev["reason"] == "wrong password"
    assert not User(hub, "mallory").logged_in
    assert latest(hub, action="login.failed", actor="mallory")["reason"] == "unknown user"

    dana = User(hub, "dana")
    assert dana.logged_in and latest(hub, action="login", actor="dana")
    dana.token  # noqa: B018 - creating a token is the action under test
    ev = wait_for(lambda: latest(hub, action="token.created", actor="dana"), 10, "token event")
    assert ev["details"]["target"] == "dana"

    r = dana.s.get(f"{hub.url}/hub/logout", timeout=10)
    assert r.status_code == 200
    wait_for(lambda: latest(hub, action="logout", actor="dana"), 10, "logout event")


def test_admin_api_calls_and_denied_calls_are_audited(hub):
    admin = User(hub, "admin")
    r = admin.api("GET", "/users")
    assert r.status_code == 200
    wait_for(lambda: latest(hub, action="hub.api.read", actor="admin"), 10, "admin read")

    chris = User(hub, "chris")
    r = requests.delete(
        f"{hub.url}/hub/api/users/alice/server",
        headers={"Authorization": f"token {chris.token}"},
        timeout=10,
    )
    assert r.status_code in (403, 404)
    ev = wait_for(lambda: latest(hub, action="stop.requested", actor="chris"), 10, "denial")
    assert ev["outcome"] == "denied" and ev["details"]["target"] == "alice"


def test_admin_audit_page_shows_verified_trail_and_refuses_others(hub):
    admin = User(hub, "admin")
    r = admin.s.get(f"{hub.url}/services/sde/audit/?person=alice", timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert 'id="verify">Chain verified' in r.text
    assert "<td>alice</td>" in r.text and "<td>bob</td>" not in r.text
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    exported = admin.s.get(f"{hub.url}/services/sde/audit/export.jsonl?action=login", timeout=30)
    lines = [ln for ln in exported.text.splitlines() if ln]
    assert lines and all('"action":"login"' in ln.replace(" ", "") for ln in lines)

    alice = User(hub, "alice")
    r = alice.s.get(f"{hub.url}/services/sde/audit/", timeout=30)
    assert r.status_code == 403
    ev = wait_for(lambda: latest(hub, action="audit.page.refused", actor="alice"), 10, "refusal")
    assert ev["outcome"] == "denied"


def test_checkpoints_are_written_and_verify_uses_them(hub):
    key = hub.state_dir / "audit" / "checkpoint.key"
    file = hub.state_dir / "audit" / "checkpoints.jsonl"
    wait_for(lambda: file.exists() and file.read_text().strip(), 30, "a checkpoint")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    res = hub.admin("audit", "--key-file", str(key), "--checkpoint-file", str(file), "verify")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK")
