"""Audit ingestion from workspaces: ``POST {prefix}api/audit/events``.

The caller is identified by its token through the hub (see
:mod:`sde_spawner.services.identity`); the actor and project of every event come from that,
never from the body, and a body that tries to set them is refused. Only the activity kinds a
workspace reports are accepted. A batch is all or nothing, in one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from tornado import web

from sde_spawner import audit
from sde_spawner.checking.base import FaultAnswers
from sde_spawner.services.identity import WorkspaceIdentity, identify_workspace

WORKSPACE_ACTIONS = frozenset(
    {
        "file.opened",
        "file.saved",
        "file.renamed",
        "file.deleted",
        "file.uploaded",
        "terminal.opened",
        "kernel.started",
        "kernel.stopped",
        "code.executed",
        "download.blocked",
        "clipboard.copy_blocked",
        "export.refused",
        "export.check.refused",
        "code.refused",
        "event.refused",
        "audit.lost",
    }
)
MAX_BATCH = 500
MAX_BODY = 2 * 1024 * 1024
MAX_DETAILS = 64 * 1024
#: When details are over MAX_DETAILS: what one over-long field keeps (``code`` keeps what is
#: left), how many fields are kept, and the fields always kept first.
MAX_FIELD = 4096
MAX_FIELDS = 64
KEEP_FIRST = ("code_sha256", "code_bytes", "message_sha256", "message_bytes", "sha256", "size")


class BadBatch(ValueError):
    pass


def _cut(text: str, allowance: int) -> str:
    kept = text[: max(0, allowance)]
    while kept and len(json.dumps(kept)) > allowance:  # escaping can grow text 6x
        kept = kept[: int(len(kept) * 0.8)]
    return kept


def bound_details(details: dict) -> dict:
    """``details`` within MAX_DETAILS characters of JSON, bounded field by field: the
    digests and sizes of KEEP_FIRST, then the smallest fields, are kept whole; an over-long
    field is cut (``code`` to what is left, others to MAX_FIELD; a non-string one becomes
    its cut JSON text). ``details_sha256`` covers the whole original and ``clipped`` names
    what was cut, so a long client-chosen field can never push the code's digest out."""
    text = json.dumps(details, sort_keys=True, default=str)
    if len(text) <= MAX_DETAILS:
        return details
    fields = [(str(k)[:128], v, len(json.dumps(v, default=str))) for k, v in details.items()]
    fields.sort(key=lambda f: (f[0] not in KEEP_FIRST, f[2]))
    kept, dropped = fields[:MAX_FIELDS], fields[MAX_FIELDS:]
    code = [f for f in dropped if f[0] == "code"]
    if code:  # the code itself is never among the fields left out
        dropped = [f for f in dropped if f[0] != "code"] + kept[-1:]
        kept = kept[:-1] + code
    out: dict = {"details_sha256": hashlib.sha256(text.encode()).hexdigest()}
    clipped: list[str] = []
    budget = MAX_DETAILS - 3_000  # the digest, the clipped list, separators
    reserve = min(next((f[2] for f in kept if f[0] == "code"), 0), 16_384)  # room for code
    for key, value, size in kept:
        overhead = len(json.dumps(key)) + 2
        if key == "code":
            cap, reserve = budget, 0
        else:
            cap = min(budget - reserve, MAX_FIELD)
        if size + overhead <= cap:
            out[key] = value
        else:
            raw = value if isinstance(value, str) else json.dumps(value, default=str)
            out[key] = _cut(raw, cap - overhead)
            clipped.append(key)
        budget -= len(json.dumps(out[key], default=str)) + overhead
    clipped += [key for key, _, _ in dropped]
    out["clipped"] = [k[:64] for k in clipped[:16]] + (["..."] if len(clipped) > 16 else [])
    return out


