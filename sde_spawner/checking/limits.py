"""Flood and quota limits of the ``sde`` service, as pure rules plus one small in-memory state.

What this module owns:

* :class:`LimitSettings` — every limit, with its environment variable (``SDE_LIMIT_*``);
* :class:`TokenBucket` — a per-key token bucket (requests per client address or identity);
* :class:`RefusalTally` — refusals that are *not* audited one by one, counted per key and
  window, so a flood of refused requests becomes one ``rate.limited`` audit row per key per
  window (with the count) instead of one row per request;
* :class:`Limits` — the service's one instance of the above (in the tornado app settings),
  deciding for each request and each refusal whether it is served / audited individually;
* :func:`client_address` — who is calling: the TCP peer, or the last ``X-Forwarded-For`` hop
  when (and only when) the peer is the hub's own proxy;
* :func:`parse_json` — a JSON body with bounded depth, bounded integers and no NUL;
* :func:`quota_problem` / :func:`space_problem` — the per-person and per-project quotas;
* :func:`plan_sweep` — which abandoned drafts expire and which unreferenced blobs and stale
  upload files are removed (a plan only; :mod:`sde_spawner.checking.sweep` applies it).

Nothing here touches the database or the disk; clocks are passed in, so tests drive time.
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class LimitSettings:
    """The limits; each field reads ``SDE_LIMIT_<FIELD NAME IN CAPITALS>`` in :meth:`from_env`."""

    #: requests per second each client address (and each workspace identity) may make
    request_rate: float = 20.0
    #: requests a client may make at once before ``request_rate`` applies
    request_burst: int = 200
    #: refusals per second per client that still get an audit row each; beyond, one
    #: aggregated ``rate.limited`` row per window and the client's requests get 429
    refusal_rate: float = 0.5
    refusal_burst: int = 30
    #: the same for all clients together: a flood spread over many addresses still makes
    #: at most this many single rows (the rest are counted under the key ``all``)
    total_refusal_rate: float = 5.0
    total_refusal_burst: int = 300
    #: seconds per aggregation window of ``rate.limited`` rows
    window_seconds: float = 60.0
    #: audit events per second a workspace may report (batches cost their size)
    event_rate: float = 50.0
    event_burst: int = 5000
    #: request body limits: JSON APIs, the audit-ingestion API, anything else (the default
    #: of the HTTP server); the upload route's limit is the declared size of the file
    json_body_bytes: int = 1 * MiB
    audit_body_bytes: int = 2 * MiB
    default_body_bytes: int = 4 * MiB
    #: quotas: open (unsubmitted) drafts, declared bytes of open requests, stored bytes
    person_open_drafts: int = 10
    project_open_drafts: int = 50
    person_declared_bytes: int = 4 * GiB
    project_declared_bytes: int = 20 * GiB
    project_stored_bytes: int = 20 * GiB
    #: free bytes that must remain in the state directory (database, keys, blobs) after an
    #: upload
    min_free_bytes: int = 1 * GiB
    #: drafts untouched this long expire; blobs nobody references are removed after the grace
    draft_expiry_hours: float = 7 * 24.0
    blob_grace_seconds: float = 3600.0
    #: seconds between housekeeping sweeps of the service's periodic loop (0: never)
    sweep_seconds: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LimitSettings:
        values = {}
        for f in fields(cls):
            name = f"SDE_LIMIT_{f.name.upper()}"
            if name in env:
                kind = float if f.type in ("float", float) else int
                try:
                    values[f.name] = kind(env[name])
                except ValueError:
                    raise ValueError(f"{name}={env[name]!r} is not a number") from None
                if values[f.name] < 0:
                    raise ValueError(f"{name} must not be negative")
        return cls(**values)


# --- rate ------------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens per key, refilled at ``rate`` per second; at most ``max_keys`` keys are
    remembered (the longest-idle are forgotten, which only ever forgives)."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 20_000):
        self.rate = float(rate)
        self.burst = float(max(1, burst))
        self.max_keys = max_keys
        self._state: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def _level(self, key, now: float) -> float:
        tokens, last = self._state.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - last) * self.rate)

    def take(self, key, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 if granted, else the seconds until they would be. A cost
        above the burst takes a full bucket."""
        cost = min(cost, self.burst)
        level = self._level(key, now)
        if level >= cost:
            self._put(key, level - cost, now)
            return 0.0
        self._put(key, level, now)
        if self.rate <= 0:
            return math.inf
        return (cost - level) / self.rate

    def empty(self, key, now: float) -> float:
        """Seconds until ``key`` has a whole token again (0.0 if it has one now)."""
        level = self._level(key, now)
        if level >= 1.0:
            return 0.0
        return math.inf if self.rate <= 0 else (1.0 - level) / self.rate

    def _put(self, key, tokens: float, now: float) -> None:
        self._state[key] = (tokens, now)
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)


