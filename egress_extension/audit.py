"""Shipping workspace activity to the hub-side audit log, without ever blocking the server.

Anything kept only inside the container can be edited by its user, so every activity event
goes to the ``sde`` service (``POST {SDE_SERVICE_URL}api/audit/events``, authenticated with
the server's own token; the service stamps actor, project and time from that token).

:class:`AuditShipper` is the one path events take:

* :meth:`AuditShipper.record` serialises the event at once (so only JSON ever enters the
  queue) and appends it to an in-memory queue bounded at ``max_queue`` events. It never waits:
  request handlers fire and forget.
* A background task sends the queue in order, in batches of at most ``batch_size`` events and
  ``max_batch_bytes`` bytes. If the service cannot be reached (connection error, 5xx, 401/403,
  429) the batch stays queued and is retried with exponential backoff (``backoff_initial``
  doubling up to ``backoff_max``, with jitter).
* When the queue is full, new events are dropped and *counted*; a batch the service refuses
  as malformed (400/413) is split in halves until the offending event is isolated and
  dropped, also counted. The first batch that gets through afterwards starts with an
  ``audit.lost`` event holding the counts, so loss is reported instead of silent.

Sinks are small objects with ``async send(body: bytes) -> Delivery``; :class:`HTTPSink`
posts to the service, tests use their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
from collections import deque
from datetime import UTC, datetime
from typing import Any, Protocol

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("egress_extension.audit")

#: The service refuses more per batch (sde_spawner.audit.api.MAX_BATCH / MAX_BODY).
MAX_EVENTS_PER_BATCH = 500
MAX_BATCH_BYTES = 1_500_000
#: The service keeps 64 KiB of details per event (sde_spawner.audit.api.MAX_DETAILS).
MAX_DETAILS_CHARS = 62_000
#: What one over-long field keeps when an event's details do not fit (``code`` keeps more).
MAX_FIELD_CHARS = 1024
MAX_FIELDS = 64


def _cut(value: Any, allowance: int) -> str:
    """The longest prefix of ``value`` (as text) whose JSON form fits ``allowance``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    kept = text[: max(0, allowance)]
    while kept and len(json.dumps(kept)) > allowance:  # escaping can grow text 6x
        kept = kept[: int(len(kept) * 0.8)]
    return kept


def fit_details(details: dict[str, Any], limit: int = MAX_DETAILS_CHARS) -> dict[str, Any]:
    """``details`` cut field by field to ``limit`` characters of JSON: the smallest fields
    are kept whole first (digests, sizes, ids), over-long ones are cut (``code`` to what is
    left, others to ``MAX_FIELD_CHARS``) and named in ``clipped``. Nothing is replaced
    wholesale, so ``code_sha256`` and ``code_bytes`` always survive."""
    if len(json.dumps(details, default=str)) <= limit:
        return details
    sized = sorted(
        ((str(k)[:128], v, len(json.dumps(v, default=str))) for k, v in details.items()),
        key=lambda kv: kv[2],
    )
    out: dict[str, Any] = {}
    clipped: list[str] = []
    budget = limit - 2_500  # room for the clipped list and separators
    for key, value, size in sized[:MAX_FIELDS]:
        need = size + len(json.dumps(key)) + 2
        cap = budget if key == "code" else min(budget, MAX_FIELD_CHARS)
        if need <= cap:
            out[key] = value
        else:
            out[key] = _cut(value, cap - len(json.dumps(key)) - 2)
            clipped.append(key)
        budget -= len(json.dumps(out[key], default=str)) + len(json.dumps(key)) + 2
    clipped += [key for key, _, _ in sized[MAX_FIELDS:]]
    out["clipped"] = [k[:64] for k in clipped[:16]] + (["..."] if len(clipped) > 16 else [])
    return out


class Delivery(enum.Enum):
    ok = "ok"  # accepted: drop from the queue
    rejected = "rejected"  # the service says the batch is malformed: retrying cannot help
    retry = "retry"  # unreachable, overloaded or not authorised yet: keep and retry