def validate_batch(body: dict) -> list[dict]:
    """The events of a workspace batch, checked; ``BadBatch`` with the reason otherwise."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise BadBatch("body must be a JSON object with a list 'events'")
    events = body["events"]
    if not 0 < len(events) <= MAX_BATCH:
        raise BadBatch(f"a batch holds 1 to {MAX_BATCH} events")
    out = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise BadBatch(f"event {i} is not an object")
        forged = {"actor", "project", "user", "seq", "hash", "prev_hash"} & set(ev)
        if forged:
            raise BadBatch(
                f"event {i}: {', '.join(sorted(forged))} is set by the hub, not the caller"
            )
        unknown = set(ev) - {"action", "details", "outcome", "reason"}
        if unknown:
            raise BadBatch(f"event {i}: unknown field(s) {', '.join(sorted(unknown))}")
        action = ev.get("action")
        if action not in WORKSPACE_ACTIONS:
            raise BadBatch(f"event {i}: action {str(action)[:60]!r} is not a workspace activity")
        outcome = ev.get("outcome", "allowed")
        if outcome not in ("allowed", "denied", "error"):
            raise BadBatch(f"event {i}: outcome must be allowed, denied or error")
        details = ev.get("details") or {}
        if not isinstance(details, dict):
            raise BadBatch(f"event {i}: details must be an object")
        details = bound_details(details)
        reason = ev.get("reason")
        out.append(
            {
                "action": action,
                "outcome": outcome,
                "details": details,
                "reason": str(reason)[:500] if reason is not None else None,
            }
        )
    return out


@web.stream_request_body
class AuditEventsHandler(FaultAnswers):
    """Workspaces post their activity here with their own server token.

    The registry database away (restarting, unreachable) answers 503 with ``Retry-After``
    (:class:`~sde_spawner.checking.base.FaultAnswers`, as the export API does); the shipper
    keeps the batch and sends it again.

    Flood limits (:mod:`sde_spawner.checking.limits`): a request budget per client address
    and per workspace, an events budget per workspace (a batch costs its size), a body limit
    enforced while the body streams in (``SDE_LIMIT_AUDIT_BODY_BYTES``), and refusals
    audited one by one only within the client's refusal budget (then one aggregated
    ``rate.limited`` row per window). A NUL in an event's text is replaced (U+FFFD) rather
    than losing the batch.
    """

    _retry_after = 0.0

    def check_xsrf_cookie(self):  # token-authenticated API, no cookies
        return

    @property
    def limits(self):
        from sde_spawner.checking import limits

        return limits.for_app(self.settings)

    @property
    def client_ip(self) -> str:
        return self.limits.client(
            self.request.remote_ip, self.request.headers.get("X-Forwarded-For")
        )

    async def prepare(self):
        from sde_spawner.checking import limits

        self._whoami = None
        self._body: list[bytes] = []
        try:
            await self._gate([("addr", self.client_ip)])
            limit = self.limits.settings.audit_body_bytes
            length = limits.declared_length(self.request.headers)
            if length is not None and length > limit:
                raise web.HTTPError(413, f"batch of {length} bytes is over the {limit}-byte limit")
            self.request.connection.set_max_body_size(limit)
        except web.HTTPError as exc:
            if exc.status_code != 429:
                await self._record_refusal(exc)
            raise

    def data_received(self, chunk: bytes):
        self._body.append(chunk)

    async def _gate(self, keys, **kwargs) -> None:
        from sde_spawner.checking import sweep

        verdict = self.limits.admit(keys, **kwargs)
        if not verdict.ok:
            await asyncio.to_thread(
                sweep.write_aggregates, self.settings["sessionmaker"], self.limits
            )
            self._retry_after = verdict.retry_after
            raise web.HTTPError(429, verdict.reason.replace("%", "%%"))

    async def _identify(self) -> WorkspaceIdentity:
        auth = self.request.headers.get("Authorization", "")
        token = auth[6:].strip() if auth.lower().startswith("token ") else ""
        if not token:
            raise web.HTTPError(401, "a workspace token is required")
        hub_auth = self.settings["hub_auth"]
        whoami = self._whoami = await hub_auth.user_for_token(token, sync=False)
        Session = self.settings["sessionmaker"]

        def lookup():
            with Session() as s:
                return identify_workspace(s, whoami)

        ident = await asyncio.to_thread(lookup)
        if ident is None:
            raise web.HTTPError(403, "only a running workspace's own token may report activity")
        if not ident.accepts(self.request.remote_ip):
            raise web.HTTPError(403, ident.refusal(self.request.remote_ip))
        return ident

    async def post(self):
        from sde_spawner.checking import limits

        body = b"".join(self._body)
        try:
            ident = await self._identify()
            await self._gate([("user", ident.username)])
            try:
                events = validate_batch(limits.parse_json(body, nul="\ufffd"))
            except (ValueError, BadBatch) as exc:
                raise web.HTTPError(400, str(exc).replace("%", "%%")) from None
            await self._gate([("user", ident.username)], cost=len(events), bucket="events")
        except web.HTTPError as exc:
            if exc.status_code != 429:
                await self._record_refusal(exc)
            raise
        Session = self.settings["sessionmaker"]

        def write():
            with Session() as s, s.begin():
                audit.append_many(
                    s,
                    [
                        {
                            **ev,
                            "actor": ident.username,
                            "project": ident.project,
                            "details": {
                                **ev["details"],
                                "source": "workspace",
                                "server": ident.server_name,
                            },
                        }
                        for ev in events
                    ],
                )

        try:
            await asyncio.to_thread(write)
        except audit.AuditError as exc:  # e.g. a value the chain cannot hold: refuse clearly
            refusal = web.HTTPError(400, f"batch refused: {exc}".replace("%", "%%"))
            await self._record_refusal(refusal, body)
            raise refusal from None
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"accepted": len(events)}))

    async def _record_refusal(self, exc: web.HTTPError, body: bytes = b"") -> None:
        """A refused report is itself a denied action: audit it, naming the token's owner
        (within the client's refusal budget; beyond it, counted into ``rate.limited``)."""
        reason = exc.log_message % exc.args if exc.log_message else exc.reason
        if not self.limits.audit_refusal([("addr", self.client_ip)], f"{exc.status_code} ingest"):
            return
        who = (self._whoami or {}).get("name") or "(unidentified)"
        details = {"status": exc.status_code, "remote": self.client_ip}
        if body:
            details |= {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        await asyncio.to_thread(
            audit.append_committed,
            self.settings["sessionmaker"],
            "audit.ingest.refused",
            actor=str(who)[:64],
            outcome="denied",
            reason=reason,
            details=details,
        )

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args
        if self._retry_after:
            self.set_header("Retry-After", str(int(self._retry_after)))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))


def routes(prefix: str) -> list[tuple]:
    from jupyterhub.utils import url_path_join

    return [(url_path_join(prefix, "api/audit/events"), AuditEventsHandler)]