@dataclass
class Aggregate:
    """Refusals of one key in one window that were not audited one by one."""

    key: tuple
    window_start: float
    count: int = 0
    reasons: dict = field(default_factory=dict)

    def as_details(self, window_seconds: float) -> dict:
        return {
            "key": "=".join(str(k) for k in self.key),
            "count": self.count,
            "window_seconds": window_seconds,
            "reasons": dict(sorted(self.reasons.items())[:10]),
        }


class RefusalTally:
    """Counts suppressed refusals per key; windows close ``window`` seconds after their first
    refusal and are then handed out (once) by :meth:`closed`."""

    def __init__(self, window: float, *, max_keys: int = 20_000):
        self.window = float(window)
        self.max_keys = max_keys
        self._open: dict[tuple, Aggregate] = {}
        self.dropped = 0

    def add(self, key: tuple, reason: str, now: float) -> None:
        agg = self._open.get(key)
        if agg is None:
            if len(self._open) >= self.max_keys:
                self.dropped += 1  # counted in the next aggregate handed out
                key = ("overflow",)
                agg = self._open.setdefault(key, Aggregate(key, now))
            else:
                agg = self._open[key] = Aggregate(key, now)
        agg.count += 1
        short = reason[:80]
        if short in agg.reasons or len(agg.reasons) < 10:
            agg.reasons[short] = agg.reasons.get(short, 0) + 1

    def closed(self, now: float, *, everything: bool = False) -> list[Aggregate]:
        """The windows that ended by ``now`` (all of them with ``everything``), removed."""
        done = [
            k for k, a in self._open.items() if everything or now - a.window_start >= self.window
        ]
        return [self._open.pop(k) for k in done]


# --- the service's limits ---------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """Whether a request is served (``ok``); otherwise the status and reason of the 429."""

    ok: bool
    status: int = 200
    reason: str = ""
    retry_after: float = 0.0


ADMITTED = Admission(True)


class Limits:
    """Per-client request and refusal budgets and the tally of what they suppressed.

    Thread-safe (refusals are decided on worker threads too). ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        settings: LimitSettings | None = None,
        *,
        proxy_networks: Iterable[str] = ("127.0.0.0/8", "::1/128"),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = s = settings or LimitSettings()
        self.proxy_networks = tuple(ipaddress.ip_network(n) for n in proxy_networks)
        self.clock = clock
        self.requests = TokenBucket(s.request_rate, s.request_burst)
        self.refusals = TokenBucket(s.refusal_rate, s.refusal_burst)
        self.all_refusals = TokenBucket(s.total_refusal_rate, s.total_refusal_burst)
        self.events = TokenBucket(s.event_rate, s.event_burst)
        self.tally = RefusalTally(s.window_seconds)
        self._lock = threading.Lock()

    def client(self, remote_ip: str | None, forwarded_for: str | None) -> str:
        return client_address(remote_ip, forwarded_for, self.proxy_networks)

    def admit(self, keys: Iterable[tuple], *, cost: float = 1.0, bucket: str = "requests"):
        """Whether a request of these keys (``("addr", ip)``, ``("user", name)``) is served:
        each key needs a request token, and a refusal budget that is not used up (a client
        whose refusals are suppressed is answered 429 before any work is done for it)."""
        keys = [rate_key(k) for k in keys]
        now = self.clock()
        which = getattr(self, bucket)
        with self._lock:
            for key in keys:
                wait = self.refusals.empty(key, now)
                if wait:
                    return self._limited(key, now, wait, "too many refused requests", "refusals")
            for key in keys:
                wait = which.take(key, now, cost)
                if wait:
                    what = "audit events" if bucket == "events" else "requests"
                    return self._limited(key, now, wait, f"too many {what}", bucket)
        return ADMITTED

    def _limited(self, key, now, wait, what, bucket) -> Admission:
        self.tally.add(key, f"{what} ({bucket})", now)
        retry = max(1, math.ceil(min(wait, self.settings.window_seconds)))
        who = "=".join(str(k) for k in key)
        return Admission(
            False,
            429,
            f"{what} from {who}: try again in {retry} s (rate limited; the refused requests "
            "are counted in the audit log)",
            retry,
        )

    def audit_refusal(self, keys: Iterable[tuple], reason: str) -> bool:
        """A refusal happened: True if it gets its own audit row; False if it is only counted
        (its key's refusal budget is used up)."""
        now = self.clock()
        with self._lock:
            for key in map(rate_key, keys):
                if self.refusals.take(key, now):
                    self.tally.add(key, reason, now)
                    return False
            if self.all_refusals.take(ALL, now):
                self.tally.add(ALL, reason, now)
                return False
        return True

    def closed(self, *, everything: bool = False) -> list[Aggregate]:
        with self._lock:
            return self.tally.closed(self.clock(), everything=everything)


ALL = ("all",)


def rate_key(key: tuple) -> tuple:
    """The budget a key draws on: an IPv6 address by its /64 (one host holds a whole /64,
    so single addresses would be free for the taking); anything else as it is."""
    if len(key) == 2 and key[0] == "addr":
        try:
            address = ipaddress.ip_address(key[1])
        except ValueError:
            return key
        if address.version == 6 and address.ipv4_mapped is None:
            return ("addr", str(ipaddress.ip_network(f"{address}/64", strict=False)))
    return key


def client_address(
    remote_ip: str | None, forwarded_for: str | None, proxy_networks: Iterable
) -> str:
    """The caller's address: the TCP peer, unless the peer is the hub's proxy, which appends
    the address it saw as the *last* ``X-Forwarded-For`` entry (earlier entries are whatever
    the client sent, so they are never trusted)."""
    peer = (remote_ip or "").strip()
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer or "unknown"
    nets = [ipaddress.ip_network(n) if isinstance(n, str) else n for n in proxy_networks]
    if not forwarded_for or not any(address in n for n in nets):
        return peer
    last = forwarded_for.split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(last.removeprefix("::ffff:")))
    except ValueError:
        return peer


