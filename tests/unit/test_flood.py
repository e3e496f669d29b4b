"""Floods, quotas and odd input against the real ``sde`` service over HTTP (in-process, as
``test_checking_handlers``): refused requests become aggregated ``rate.limited`` rows instead
of one audit row each, bodies are limited before they are buffered, quotas refuse with a
reason and an audit row, the sweep expires abandoned drafts and collects unreferenced blobs,
and malformed JSON or ids get a clear 400 with an audit row instead of a 500."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from sde_spawner.checking import base, limits, pages, queries, sweep
from sde_spawner.checking.models import (
    ExportFile,
    ExportRequest,
    ExportVersion,
    ReleaseDownload,
    utcnow,
)
from sde_spawner.checking.storage import BlobStore
from sde_spawner.checking.testing import (
    PROJECT,
    FakeHubOAuth,
    browser_model,
    make_db,
    open_workspace,
    server_token_model,
    sha256,
)
from tests.unit.test_checking_handlers import (
    CSV,
    PEOPLE,
    PREFIX,
    Service,
    body_of,
    events,
    review_all,
    submit_request,
)

FLOOD = 400


@pytest.fixture
def hub_auth():
    tokens = {f"oauth-{u}": browser_model(u) for u in PEOPLE}
    tokens["ws-alice"] = server_token_model("alice", PROJECT)
    tokens["ws-bob"] = server_token_model("bob", PROJECT)
    return FakeHubOAuth(tokens)


@pytest.fixture
def db(tmp_path):
    Session = make_db(tmp_path)
    open_workspace(Session, "alice", PROJECT)
    open_workspace(Session, "bob", PROJECT)
    return Session


@pytest.fixture
def env(monkeypatch):
    """Set SDE_LIMIT_* before the service starts (its limits are read once)."""

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(f"SDE_LIMIT_{k.upper()}", str(v))

    return set_


@pytest.fixture
async def make_svc(tmp_path, db, hub_auth):
    made = []

    async def make():
        made.append(Service(tmp_path, hub_auth))
        return made[-1]

    yield make
    for s in made:
        await s.stop()


def lim(svc) -> limits.Limits:
    return limits.for_app(svc.app.settings)


def store_of(tmp_path) -> BlobStore:
    return BlobStore.for_state_dir(tmp_path / "state")


# --- floods -------------------------------------------------------------------------------


ROUTES = {
    "export API without a token": ("POST", "api/exports", {}, None),
    "audit ingestion without a token": ("POST", "api/audit/events", {}, None),
    "release download with a token": ("GET", "releases/1/files/1", {}, "ws-alice"),
    "page form without a login": ("POST", "checking/requests/1/claim", {}, None),
}


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "control-unlimited"])
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_flood_of_refused_requests_makes_a_few_rows_and_one_aggregate(
    env, make_svc, db, route, limited
):
    """400 refused requests from one address: the first ``refusal_burst`` are audited one by
    one, the rest answered 429 before any work and counted into one ``rate.limited`` row.
    Every refused request is accounted for. The control (budgets unlimited) shows the probe
    sees the flood: one row per request."""
    if not limited:
        env(refusal_burst=10**6, request_burst=10**6, total_refusal_burst=10**6)
    svc = await make_svc()
    method, path, body, token = ROUTES[route]
    before = len(events(db))
    started = time.perf_counter()
    codes = []
    for batch in range(0, FLOOD, 50):
        rs = await asyncio.gather(
            *(
                svc.fetch(method, path, body=body or None, token=token, source="127.0.0.2")
                for _ in range(batch, batch + 50)
            )
        )
        codes += [r.code for r in rs]
    elapsed = time.perf_counter() - started
    written = await asyncio.to_thread(sweep.write_aggregates, db, lim(svc), everything=True)
    rows = events(db)[before:]
    single = [e for e in rows if e["action"] != "rate.limited"]
    aggregated = [e for e in rows if e["action"] == "rate.limited"]
    print(
        f"\n{route} ({'limited' if limited else 'unlimited'}): {FLOOD} refused requests in "
        f"{elapsed:.2f} s -> {len(rows)} audit rows ({len(single)} single, "
        f"{len(aggregated)} aggregated)"
    )
    assert all(c in (401, 403, 429) for c in codes), set(codes)
    if not limited:
        assert len(single) == FLOOD and not aggregated
        return
    burst = limits.LimitSettings().refusal_burst
    refill = int(elapsed * limits.LimitSettings().refusal_rate) + 1
    assert burst <= len(single) <= burst + refill
    assert written == len(aggregated) == 1
    (agg,) = aggregated
    assert agg["outcome"] == "denied" and agg["actor"] is None
    assert agg["details"]["key"] == "addr=127.0.0.2"
    assert len(single) + agg["details"]["count"] == FLOOD  # nothing unaccounted for
    # requests in flight together pass the gate before the budget is used up (each of these
    # is refused as usual and counted); every later one is answered 429 before any work
    # (a batch in flight when a token refills passes too; the pages have no gate of their
    # own: their refusals are counted, not audited, alike)
    if not path.startswith("checking/"):
        assert codes.count(429) >= FLOOD - 50 * (refill + 1)
    # another client is unaffected: alice's workspace (127.0.0.1) carries on
    assert (await svc.fetch("GET", "api/exports", token="ws-alice")).code == 200


async def test_429_says_why_and_when_and_requests_over_the_rate_are_counted(env, make_svc, db):
    env(request_burst=5, request_rate=0.01)
    svc = await make_svc()
    codes = [(await svc.fetch("GET", "api/exports", token="ws-alice")).code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    r = await svc.fetch("GET", "api/exports", token="ws-alice")
    assert r.code == 429 and int(r.headers["Retry-After"]) >= 1
    assert json.loads(r.body)["message"].startswith(
        "too many requests from addr=127.0.0.1: try again in "
    )
    assert not events(db, outcome="denied")  # no row per limited request...
    await asyncio.to_thread(sweep.write_aggregates, db, lim(svc), everything=True)
    (row,) = events(db, action="rate.limited")  # ...one row with the count
    assert row["details"]["count"] == 4
    assert row["details"]["reasons"] == {"too many requests (requests)": 4}


async def test_audit_ingestion_is_limited_per_workspace_in_events(env, make_svc, db):
    env(event_burst=600, event_rate=0.01)
    svc = await make_svc()
    batch = {"events": [{"action": "file.saved", "details": {"n": i}} for i in range(500)]}
    r = await svc.fetch("POST", "api/audit/events", token="ws-alice", body=batch)
    assert r.code == 200, r.body
    r = await svc.fetch("POST", "api/audit/events", token="ws-alice", body=batch)
    assert r.code == 429
    assert json.loads(r.body)["message"].startswith("too many audit events from user=alice")
    assert len(events(db, action="file.saved")) == 500


# --- body limits --------------------------------------------------------------------------


async def raw_headers(svc, method: str, path: str, headers: dict) -> bytes:
    """Send only a request's headers (no body) and read what the service answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    head = f"{method} {PREFIX}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    ("path", "limit", "reason"),
    [
        ("api/exports", 1024 * 1024, b"over this route's limit of 1048576 bytes"),
        ("api/audit/events", 2 * 1024 * 1024, b"over the 2097152-byte limit"),
    ],
)
async def test_a_declared_body_over_the_route_limit_is_refused_before_it_is_read(
    make_svc, db, path, limit, reason
):
    svc = await make_svc()
    answer = await raw_headers(
        svc,
        "POST",
        path,
        {"Authorization": "token ws-alice", "Content-Length": str(limit + 1)},
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert reason in answer
    (row,) = [e for e in events(db, outcome="denied") if "limit" in (e["reason"] or "")]
    assert str(limit + 1) in row["reason"]


async def raw_chunked(svc, path: str, body: bytes, headers: dict) -> bytes:
    """Send ``body`` chunked (no declared length) and read what the service answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    head = f"POST {PREFIX}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    try:
        writer.write(head.encode())
        for i in range(0, len(body), 64 * 1024):
            piece = body[i : i + 64 * 1024]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # the service stopped reading: what it answered is still to be read
    try:
        return await asyncio.wait_for(reader.read(65536), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("path", "limit"),
    [("api/exports", 1024 * 1024), ("api/audit/events", 2 * 1024 * 1024)],
)
async def test_a_chunked_body_is_cut_off_at_the_route_limit_while_it_streams(
    make_svc, db, path, limit
):
    """No declared length: the route's limit (far below the 4 MiB server default) still
    holds, applied to the bytes as they arrive. The body is valid JSON padded with blanks,
    which the route would accept if it read it whole (the control: the same body under the
    limit is accepted)."""
    svc = await make_svc()
    if path == "api/exports":
        payload = json.dumps(body_of({"t.csv": CSV})).encode()
    else:
        payload = json.dumps({"events": [{"action": "code.executed", "details": {"code": "1"}}]})
        payload = payload.encode()
    headers = {"Authorization": "token ws-alice", "Content-Type": "application/json"}
    before = len(events(db))
    answer = await raw_chunked(svc, path, payload + b" " * (limit + 256 * 1024), headers)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # tornado: over the limit, closed
    assert len(events(db)) == before  # nothing was created or ingested
    under = await raw_chunked(svc, path, payload + b" " * (limit - 64 * 1024), headers)
    assert under.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 201 ")), under[:300]
    assert len(events(db)) > before


async def test_other_routes_take_the_small_server_default_not_100_mib(make_svc, db):
    svc = await make_svc()
    answer = await raw_headers(
        svc, "POST", "checking/requests/1/claim", {"Content-Length": str(5 * 1024 * 1024)}
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # tornado: too long, closed


async def test_uploads_keep_their_own_limit_and_still_stream(make_svc, db, tmp_path):
    svc = await make_svc()
    # over the 4 MiB default of other routes; a real table (the service checks the bytes)
    big = b"n\n" + b"".join(b"%09d\n" % i for i in range(700_000))
    assert len(big) > 6 * 1024 * 1024
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of({"big.csv": big}))
    up = json.loads(r.body)["uploads"][0]["url"].removeprefix(PREFIX)
    r = await svc.fetch("PUT", up, token="ws-alice", body=big)
    assert r.code == 200, r.body
    assert store_of(tmp_path).exists(sha256(big))


# --- quotas -------------------------------------------------------------------------------


async def test_quotas_refuse_with_a_reason_and_an_audit_row(env, make_svc, db):
    env(person_open_drafts=2, person_declared_bytes=1000, min_free_bytes=2**60)
    svc = await make_svc()
    small = body_of({"a.csv": CSV})
    for _ in range(2):
        assert (await svc.fetch("POST", "api/exports", token="ws-alice", body=small)).code == 201
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=small)
    assert r.code == 429
    assert json.loads(r.body)["message"] == (
        "you already have 2 unsubmitted export drafts (the limit is 2): submit them or let "
        "them expire"
    )
    body = {
        "justification": "big",
        "files": [{"path": "x.csv", "description": "x", "size": 1001, "sha256": "0" * 64}],
    }
    r = await svc.fetch("POST", "api/exports", token="ws-bob", body=body)
    assert r.code == 413 and b"over your quota of 1000 bytes" in r.body
    # the state directory's free-space reserve: no upload may eat into it
    r = await svc.fetch("PUT", "api/exports/1/files/0", token="ws-alice", body=CSV)
    assert r.code == 413 and b"space left" in r.body
    denied = events(db, outcome="denied")
    assert [(e["action"], e["actor"]) for e in denied] == [
        ("export.created", "alice"),
        ("export.created", "bob"),
        ("export.file.uploaded", "alice"),
    ]
    assert all(e["details"]["quota"] for e in denied)


# --- housekeeping -------------------------------------------------------------------------


async def test_sweep_expires_abandoned_drafts_and_collects_their_blobs(make_svc, db, tmp_path):
    svc = await make_svc()
    kept_rid = await submit_request(svc, files={"kept.csv": CSV})
    old = b"abandoned,1\n"
    r = await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of({"o.csv": old}))
    old_rid = json.loads(r.body)["id"]
    await svc.fetch("PUT", f"api/exports/{old_rid}/files/0", token="ws-alice", body=old)
    fresh = await svc.fetch("POST", "api/exports", token="ws-bob", body=body_of({"f.csv": CSV}))
    fresh_rid = json.loads(fresh.body)["id"]
    store = store_of(tmp_path)
    with db() as s, s.begin():  # a week and more ago
        s.execute(
            update(ExportRequest)
            .where(ExportRequest.id == old_rid)
            .values(updated_at=utcnow() - timedelta(days=8))
        )
        s.execute(update(ExportFile).values(uploaded_at=utcnow() - timedelta(days=8)))
    stray = store.put(b"never referenced\n")
    for key in (sha256(old), sha256(CSV), stray):
        os.utime(store.path(key), (time.time() - 7200,) * 2)
    settings = limits.LimitSettings()

    plan = await asyncio.to_thread(sweep.sweep, db, store, settings, dry_run=True)
    assert [d.id for d in plan.expire_drafts] == [old_rid]
    assert sorted(b.key for b in plan.delete_blobs) == sorted([sha256(old), stray])
    assert store.exists(sha256(old)) and not events(db, action="export.draft.expired")

    done = await asyncio.to_thread(sweep.sweep, db, store, settings)
    assert done.summary() == {**plan.summary()}
    assert not store.exists(sha256(old)) and not store.exists(stray)
    assert store.exists(sha256(CSV))  # the submitted request's bytes stay
    r = await svc.fetch("GET", f"api/exports/{old_rid}", token="ws-alice")
    assert r.code == 404
    for rid, token in ((kept_rid, "ws-alice"), (fresh_rid, "ws-bob")):
        assert (await svc.fetch("GET", f"api/exports/{rid}", token=token)).code == 200
    (expired,) = events(db, action="export.draft.expired")
    assert expired["actor"] == "system" and expired["details"]["request"] == old_rid
    assert expired["details"]["files"] == [
        {"path": "o.csv", "size": len(old), "sha256": sha256(old)}
    ]
    (swept,) = events(db, action="export.store.swept")
    assert swept["details"]["deleted_blobs"] == 2
    assert (await asyncio.to_thread(sweep.sweep, db, store, settings)).summary()[
        "expired_drafts"
    ] == []


async def test_a_reused_blob_is_not_collected_under_an_upload(make_svc, db, tmp_path):
    """An upload whose bytes are already stored reuses the blob and touches it, so a sweep
    between the upload and its recording never deletes it."""
    store = store_of(tmp_path)
    key = store.put(CSV)
    os.utime(store.path(key), (time.time() - 7200,) * 2)
    w = store.writer(len(CSV), key, len(CSV))
    w.write(CSV)
    assert w.finish() == key
    plan = await asyncio.to_thread(sweep.plan, db, store, limits.LimitSettings())
    assert plan.delete_blobs == ()


# --- odd input ----------------------------------------------------------------------------


async def test_malformed_json_and_ids_get_400_and_an_audit_row(make_svc, db):
    svc = await make_svc()
    huge = "1" * 30
    nul = {**body_of({"a.csv": CSV}), "justification": "see\u0000this"}
    cases = [
        ("POST", "api/exports", "[" * 5000 + "]" * 5000, b"nested deeper than 32"),
        ("POST", "api/exports", json.dumps(nul), b"NUL character"),
        ("POST", "api/exports", '{"files": [{"size": 1' + huge + "}]}", b"out of range"),
        ("GET", f"api/exports/{huge}", None, f"id {'1' * 24}".encode()),
        ("POST", f"api/exports/{huge}/submit", None, b"out of range"),
        ("PUT", f"api/exports/1/files/{huge}", b"x", b"out of range"),
        ("POST", "api/audit/events", '{"events": ' + "[" * 5000 + "]" * 5000 + "}", b"nested"),
    ]
    for method, path, body, reason in cases:
        r = await svc.fetch(method, path, token="ws-alice", body=body)
        assert r.code == 400, (path, r.code, r.body)
        assert reason in r.body, (path, r.body)
    denied = events(db, outcome="denied")
    assert len(denied) == len(cases)
    assert {e["actor"] for e in denied} <= {"alice", "(unidentified)"}


async def test_a_nul_in_a_workspace_event_does_not_lose_the_batch(make_svc, db):
    svc = await make_svc()
    batch = {
        "events": [
            {"action": "code.executed", "details": {"code": "print('hidden')"}},
            {"action": "code.executed", "reason": "x\u0000y", "details": {"code": "a\u0000"}},
        ]
    }
    r = await svc.fetch("POST", "api/audit/events", token="ws-alice", body=batch)
    assert r.code == 200, r.body
    rows = events(db, action="code.executed")
    assert [e["details"]["code"] for e in rows] == ["print('hidden')", "a\ufffd"]
    assert rows[1]["reason"] == "x\ufffdy"


# --- downloads ----------------------------------------------------------------------------


async def approved(svc) -> int:
    rid = await submit_request(svc, files={"out/t.csv": CSV})
    await review_all(svc, "chris", rid)
    await review_all(svc, "dana", rid)
    return rid


async def test_downloads_are_audited_with_the_persons_address(make_svc, db):
    svc = await make_svc()
    rid = await approved(svc)
    fid = file_id_of(db, rid)
    r = await svc.fetch(
        "GET",
        f"releases/{rid}/files/{fid}",
        user="alice",
        headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"},  # the proxy appended the last
    )
    assert r.code == 200 and r.body == CSV
    with db() as s:
        (dl,) = s.query(ReleaseDownload).all()
    assert dl.remote_ip == "198.51.100.7"
    (row,) = events(db, action="export.release.downloaded", outcome="allowed")
    assert row["details"]["remote"] == "198.51.100.7"


def file_id_of(db, rid: int) -> int:
    with db() as s:
        return s.scalars(
            select(ExportFile.id).join(ExportFile.version).where(ExportVersion.request_id == rid)
        ).one()


async def test_a_large_download_is_verified_before_its_first_byte(
    make_svc, db, tmp_path, monkeypatch
):
    monkeypatch.setattr(pages, "IN_MEMORY_DOWNLOAD", 4)  # stream even this small file
    svc = await make_svc()
    rid = await approved(svc)
    fid = file_id_of(db, rid)
    path = store_of(tmp_path).path(sha256(CSV))
    os.chmod(path, 0o644)
    path.write_bytes(CSV.replace(b"120", b"121"))  # the store tampered with after approval
    r = await svc.fetch("GET", f"releases/{rid}/files/{fid}", user="alice")
    assert r.code == 500 and b"region" not in r.body  # not one approved-looking byte
    assert b"integrity check failed, nothing was released" in r.body
    assert not events(db, action="export.release.downloaded", outcome="allowed")


def test_a_verified_handle_serves_the_bytes_it_hashed(tmp_path):
    """A blob swapped on disk after verification is not what the download reads."""
    store = store_of(tmp_path)
    key = store.put(CSV)
    fh = store.open_verified_handle(key, key)
    try:
        swap = store.path(key).with_name("swap")
        swap.write_bytes(b"other bytes\n")
        os.replace(swap, store.path(key))
        assert hashlib.sha256(fh.read()).hexdigest() == key
    finally:
        fh.close()


def test_the_preview_cache_names_each_projects_own_file(tmp_path):
    ctx = base.Checking(state_dir=str(tmp_path), store=store_of(tmp_path))
    key = ctx.store.put(CSV)
    one = queries.BlobRef(1, 1, "p1", "p1-secret-name.csv", len(CSV), key, key)
    two = queries.BlobRef(2, 2, "p2", "table.csv", len(CSV), key, key)
    assert "p1-secret-name.csv" in ctx.preview(one).html
    assert "p1-secret-name.csv" not in ctx.preview(two).html
    assert "table.csv" in ctx.preview(two).html


async def test_a_large_download_serves_the_descriptor_it_verified(
    make_svc, db, tmp_path, monkeypatch
):
    """The blob is replaced on disk right after it was verified: the download still serves
    the verified (approved) bytes, because it never opens the path a second time."""
    monkeypatch.setattr(pages, "IN_MEMORY_DOWNLOAD", 4)
    svc = await make_svc()
    rid = await approved(svc)
    fid = file_id_of(db, rid)
    verified = BlobStore.open_verified_handle

    def verify_then_swap(self, key, sha):
        fh = verified(self, key, sha)
        swap = self.path(key).with_name("swap")
        swap.write_bytes(CSV.replace(b"120", b"121"))
        os.replace(swap, self.path(key))
        return fh

    monkeypatch.setattr(BlobStore, "open_verified_handle", verify_then_swap)
    r = await svc.fetch("GET", f"releases/{rid}/files/{fid}", user="alice")
    assert r.code == 200 and r.body == CSV


def test_a_fresh_service_removes_the_uploads_a_killed_one_left_half_written(db, tmp_path):
    store = store_of(tmp_path)
    kept = store.put(CSV)
    # what a process killed in the middle of an upload leaves: a temporary, never renamed
    (store.root / ".upload-killed").write_bytes(b"x" * 4_000)
    (temp,) = sweep.scan_store(store)[1]
    assert temp.size == 4_000
    done = sweep.clear_interrupted_uploads(db, store)
    assert done.summary() == {
        "expired_drafts": [],
        "deleted_blobs": 0,
        "deleted_uploads": 1,
        "freed_bytes": 4_000,
    }
    blobs, temps = sweep.scan_store(store)
    assert [b.key for b in blobs] == [kept] and temps == []
    assert store.read_verified(kept, sha256(CSV)) == CSV  # whole blobs are never touched
    (row,) = events(db, action="export.store.swept")
    assert row["actor"] == "system" and "interrupted" in row["reason"]
    assert sweep.clear_interrupted_uploads(db, store).summary()["deleted_uploads"] == 0
    assert len(events(db, action="export.store.swept")) == 1  # nothing to do: no row


async def test_the_service_loop_writes_aggregates_and_sweeps(env, make_svc, db, tmp_path):
    """The periodic loop of ``python -m sde_spawner.services`` writes the ``rate.limited``
    rows of closed windows by itself, sweeps, and writes what is still open when it stops."""
    from sde_spawner.services.__main__ import housekeeping_loop

    env(refusal_burst=1, window_seconds=1, sweep_seconds=3600, blob_grace_seconds=0)
    svc = await make_svc()
    stray = store_of(tmp_path).put(b"nobody's\n")
    task = asyncio.create_task(housekeeping_loop(svc.app))
    for _ in range(3):
        await svc.fetch("GET", "api/exports", source="127.0.0.3")
    for _ in range(40):  # the window closes after 1 s; the loop looks every second
        await asyncio.sleep(0.1)
        if events(db, action="rate.limited"):
            break
    (row,) = events(db, action="rate.limited")
    assert row["details"]["count"] == 2
    assert not store_of(tmp_path).exists(stray)  # the first sweep ran at start
    await svc.fetch("GET", "api/exports", source="127.0.0.4")
    await svc.fetch("GET", "api/exports", source="127.0.0.4")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e["details"]["key"] for e in events(db, action="rate.limited")] == [
        "addr=127.0.0.3",
        "addr=127.0.0.4",
    ]


async def test_outside_numbers_do_not_count_drafts_or_unreviewed_withdrawals(make_svc, db):
    """A workspace moves the global id sequence at will (drafts, submit-then-withdraw before
    any checker looks); the numbers the requester sees outside count only requests a checker
    claimed, so that sequence carries nothing out."""
    svc = await make_svc()
    for _ in range(4):  # drafts
        await svc.fetch("POST", "api/exports", token="ws-alice", body=body_of({"d.csv": CSV}))
    for _ in range(2):  # submitted and withdrawn before any checker claimed them
        gone = await submit_request(svc, files={"w.csv": CSV})
        r = await svc.fetch("POST", f"api/exports/{gone}/withdraw", token="ws-alice")
        assert r.code == 200
    rid = await approved(svc)
    assert rid == 7
    page = (await svc.fetch("GET", "releases/", user="alice")).body.decode()
    assert 'id="request-1"' in page and "<h3>Request 1</h3>" in page
    assert page.count('id="request-') == 1  # nothing of the six others shows outside
    assert f"releases/{rid}/" not in page and f"Request {rid}" not in page
    assert f"{PREFIX}releases/1/files/1" in page
    r = await svc.fetch("GET", "releases/1/files/1", user="alice")
    assert r.code == 200 and r.body == CSV
    assert (
        json.loads((await svc.fetch("GET", "releases/1/manifest.json", user="alice")).body)[
            "request"
        ]
        == 1
    )
    # inside, the workspace still knows both
    mine = json.loads((await svc.fetch("GET", f"api/exports/{rid}", token="ws-alice")).body)
    assert (mine["id"], mine["number"]) == (rid, 1)


def test_revision_0008_numbers_existing_requests_per_requester(tmp_path):
    from sqlalchemy import create_engine, text

    from sde_spawner.db import upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    rows = [(1, "alice", "submitted"), (2, "bob", "approved"), (3, "alice", "draft")]
    rows += [(4, "alice", "withdrawn"), (5, "bob", "released")]
    with engine.begin() as c:
        for rid, who, state in rows:
            c.execute(
                text(
                    "INSERT INTO export_request (id, project_slug, requester, server_name, "
                    "state, justification, current_version, created_at, updated_at) VALUES "
                    "(:id, 'p1', :who, '', :state, '', 1, '2026-01-01', '2026-01-01')"
                ),
                {"id": rid, "who": who, "state": state},
            )
    engine.dispose()
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as c:
        got = c.execute(text("SELECT id, number FROM export_request ORDER BY id")).fetchall()
    engine.dispose()
    assert [tuple(r) for r in got] == [(1, 1), (2, 1), (3, None), (4, 2), (5, 2)]


async def test_concurrent_drafts_cannot_overrun_the_quota(env, make_svc, db):
    env(person_open_drafts=3)
    svc = await make_svc()
    small = body_of({"a.csv": CSV})
    rs = await asyncio.gather(
        *(svc.fetch("POST", "api/exports", token="ws-alice", body=small) for _ in range(12))
    )
    assert sorted(r.code for r in rs) == [201] * 3 + [429] * 9
    with db() as s:
        assert s.query(ExportRequest).count() == 3
