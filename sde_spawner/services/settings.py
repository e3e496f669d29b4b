"""Every setting of the ``sde`` service, in one traitlets object: :class:`ServiceSettings`.

Each setting is a trait with its help (``python -m sde_spawner.services --help-all`` lists
them) and the environment variable that sets it (JupyterHub starts the service with those:
``jupyterhub_config.py`` passes on every variable :meth:`ServiceSettings.env_names` names).
The environment is read here and nowhere else in the service: :meth:`ServiceSettings.from_env`
reads it once, a config file or the command line (``--ServiceSettings.enforce_seconds=30``)
overrides it, and the rest of the service gets this object (``app.settings["sde"]``) and the
values derived from it (:meth:`export_rules`, :meth:`sdc_rules`, :meth:`limit_settings`).

A bad value stops the service with one line naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlparse

from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Application

from sde_airlock import sdc
from sde_airlock.imports import ImportRules
from sde_airlock.rules import DEFAULT_ALLOWED_SUFFIXES, ExportRules
from sde_airlock.sdc.core import valid_rounding
from sde_spawner.checking.limits import LimitSettings
from sde_spawner.db import DEFAULT_DB_URL

TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")
DEFAULT_PAGE_NETWORKS = ("127.0.0.0/8", "::1/128")


def setting(trait, env: str, help: str):
    """``trait`` as a setting of the service, set by the environment variable ``env``."""
    trait.help = f"{help} (env {env})"
    return trait.tag(config=True, env=env)


#: Help of each flood limit, quota and housekeeping setting (fields of LimitSettings).
LIMIT_HELP = {
    "request_rate": "Requests per second each client address (and workspace) may make.",
    "request_burst": "Requests a client may make at once before request_rate applies.",
    "refusal_rate": "Refusals per second per client that still get an audit row each; beyond, "
    "one aggregated rate.limited row per window, and the client's requests get 429.",
    "refusal_burst": "Refusals a client may have at once before refusal_rate applies.",
    "total_refusal_rate": "Individually audited refusals per second of all clients together.",
    "total_refusal_burst": "Refusals of all clients at once before total_refusal_rate applies.",
    "window_seconds": "Seconds per aggregation window of rate.limited rows.",
    "event_rate": "Audit events per second a workspace may report (batches cost their size).",
    "event_burst": "Audit events a workspace may report at once before event_rate applies.",
    "json_body_bytes": "Largest request body of the JSON APIs.",
    "audit_body_bytes": "Largest request body of the audit-ingestion API.",
    "default_body_bytes": "Largest request body of any other route (the HTTP server's).",
    "person_open_drafts": "Open (unsubmitted) export drafts one person may hold.",
    "project_open_drafts": "Open export drafts one project may hold.",
    "person_declared_bytes": "Declared bytes of one person's open export requests.",
    "project_declared_bytes": "Declared bytes of one project's open export requests.",
    "project_stored_bytes": "Bytes of export files one project may have stored.",
    "min_free_bytes": "Free bytes that must remain in the state directory after an upload.",
    "draft_expiry_hours": "Hours after which an untouched draft expires.",
    "blob_grace_seconds": "Seconds before a stored file nobody references is removed.",
    "sweep_seconds": "Seconds between housekeeping sweeps of drafts and files (0: never).",
}


def _limit_traits() -> dict:
    out = {}
    defaults = LimitSettings()
    for f in fields(LimitSettings):
        value = getattr(defaults, f.name)
        kind = Float if isinstance(value, float) else Integer
        out[f"limit_{f.name}"] = setting(
            kind(value, min=0), f"SDE_LIMIT_{f.name.upper()}", LIMIT_HELP[f.name]
        )
    return out


class ServiceSettings(Application):
    """The ``sde`` service: output checking, audit ingestion, lifecycle, culling, usage."""

    name = "sde-service"
    description = __doc__

    # --- where the service is ---------------------------------------------------------------
    prefix = setting(
        Unicode("/services/sde/"),
        "JUPYTERHUB_SERVICE_PREFIX",
        "URL prefix of the service's routes (set by JupyterHub).",
    )
    service_url = setting(
        Unicode("http://127.0.0.1:9100"),
        "JUPYTERHUB_SERVICE_URL",
        "Where the hub reaches the service (set by JupyterHub); gives the port.",
    )
    bind_ip = setting(
        Unicode(),
        "SDE_SERVICE_BIND_IP",
        "Address the service listens on (default: service_url's host). The hub's wiring "
        "binds all addresses, since workspaces reach the service through their gateway.",
    )
    port = setting(Integer(), "SDE_SERVICE_PORT", "Port the service listens on (default: "
                   "service_url's port).")  # fmt: skip
    hub_api_url = setting(
        Unicode("http://127.0.0.1:8081/hub/api"),
        "JUPYTERHUB_API_URL",
        "The hub's REST API (set by JupyterHub).",
    )
    api_token = setting(
        Unicode(""), "JUPYTERHUB_API_TOKEN", "The service's hub API token (set by JupyterHub)."
    )
    db_url = setting(Unicode(DEFAULT_DB_URL), "SDE_DB_URL", "Registry and audit database URL.")
    state_dir = setting(
        Unicode("var"),
        "SDE_STATE_DIR",
        "State directory: export files, the release signing key, audit checkpoints.",
    )
    admins = setting(
        List(Unicode(), ["admin"]),
        "SDE_AUDIT_ADMINS",
        "Administrators: who may see the audit, registry overview and usage pages "
        "(comma-separated in the environment).",
    )

    # --- audit ------------------------------------------------------------------------------
    audit_checkpoint_seconds = setting(
        Float(300.0, min=0.1),
        "SDE_AUDIT_CHECKPOINT_SECONDS",
        "Seconds between signed checkpoints of the audit chain's head.",
    )
    audit_dir = setting(
        Unicode(""),
        "SDE_AUDIT_DIR",
        "Directory of the checkpoint key and file (default: <state_dir>/audit).",
    )
    audit_key_file = setting(
        Unicode(""), "SDE_AUDIT_KEY_FILE", "Checkpoint key (default: <audit_dir>/checkpoint.key)."
    )
    audit_checkpoint_file = setting(
        Unicode(""),
        "SDE_AUDIT_CHECKPOINT_FILE",
        "Append-only checkpoint file (default: <audit_dir>/checkpoints.jsonl).",
    )

    # --- lifecycle ------------------------------------------------------------------------
    enforce_seconds = setting(
        Float(60.0, min=0.1),
        "SDE_ENFORCE_SECONDS",
        "Seconds between lifecycle sweeps (workspaces whose eligibility lapsed are closed); "
        "registry changes are acted on as they happen besides.",
    )
    registry_watch_seconds = setting(
        Float(1.0, min=0.05),
        "SDE_REGISTRY_WATCH_SECONDS",
        "Seconds between looks at the audit trail for registry changes to act on.",
    )

    # --- idle culling and usage (sde_spawner.culling, sde_spawner.usage) --------------------
    idle_timeout = setting(
        Integer(3600, min=10),
        "SDE_IDLE_TIMEOUT",
        "Seconds a workspace may go without activity through the proxy before it is stopped, "
        "for projects without their own idle timeout (project file: [limits] idle).",
    )
    cull_every_seconds = setting(
        Float(60.0, min=0.5),
        "SDE_IDLE_CULL_EVERY",
        "Seconds between looks for idle workspaces (the hub-wide idle-culler service uses "
        "the same interval).",
    )
    usage_sample_seconds = setting(
        Float(60.0, min=0.5),
        "SDE_USAGE_SAMPLE_SECONDS",
        "Seconds between samples of each running workspace's CPU and memory use (0.5 s or "
        "more; memory hours are the samples times this interval).",
    )

    # --- checking pages -------------------------------------------------------------------
    page_networks = setting(
        List(Unicode(), list(DEFAULT_PAGE_NETWORKS)),
        "SDE_CHECKING_PAGE_NETWORKS",
        "Networks people's pages are served to: the proxy's addresses (comma-separated). "
        "Workspaces reach the service port directly and get no page, even with a login.",
    )
    preview_rows = setting(
        Integer(1000, min=1), "SDE_CHECKING_PREVIEW_ROWS", "CSV rows shown to checkers."
    )

    # --- export rules (sde_airlock.rules; workspaces get the same) ----------------------------
    export_allowed_types = setting(
        List(Unicode(), list(DEFAULT_ALLOWED_SUFFIXES)),
        "SDE_EXPORT_ALLOWED_TYPES",
        "File name endings that may be exported (comma-separated).",
    )
    export_max_file_bytes = setting(
        Integer(ExportRules().max_file_bytes), "SDE_EXPORT_MAX_FILE_BYTES", "Largest export file."
    )
    export_max_files = setting(
        Integer(ExportRules().max_files), "SDE_EXPORT_MAX_FILES", "Most files in one request."
    )
    export_max_justification = setting(
        Integer(ExportRules().max_justification),
        "SDE_EXPORT_MAX_JUSTIFICATION",
        "Longest justification of a request (characters).",
    )
    export_max_description = setting(
        Integer(ExportRules().max_description),
        "SDE_EXPORT_MAX_DESCRIPTION",
        "Longest description of a file (characters).",
    )
    export_max_path = setting(
        Integer(ExportRules().max_path), "SDE_EXPORT_MAX_PATH", "Longest path of a file."
    )

    # --- import rules (sde_airlock.imports; the service only) ---------------------------------
    import_allowed_types = setting(
        Unicode(""),
        "SDE_IMPORT_ALLOWED_TYPES",
        "File types a project member may import (comma-separated; empty: the default list; "
        "archives and programs never).",
    )
    import_max_file_bytes = setting(
        Unicode(""), "SDE_IMPORT_MAX_FILE_BYTES", "Largest imported file (bytes; empty: 25 MiB)."
    )
    import_max_files = setting(
        Unicode(""), "SDE_IMPORT_MAX_FILES", "Most files in one import request (empty: 10)."
    )
    import_max_request_bytes = setting(
        Unicode(""),
        "SDE_IMPORT_MAX_REQUEST_BYTES",
        "Largest import request, all files together (bytes; empty: 64 MiB).",
    )
    import_max_justification = setting(
        Unicode(""), "SDE_IMPORT_MAX_JUSTIFICATION", "Longest import justification (characters)."
    )
    import_max_description = setting(
        Unicode(""), "SDE_IMPORT_MAX_DESCRIPTION", "Longest description of an imported file."
    )

    # --- disclosure checks (sde_airlock.sdc; workspaces get the same) -------------------------
    sdc_threshold = setting(
        Integer(sdc.Rules().threshold, min=1), "SDE_SDC_THRESHOLD", "Smallest cell count shown."
    )
    sdc_dof_threshold = setting(
        Integer(sdc.Rules().dof_threshold, min=0),
        "SDE_SDC_DOF_THRESHOLD",
        "Fewest residual degrees of freedom of a model.",
    )
    sdc_zeros_are_disclosive = setting(
        Bool(sdc.Rules().zeros_are_disclosive),
        "SDE_SDC_ZEROS_ARE_DISCLOSIVE",
        "Are zero cells disclosive?",
    )
    sdc_rounding = setting(
        Unicode(""),
        "SDE_SDC_ROUNDING",
        "Rounding counts must show: empty (none), a base such as 5, or midpoint6.",
    )

    locals().update(_limit_traits())

    # --- defaults and checks ----------------------------------------------------------------
    @default("bind_ip")
    def _default_bind_ip(self):
        return urlparse(self.service_url).hostname or "127.0.0.1"

    @default("port")
    def _default_port(self):
        return urlparse(self.service_url).port or 9100

    @validate("prefix")
    def _valid_prefix(self, proposal):
        value = proposal["value"]
        return value if value.endswith("/") else value + "/"

    @validate("page_networks")
    def _valid_networks(self, proposal):
        from sde_spawner.services.pages import parse_networks

        try:
            return list(parse_networks(",".join(proposal["value"])))
        except ValueError as exc:
            raise TraitError(f"page_networks: {exc}") from None

    @validate("sdc_rounding")
    def _valid_rounding(self, proposal):
        try:
            return valid_rounding(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from None

    # --- reading the environment (the one place) ----------------------------------------------
    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every environment variable a setting reads."""
        return tuple(t.metadata["env"] for t in cls.class_traits(env=lambda e: bool(e)).values())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServiceSettings:
        """The settings from ``environ`` (default: this process's environment), then
        ``overrides``. Unset or empty variables keep the default; a bad one raises
        ``ValueError`` naming it."""
        environ = os.environ if environ is None else environ
        self = cls()
        for name, trait in cls.class_traits(env=lambda e: bool(e)).items():
            raw = environ.get(trait.metadata["env"])
            if raw is None or (raw.strip() == "" and not isinstance(trait, Unicode)):
                continue
            try:
                setattr(self, name, _parse(trait, raw))
            except (TraitError, ValueError) as exc:
                raise ValueError(f"{trait.metadata['env']}={raw!r}: {exc}") from None
        for name, value in overrides.items():
            setattr(self, name, value)
        self.check()
        return self

    def check(self) -> None:
        """Raise ``ValueError`` if the derived rules cannot be made (naming the setting)."""
        self.export_rules()

    # --- derived values ---------------------------------------------------------------------
    def export_rules(self) -> ExportRules:
        try:
            return ExportRules(
                allowed_suffixes=tuple(self.export_allowed_types),
                max_file_bytes=self.export_max_file_bytes,
                max_files=self.export_max_files,
                max_justification=self.export_max_justification,
                max_description=self.export_max_description,
                max_path=self.export_max_path,
            )
        except ValueError as exc:
            raise ValueError(f"export settings: {exc}") from None

    def import_rules(self) -> ImportRules:
        """The import rules from the ``import_*`` settings (ValueError naming a bad one)."""
        return ImportRules.from_env(
            {
                env: getattr(self, name)
                for name, trait in self.traits(config=True).items()
                if name.startswith("import_") and (env := trait.metadata.get("env"))
            }
        )

    def sdc_rules(self) -> sdc.Rules:
        return sdc.Rules(
            threshold=self.sdc_threshold,
            dof_threshold=self.sdc_dof_threshold,
            zeros_are_disclosive=self.sdc_zeros_are_disclosive,
            rounding=self.sdc_rounding,
        )

    def limit_settings(self) -> LimitSettings:
        return LimitSettings(
            **{f.name: getattr(self, f"limit_{f.name}") for f in fields(LimitSettings)}
        )

    def audit_paths(self) -> tuple[Path, Path]:
        """(checkpoint key, checkpoint file)."""
        base = Path(self.audit_dir or os.path.join(self.state_dir, "audit"))
        return (
            Path(self.audit_key_file or base / "checkpoint.key"),
            Path(self.audit_checkpoint_file or base / "checkpoints.jsonl"),
        )


def _parse(trait, raw: str):
    text = raw.strip()
    if isinstance(trait, List):
        return [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    if isinstance(trait, Bool):
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ValueError("not a yes/no value (true, false, 1, 0)")
    if isinstance(trait, Integer):
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ValueError("not a whole number") from None
    if isinstance(trait, Float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("not a number") from None
    return raw