# --- bodies and ids ---------------------------------------------------------------------------

MAX_JSON_DEPTH = 32
#: Database ids and sizes fit a signed 64-bit integer.
MAX_INT = 2**63 - 1


def parse_id(text: str) -> int | None:
    """A path id (``\\d+``) as an int, or None when it cannot be a database id."""
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_INT:
        return None
    return int(text)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(int(text)) > MAX_INT:
        raise ValueError(f"number {text[:24]}… is out of range")
    return int(text)


def _no_constant(text: str):
    raise ValueError(f"{text} is not a JSON number")


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, nul: str | None = None) -> object:
    """A request body as JSON, or ``ValueError`` with the reason: not UTF-8 JSON, nested
    deeper than ``max_depth``, an integer outside 64 bits, NaN/Infinity, or a NUL character
    in any string (the database and the audit log cannot hold one). With ``nul`` given, NULs
    in strings are replaced by it instead (audit ingestion: one NUL must not lose a batch)."""
    try:
        text = body.decode("utf-8") if body else "null"
        value = json.loads(text, parse_int=_parse_int, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"JSON nested deeper than {max_depth} levels")
        if isinstance(item, str):
            if nul is None and "\x00" in item:
                raise ValueError("a string in the body contains a NUL character")
        elif isinstance(item, dict):
            for k, v in item.items():
                if nul is None and "\x00" in k:
                    raise ValueError("a key in the body contains a NUL character")
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return value if nul is None else _replace_nul(value, nul)


def _replace_nul(value, nul: str):
    if isinstance(value, str):
        return value.replace("\x00", nul)
    if isinstance(value, list):
        return [_replace_nul(v, nul) for v in value]
    if isinstance(value, dict):
        return {_replace_nul(k, nul): _replace_nul(v, nul) for k, v in value.items()}
    return value


def for_app(app_settings: dict) -> Limits:
    """The app's one :class:`Limits` (made on first use from the service's settings; the
    proxy's addresses are the pages' networks)."""
    limits = app_settings.get("sde_limits")
    if limits is None:
        sde = app_settings["sde"]
        limits = app_settings["sde_limits"] = Limits(
            sde.limit_settings(), proxy_networks=list(sde.page_networks)
        )
    return limits


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The body length a request declares, or None (chunked or absent)."""
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


# --- quotas -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What a person and their project hold now (open = not yet submitted, for drafts;
    not withdrawn/rejected/released, for bytes)."""

    person_open_drafts: int = 0
    project_open_drafts: int = 0
    person_declared_bytes: int = 0
    project_declared_bytes: int = 0
    project_stored_bytes: int = 0