class Sink(Protocol):
    async def send(self, body: bytes) -> Delivery: ...


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HTTPSink:
    """POST batches to ``{service_url}api/audit/events`` with the server's token."""

    def __init__(self, service_url: str, token: str, *, timeout: float = 10.0):
        self.url = service_url.rstrip("/") + "/api/audit/events"
        self.token = token
        self.timeout = timeout
        self._client: AsyncHTTPClient | None = None
        self.last_error = ""

    async def send(self, body: bytes) -> Delivery:
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        request = HTTPRequest(
            self.url,
            method="POST",
            body=body,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            await self._client.fetch(request)
        except HTTPClientError as exc:
            text = exc.response.body.decode("utf-8", "replace")[:300] if exc.response else ""
            self.last_error = f"HTTP {exc.code} {text}".strip()
            if exc.code in (400, 413):
                return Delivery.rejected
            return Delivery.retry
        except (TimeoutError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return Delivery.retry
        self.last_error = ""
        return Delivery.ok

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AuditShipper:
    """A bounded queue of serialised events and the task that ships it (see module doc)."""

    def __init__(
        self,
        sink: Sink | None,
        *,
        max_queue: int = 10_000,
        batch_size: int = MAX_EVENTS_PER_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        batch_delay: float = 0.05,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ):
        self.sink = sink
        self.max_queue = max_queue
        self.batch_size = min(batch_size, MAX_EVENTS_PER_BATCH)
        self.max_batch_bytes = max_batch_bytes
        self.batch_delay = batch_delay
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._queue: deque[bytes] = deque()
        self._dropped = 0  # queue full
        self._rejected = 0  # refused by the service as malformed
        self._lost_since = ""
        self._lost_until = ""
        self.sent = 0
        self.failures = 0  # consecutive failed attempts (for status and tests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    # -- producing ---------------------------------------------------------------------

    def record(
        self,
        action: str,
        details: dict[str, Any] | None = None,
        *,
        outcome: str = "allowed",
        reason: str | None = None,
    ) -> None:
        """Queue one event; never blocks, never raises for a full queue (counts instead)."""
        when = now_iso()
        event: dict[str, Any] = {
            "action": action,
            "outcome": outcome,
            "details": {**(details or {}), "client_time": when},
        }
        if reason is not None:
            event["reason"] = str(reason)[:500]
        if self._stopping or len(self._queue) >= self.max_queue:
            self._dropped += 1
            self._lost_since = self._lost_since or when
            self._lost_until = when
            return
        text = json.dumps(event, default=str)
        if len(text) > MAX_DETAILS_CHARS:  # rare: cut field by field (see fit_details)
            event["details"] = fit_details(event["details"])
            text = json.dumps(event, default=str)
        self._queue.append(text.encode())
        self._kick()

    def pending(self) -> list[dict]:
        """The queued events, decoded (status page and tests)."""
        return [json.loads(text) for text in list(self._queue)]

    @property
    def lost(self) -> int:
        return self._dropped + self._rejected

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queue),
            "sent": self.sent,
            "lost_unreported": self.lost,
            "failures": self.failures,
            "destination": getattr(self.sink, "url", None) if self.sink else None,
        }

    # -- shipping ----------------------------------------------------------------------

    def _kick(self) -> None:
        if self.sink is None or self._stopping:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            with contextlib.suppress(RuntimeError):  # loop closed: nothing left to wake
                self._loop.call_soon_threadsafe(self._kick)
            return
        if running is None:
            return  # no loop yet: start() will pick the queue up
        if self._task is None or self._task.done():
            self.start()
        elif self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the shipping task on the running loop (idempotent)."""
        if self.sink is None or (self._task is not None and not self._task.done()):
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = self._loop.create_task(self._run(), name="egress-audit-shipper")

    def _batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 20
        if self.lost:
            batch.append(self._lost_event())
            size += len(batch[0]) + 1
        for text in self._queue:
            if len(batch) >= self.batch_size or (batch and size + len(text) > self.max_batch_bytes):
                break
            batch.append(text)
            size += len(text) + 1
        return batch

    def _lost_event(self) -> bytes:
        event = {
            "action": "audit.lost",
            "outcome": "error",
            "reason": f"{self.lost} workspace activity event(s) could not be delivered",
            "details": {
                "count": self.lost,
                "dropped_queue_full": self._dropped,
                "rejected_by_service": self._rejected,
                "first_lost_client_time": self._lost_since,
                "last_lost_client_time": self._lost_until,
                "client_time": now_iso(),
            },
        }
        return json.dumps(event).encode()

    @staticmethod
    def _body(texts: list[bytes]) -> bytes:
        return b'{"events":[' + b",".join(texts) + b"]}"

    async def _deliver(self, texts: list[bytes]) -> int:
        """Send ``texts``; returns how many leading events are done (sent or given up on)."""
        assert self.sink is not None
        result = await self.sink.send(self._body(texts))
        if result is Delivery.ok:
            self.sent += len(texts)
            return len(texts)
        if result is Delivery.retry:
            return 0
        if len(texts) == 1:
            log.error("audit service refused an event: %s", texts[0][:200])
            if texts[0].startswith(b'{"action": "audit.lost"'):
                return 1  # the loss report itself: its counts stay and go with the next one
            self._rejected += 1
            self._lost_since = self._lost_since or now_iso()
            self._lost_until = now_iso()
            return 1
        half = len(texts) // 2
        done = await self._deliver(texts[:half])
        if done < half:
            return done
        return half + await self._deliver(texts[half:])

    async def flush_once(self) -> bool:
        """Send one batch. True when it went through (or there was nothing to send)."""
        batch = self._batch()
        if not batch:
            return True
        had_marker = bool(self.lost)
        reported = (self._dropped, self._rejected)
        done = await self._deliver(batch)
        if had_marker and done >= 1:
            # The audit.lost marker went through: those losses are reported.
            self._dropped -= reported[0]
            self._rejected -= min(reported[1], self._rejected)
            if not self.lost:
                self._lost_since = self._lost_until = ""
            done -= 1
        for _ in range(done):
            self._queue.popleft()
        return done == len(batch) - (1 if had_marker else 0)

    async def _run(self) -> None:
        backoff = self.backoff_initial
        assert self._wake is not None
        while True:
            if not self._queue and not self.lost:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                if self.batch_delay and not self._stopping:
                    await asyncio.sleep(self.batch_delay)  # let a burst become one batch
                continue
            try:
                ok = await self.flush_once()
            except Exception:
                log.exception("audit shipping failed")
                ok = False
            if ok:
                self.failures = 0
                backoff = self.backoff_initial
                continue
            self.failures += 1
            if self._stopping:
                return
            delay = backoff * (0.75 + random.random() / 2)
            error = getattr(self.sink, "last_error", "")
            log.warning(
                "audit service unreachable (%s); %d event(s) queued, retrying in %.1f s",
                error,
                len(self._queue),
                delay,
            )
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            backoff = min(backoff * 2, self.backoff_max)

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (one attempt, bounded by ``timeout``), then stop."""
        self._stopping = True
        task = self._task
        if task is not None and not task.done():
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (TimeoutError, Exception):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._queue:
            log.warning("audit shipper stopped with %d undelivered event(s)", len(self._queue))
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()
