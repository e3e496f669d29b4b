"""The audit shipper against a small audit service on loopback (real HTTP, real sockets).

The service here is a stand-in with the ingestion contract of ``sde_spawner.audit.api``
(``POST api/audit/events``, at most 500 events, 400 for a bad batch); it can be absent
(connection refused), failing (503) or up. Shipping must retry while it is away, keep order,
and report, not hide, whatever it had to drop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from egress_extension.audit import MAX_DETAILS_CHARS, AuditShipper, HTTPSink, fit_details
from sde_spawner.audit.api import MAX_DETAILS, validate_batch

TOKEN = "ws-token"


class FakeAuditService:
    def __init__(self):
        self.batches: list[list[dict]] = []
        self.attempts = 0
        self.failing = False  # answer 503
        self.server: HTTPServer | None = None
        with socket.socket() as s:  # a port nobody listens on until start()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/sde/"

    @property
    def events(self) -> list[dict]:
        return [e for batch in self.batches for e in batch]

    def start(self):
        service = self

        class Events(web.RequestHandler):
            def post(self):
                service.attempts += 1
                if self.request.headers.get("Authorization") != f"token {TOKEN}":
                    raise web.HTTPError(403)
                if service.failing:
                    raise web.HTTPError(503)
                events = json.loads(self.request.body)["events"]
                if not 0 < len(events) <= 500:
                    raise web.HTTPError(400, "a batch holds 1 to 500 events")
                if any((e.get("details") or {}).get("poison") for e in events):
                    raise web.HTTPError(400, "bad event")
                service.batches.append(events)
                self.finish({"accepted": len(events)})

        app = web.Application([(r"/services/sde/api/audit/events", Events)])
        self.server = HTTPServer(app)
        self.server.listen(self.port, "127.0.0.1")

    async def stop(self):
        """Stop listening and close accepted connections (no leaked sockets)."""
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None


async def until(predicate, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@pytest.fixture
async def service():
    svc = FakeAuditService()
    yield svc
    await svc.stop()


def make_shipper(service, **kw) -> AuditShipper:
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("batch_delay", 0)
    return AuditShipper(HTTPSink(service.url, TOKEN, timeout=2), **kw)


async def test_events_reach_the_service_in_order_with_client_time(service):
    service.start()
    shipper = make_shipper(service)
    for i in range(3):
        shipper.record("file.saved", {"path": f"f{i}.csv"})
    await until(lambda: len(service.events) == 3)
    assert [e["details"]["path"] for e in service.events] == ["f0.csv", "f1.csv", "f2.csv"]
    assert all(e["outcome"] == "allowed" and "client_time" in e["details"] for e in service.events)
    assert "actor" not in service.events[0] and "project" not in service.events[0]
    await shipper.stop()


async def test_service_down_then_up_retries_and_delivers_everything(service):
    shipper = make_shipper(service)
    shipper.record("kernel.started", {"kernel_id": "k1"})
    shipper.record("code.executed", {"code": "1+1"})
    await until(lambda: shipper.failures >= 3)  # connection refused, retried with backoff
    assert len(shipper.pending()) == 2
    service.start()
    service.failing = True
    attempts = service.attempts
    await until(lambda: service.attempts >= attempts + 2)  # 503: still retrying
    assert len(shipper.pending()) == 2
    service.failing = False
    await until(lambda: len(service.events) == 2)
    assert [e["action"] for e in service.events] == ["kernel.started", "code.executed"]
    await until(lambda: shipper.failures == 0)
    assert shipper.pending() == [] and shipper.lost == 0
    await shipper.stop()


async def test_overflow_is_counted_and_reported_as_audit_lost_when_back(service):
    shipper = make_shipper(service, max_queue=5)
    for i in range(12):
        shipper.record("file.opened", {"path": f"{i}.csv"})
    assert len(shipper.pending()) == 5 and shipper.lost == 7
    await until(lambda: shipper.failures >= 1)
    service.start()
    await until(lambda: len(service.events) == 6)
    lost, *kept = service.events
    assert lost["action"] == "audit.lost" and lost["outcome"] == "error"
    assert lost["details"]["count"] == 7 and lost["details"]["dropped_queue_full"] == 7
    assert lost["details"]["first_lost_client_time"] <= lost["details"]["last_lost_client_time"]
    assert "7 workspace activity event(s)" in lost["reason"]
    assert [e["details"]["path"] for e in kept] == [f"{i}.csv" for i in range(5)]
    await until(lambda: shipper.lost == 0)  # counters drop once the reply is read
    shipper.record("file.opened", {"path": "later.csv"})
    await until(lambda: len(service.events) == 7)
    assert service.events[-1]["action"] == "file.opened"  # no second loss report
    await shipper.stop()


async def test_an_event_the_service_refuses_is_isolated_dropped_and_reported(service):
    service.start()
    shipper = make_shipper(service)
    shipper.start()
    for i in range(6):
        shipper.record("file.saved", {"path": f"{i}.csv", "poison": i == 3})
    await until(lambda: sum(1 for e in service.events if e["action"] == "file.saved") == 5)
    saved = [e["details"]["path"] for e in service.events if e["action"] == "file.saved"]
    assert saved == ["0.csv", "1.csv", "2.csv", "4.csv", "5.csv"]  # order kept, no duplicates
    await until(lambda: any(e["action"] == "audit.lost" for e in service.events))
    lost = next(e for e in service.events if e["action"] == "audit.lost")
    assert lost["details"]["rejected_by_service"] == 1 and lost["details"]["count"] == 1
    await shipper.stop()


async def test_batches_respect_the_event_and_byte_limits(service):
    service.start()
    shipper = make_shipper(service, max_batch_bytes=200_000)
    for i in range(1200):
        shipper.record("code.executed", {"i": i})
    for _ in range(3):
        shipper.record("code.executed", {"code": "x" * 90_000})
    await until(lambda: len(service.events) == 1203)
    assert max(len(b) for b in service.batches) <= 500
    assert all(len(json.dumps({"events": b})) <= 200_000 for b in service.batches)
    assert [e["details"].get("i") for e in service.events[:1200]] == list(range(1200))
    await shipper.stop()


async def test_stop_delivers_what_is_queued(service):
    service.start()
    shipper = make_shipper(service, batch_delay=10)  # would wait long without stop()
    shipper.start()
    await asyncio.sleep(0.05)
    shipper.record("terminal.opened", {"pid": 1})
    await shipper.stop(timeout=5)
    assert [e["action"] for e in service.events] == ["terminal.opened"]


async def test_stop_gives_up_in_time_when_the_service_is_away(service):
    shipper = make_shipper(service)
    shipper.record("terminal.opened", {})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await shipper.stop(timeout=1)
    assert loop.time() - started < 3
    assert len(shipper.pending()) == 1


def test_recording_without_a_loop_or_a_service_never_blocks_or_raises():
    shipper = AuditShipper(None, max_queue=2)
    for _ in range(5):
        shipper.record("file.saved", {"when": object()})  # not JSON: stored as its str()
    assert len(shipper.pending()) == 2 and shipper.lost == 3
    assert isinstance(shipper.pending()[0]["details"]["when"], str)


# --- bounded details: a long client-chosen field never pushes the code out -------------------

CODE = "result = cohort.groupby('region').size()\n" * 50
DIGEST = hashlib.sha256(CODE.encode()).hexdigest()


def code_event(**extra) -> dict:
    details = {"code": CODE, "code_sha256": DIGEST, "code_bytes": len(CODE), **extra}
    return {"action": "code.executed", "details": details}


def test_the_shipper_cuts_a_huge_field_not_the_code():
    shipper = AuditShipper(None)
    shipper.record("code.executed", code_event(msg_id="m" * 70_000)["details"])
    (queued,) = shipper.pending()
    d = queued["details"]
    assert (d["code"], d["code_sha256"], d["code_bytes"]) == (CODE, DIGEST, len(CODE))
    assert len(d["msg_id"]) < 1100 and d["clipped"] == ["msg_id"]
    assert len(json.dumps(d)) <= MAX_DETAILS_CHARS


def test_fit_details_keeps_small_fields_whole_and_cuts_long_code_last():
    d = fit_details({"code": '\u00e9"' * 40_000, "code_sha256": DIGEST, "path": "a.py"})
    assert d["code_sha256"] == DIGEST and d["path"] == "a.py" and d["clipped"] == ["code"]
    assert len(d["code"]) > 0 and len(json.dumps(d)) <= MAX_DETAILS_CHARS
    assert fit_details({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    "extra",
    [
        {"msg_id": "m" * 70_000},
        {"nested": {"k": ["x" * 1000] * 200}},
        {f"k{i:04}": "v" * 100 for i in range(1000)},
    ],
)
def test_the_service_bounds_each_field_and_keeps_the_digest(extra):
    (ev,) = validate_batch({"events": [code_event(**extra)]})
    d = ev["details"]
    assert d["code_sha256"] == DIGEST and d["code_bytes"] == len(CODE) and d["code"] == CODE
    assert d["clipped"] and len(json.dumps(d, sort_keys=True)) <= MAX_DETAILS
    assert len(d["details_sha256"]) == 64


def test_the_service_keeps_details_within_the_limit_untouched():
    (ev,) = validate_batch({"events": [code_event(msg_id="m1")]})
    assert ev["details"] == code_event(msg_id="m1")["details"]