def quota_problem(
    usage: Usage, settings: LimitSettings, *, new_draft: bool, declared: int
) -> tuple[int, str] | None:
    """``(status, reason)`` if a new draft (``new_draft``) or version declaring ``declared``
    bytes would exceed a quota; None if it fits."""
    s = settings
    if new_draft and usage.person_open_drafts >= s.person_open_drafts:
        return 429, (
            f"you already have {usage.person_open_drafts} unsubmitted export drafts (the "
            f"limit is {s.person_open_drafts}): submit them or let them expire"
        )
    if new_draft and usage.project_open_drafts >= s.project_open_drafts:
        return 429, (
            f"the project already has {usage.project_open_drafts} unsubmitted export drafts "
            f"(the limit is {s.project_open_drafts})"
        )
    if usage.person_declared_bytes + declared > s.person_declared_bytes:
        return 413, (
            f"this request declares {declared} bytes; with your open requests "
            f"({usage.person_declared_bytes} bytes) that is over your quota of "
            f"{s.person_declared_bytes} bytes"
        )
    if usage.project_declared_bytes + declared > s.project_declared_bytes:
        return 413, (
            f"this request declares {declared} bytes; with the project's open requests "
            f"({usage.project_declared_bytes} bytes) that is over the project quota of "
            f"{s.project_declared_bytes} bytes"
        )
    return None


def space_problem(
    usage: Usage, settings: LimitSettings, *, size: int, free_bytes: int
) -> tuple[int, str] | None:
    """``(status, reason)`` if storing ``size`` more bytes would exceed the project's stored
    bytes or leave less than ``min_free_bytes`` free in the state directory."""
    if usage.project_stored_bytes + size > settings.project_stored_bytes:
        return 413, (
            f"the project already stores {usage.project_stored_bytes} bytes of export files; "
            f"{size} more is over its quota of {settings.project_stored_bytes} bytes"
        )
    if free_bytes - size < settings.min_free_bytes:
        return 413, (
            f"the service has {free_bytes} bytes of space left; storing {size} more would "
            f"leave less than the reserved {settings.min_free_bytes}: ask an administrator"
        )
    return None


# --- housekeeping plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    id: int
    project: str
    requester: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredFile:
    """A file in the blob store: a blob (``key`` is its sha256) or an upload's temporary
    file (``key`` is its name), with its modification time (epoch seconds) and size."""

    key: str
    mtime: float
    size: int


@dataclass(frozen=True)
class SweepPlan:
    expire_drafts: tuple[Draft, ...] = ()
    delete_blobs: tuple[StoredFile, ...] = ()
    delete_temps: tuple[StoredFile, ...] = ()

    @property
    def freed_bytes(self) -> int:
        return sum(f.size for f in (*self.delete_blobs, *self.delete_temps))

    def summary(self) -> dict:
        return {
            "expired_drafts": [d.id for d in self.expire_drafts],
            "deleted_blobs": len(self.delete_blobs),
            "deleted_uploads": len(self.delete_temps),
            "freed_bytes": self.freed_bytes,
        }


def plan_sweep(
    drafts: Iterable[Draft],
    blobs: Iterable[StoredFile],
    temps: Iterable[StoredFile],
    references: Mapping[str, Iterable[int]],
    *,
    now: datetime,
    now_epoch: float,
    settings: LimitSettings,
) -> SweepPlan:
    """What a sweep removes: drafts untouched for ``draft_expiry_hours``; blobs that no
    request references once those drafts are gone (``references``: blob key -> ids of the
    requests whose files hold it) and that were not written or reused within
    ``blob_grace_seconds`` (so an upload in progress is never collected); upload temporaries
    older than the grace."""
    cutoff = now - timedelta(hours=settings.draft_expiry_hours)
    expire = tuple(sorted((d for d in drafts if d.updated_at <= cutoff), key=lambda d: d.id))
    gone = {d.id for d in expire}
    grace = settings.blob_grace_seconds

    def unreferenced(key: str) -> bool:
        return not (set(references.get(key, ())) - gone)

    delete = tuple(
        sorted(
            (b for b in blobs if now_epoch - b.mtime >= grace and unreferenced(b.key)),
            key=lambda b: b.key,
        )
    )
    stale = tuple(sorted((t for t in temps if now_epoch - t.mtime >= grace), key=lambda t: t.key))
    return SweepPlan(expire, delete, stale)
