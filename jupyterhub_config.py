"""JupyterHub wiring for the TRE: read settings from the environment, pick the parts.

All behaviour lives in ``sde_spawner``; this file only connects it. Settings (env):
SDE_STATE_DIR (hub state, default ./var), SDE_DB_URL (registry + audit database),
SDE_EXTRACTS_DIR, SDE_WORKSPACE_IMAGE, SDE_PUBLIC_BIND (default http://127.0.0.1:8000),
SDE_HUB_PORT (hub API port workspaces reach through their gateway, default 8081),
SDE_PROXY_API_PORT (default 8001, loopback only), SDE_SERVICE_PORT (the sde service, 9100),
SDE_OBJECT_PREFIX (Docker object names and labels, default sde), SDE_NETWORK_POOL (address
range of the workspace networks, one /28 each, default 10.213.0.0/16; empty: Docker's default
pools, about 30 networks), SDE_START_CONCURRENCY (workspace starts doing their costly part
at once, the rest queued first come first served; default the hub's CPUs, at least 2; 0: no
limit), SDE_HUB_DB_URL (JupyterHub's own database, default SQLite in
SDE_STATE_DIR), SDE_FIREWALL_WATCH_SECONDS
(how often the hub checks the host firewall chain and puts it back, default 1; 0: never),
SDE_FIREWALL_CHAIN and SDE_BRIDGE_PREFIX (the chain's and the workspace bridges' names,
default SDE-INPUT and sde: sde_spawner.firewall), SDE_FIREWALL_LOCK (the host-wide lock
file of the chain's writers, default /run/sde-firewall.lock), SDE_POLL_SECONDS (how often
the hub checks that each workspace's container still runs, default 30), SDE_SPAWNER (docker, the
default, swarm with SDE_HUB_CONTAINER and SDE_EXTRACTS_STORE, or kubernetes),
SDE_ACTIVITY_INTERVAL (seconds between the hub's reads of activity
from the proxy, default 300), SDE_IDLE_CULL_SECONDS (the hub-wide idle ceiling of the
idle-culler service, default 86400; projects' own idle timeouts are the sde service's,
sde_spawner.culling), SDE_SUBDOMAIN_HOST (e.g.
https://tre.example.org: each user's servers on their own subdomain, the `sde` service on
sde--service.tre.example.org, the hub on the bare host; the production setting, see README).
Login (sde_spawner.auth.choose_login): SDE_AUTHENTICATOR names the authenticator class of a
deployment (`oidc`: OpenID Connect with MFA, set by SDE_OIDC_ISSUER, SDE_OIDC_CLIENT_ID,
SDE_OIDC_CLIENT_SECRET_FILE, SDE_OIDC_MFA_AMR, SDE_OIDC_MFA_ACR, SDE_OIDC_MATCH_EMAIL,
SDE_OIDC_CALLBACK_URL, SDE_OIDC_LOGIN_SERVICE; see README); SDE_DEMO=1 with SDE_DEMO_PASSWORD
runs the shared-password demo login instead, on a loopback SDE_PUBLIC_BIND only. Without
either the hub refuses to start.
The sde service's own settings are sde_spawner.services.settings.ServiceSettings (traits with
help: `python -m sde_spawner.services --help-all`); every variable it names is passed on to
it. The disclosure-control rules SDE_SDC_THRESHOLD (10), SDE_SDC_DOF_THRESHOLD (10),
SDE_SDC_ZEROS_ARE_DISCLOSIVE (true) go to workspaces too, for researchers' pre-checks.
The export rules, given to the service and to every workspace alike (sde_airlock.rules):
SDE_EXPORT_ALLOWED_TYPES (.csv,.tsv,.txt,.md,.png,.jpg,.jpeg,.ipynb,.html,.json),
SDE_EXPORT_MAX_FILE_BYTES (200 MiB), SDE_EXPORT_MAX_FILES (20), SDE_EXPORT_MAX_JUSTIFICATION,
SDE_EXPORT_MAX_DESCRIPTION, SDE_EXPORT_MAX_PATH. The import rules, for the service only
(sde_airlock.imports): SDE_IMPORT_ALLOWED_TYPES, SDE_IMPORT_MAX_FILE_BYTES (25 MiB),
SDE_IMPORT_MAX_FILES (10), SDE_IMPORT_MAX_REQUEST_BYTES (64 MiB), SDE_IMPORT_MAX_JUSTIFICATION,
SDE_IMPORT_MAX_DESCRIPTION.
"""

import os
import sys
from pathlib import Path

from jupyterhub.app import JupyterHub

from sde_airlock.imports import IMPORT_SETTINGS, ImportRules
from sde_airlock.rules import EXPORT_SETTINGS, ExportRules
from sde_spawner.auth import OIDC_CLASS, LoginRefused, choose_login
from sde_spawner.db import upgrade
from sde_spawner.hub_events import make_log_function
from sde_spawner.rooms import SDC_SETTINGS, choose_spawner
from sde_spawner.services.settings import ServiceSettings

c = get_config()  # noqa: F821 - provided by JupyterHub

# Who may log in is decided first: nothing else is set up for a hub that must not start.
try:
    login = choose_login(os.environ)
    spawner_class = choose_spawner(os.environ)
    ExportRules.from_env(os.environ)  # a bad SDE_EXPORT_* setting stops the hub, naming it
    ImportRules.from_env(os.environ)  # and so does a bad SDE_IMPORT_* one
    ServiceSettings.from_env(os.environ)  # so does a bad setting of the sde service
except (LoginRefused, ValueError) as exc:
    raise SystemExit(f"sde: the hub refuses to start: {exc}") from None

state = Path(os.environ.get("SDE_STATE_DIR", "var")).resolve()
state.mkdir(parents=True, exist_ok=True)
db_url = os.environ.get("SDE_DB_URL", f"sqlite:///{state}/registry.sqlite")
upgrade(db_url)

c.JupyterHub.bind_url = os.environ.get("SDE_PUBLIC_BIND", "http://127.0.0.1:8000")
# Production: user servers on their own subdomains, so a workspace's pages never share an
# origin (cookies, scripts) with the hub or the checking pages. Needs wildcard DNS (and a
# wildcard certificate) for the host.
if os.environ.get("SDE_SUBDOMAIN_HOST"):
    c.JupyterHub.subdomain_host = os.environ["SDE_SUBDOMAIN_HOST"]
# Workspaces reach the hub API through their own network's gateway; the host firewall
# (sde_spawner.firewall) lets workspace networks reach this port and nothing else.
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{os.environ.get('SDE_HUB_PORT', '8081')}"
# The proxy and the services reach the hub over loopback; anything else on this port is a
# workspace (or the LAN) and gets only what a single-user server needs (sde_spawner.hub_gate).
c.JupyterHub.hub_connect_ip = "127.0.0.1"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('SDE_PROXY_API_PORT', '8001')}"
c.JupyterHub.db_url = os.environ.get("SDE_HUB_DB_URL") or f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.cleanup_servers = False  # a hub restart leaves running workspaces running
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5

# SDE_SPAWNER: docker (default, SDESpawner) or kubernetes (SDEKubeSpawner, for a hub run
# with a kubeconfig; a Zero to JupyterHub deployment uses deploy/kubernetes/values.yaml).
c.JupyterHub.spawner_class = spawner_class
kubernetes = spawner_class.endswith("SDEKubeSpawner")
swarm = spawner_class.endswith("SDESwarmSpawner")
room = c.SDEKubeSpawner if kubernetes else c.SDESwarmSpawner if swarm else c.SDESpawner
room.registry_url = db_url
room.extracts_dir = os.environ.get("SDE_EXTRACTS_DIR", str(state / "extracts"))
room.image = os.environ.get("SDE_WORKSPACE_IMAGE", "sde-notebook:latest")
if kubernetes:
    c.SDEKubeSpawner.object_prefix = os.environ.get("SDE_OBJECT_PREFIX", "sde")
elif swarm:
    # SDE_SPAWNER=swarm: the hub runs as a container on a manager node (sde_spawner.swarm_spawner)
    c.SDESwarmSpawner.prefix = os.environ.get("SDE_OBJECT_PREFIX", "sde")
    c.SDESwarmSpawner.imports_dir = str(state / "imports")
    c.SDESwarmSpawner.hub_container = os.environ["SDE_HUB_CONTAINER"]
    c.SDESwarmSpawner.extracts_store = os.environ.get("SDE_EXTRACTS_STORE", "local")
else:
    c.SDESpawner.prefix = os.environ.get("SDE_OBJECT_PREFIX", "sde")
    c.SDESpawner.imports_dir = str(state / "imports")  # the sde service's import store, mounted
    # One /28 per workspace network from this range: Docker's default pools hold only ~30
    # networks, so the 31st concurrent workspace would fail. Empty: Docker's pools.
    c.SDESpawner.network_pool = os.environ.get("SDE_NETWORK_POOL", "10.213.0.0/16")
    # A crowd's starts taken in turns, first come first served: the early ones are ready
    # early instead of all at the end (README, Start queue). Unset: the hub's CPUs, >= 2.
    if os.environ.get("SDE_START_CONCURRENCY", "").strip():
        c.SDESpawner.start_concurrency = int(os.environ["SDE_START_CONCURRENCY"])
c.Spawner.default_url = "/lab"
# A crowd at nine o'clock queues on the CPU: with 50 spawns at once on two cores the last
# workspace listens after ~2-3 minutes (python -m benchmarks.spawn --curve 1,10,20,50), and
# start() includes that wait. A workspace that dies is noticed at once (_wait_listening polls).
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
# How often the hub asks the engine whether each workspace still runs (JupyterHub's default
# 30 s): one whose container died (an engine restart, an out-of-memory kill) is then seen as
# stopped and its container, network and registry row removed (SDESpawner.run_post_stop_hook).
c.Spawner.poll_interval = int(os.environ.get("SDE_POLL_SECONDS", "30"))

# The `sde` service: output checking and audit ingestion. People reach it through the proxy
# (/services/sde/); workspaces reach it directly on its port, which the host firewall opens
# to them besides the hub API.
service_port = int(os.environ.get("SDE_SERVICE_PORT", "9100"))
SERVICE_SETTINGS = (
    *EXPORT_SETTINGS,
    *IMPORT_SETTINGS,
    *SDC_SETTINGS,
    *ServiceSettings.env_names(),
)
# Activity comes from the proxy's routes only (the servers' own heartbeat is closed).
c.JupyterHub.last_activity_interval = int(os.environ.get("SDE_ACTIVITY_INTERVAL", "300"))
cull_every = int(float(os.environ.get("SDE_IDLE_CULL_EVERY", "60")) or 60)
c.JupyterHub.services = [
    {
        # The hub-wide idle ceiling: no workspace idles longer, whatever its project says.
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={int(os.environ.get('SDE_IDLE_CULL_SECONDS', '86400'))}",
            f"--cull-every={max(1, cull_every)}",
        ],
    },
    {
        "name": "sde",
        "url": f"http://127.0.0.1:{service_port}",
        "command": [sys.executable, "-m", "sde_spawner.services"],
        "environment": {
            **{
                k: os.environ[k]
                for k in SERVICE_SETTINGS
                if os.environ.get(k) and not k.startswith("JUPYTERHUB_")
            },
            "SDE_DB_URL": db_url,
            "SDE_STATE_DIR": str(state),
            "SDE_SERVICE_BIND_IP": "0.0.0.0",  # noqa: S104 - reached via workspace gateways
        },
        "oauth_no_confirm": True,
        "display": True,
    },
]
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=sde"]},
    # servers: the lifecycle sweep stops workspaces whose eligibility lapsed.
    {"name": "sde-service", "services": ["sde"], "scopes": ["read:users", "list:users", "servers"]},
    {
        "name": "idle-culler",
        "services": ["idle-culler"],
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    },
]
room.service_port = service_port
if not (kubernetes or swarm) and JupyterHub.initialized():  # a hub starting, not a check
    # Before anything is reachable: the host firewall chain, then nothing of this hub's in
    # Docker or the registry that its saved state does not know (sde_spawner.reconcile).
    from sde_spawner.reconcile import at_hub_start

    at_hub_start(
        c.SDESpawner.prefix,
        db_url,
        c.JupyterHub.db_url,
        [int(os.environ.get("SDE_HUB_PORT", "8081")), service_port],
        watch_seconds=float(os.environ.get("SDE_FIREWALL_WATCH_SECONDS", "1")),
    )

# Token creation, spawn/stop requests, admin API calls and logouts go to the audit trail.
c.JupyterHub.tornado_settings = {"log_function": make_log_function(db_url)}

c.JupyterHub.authenticator_class = login.authenticator_class
c[login.section].update(login.settings)
if login.demo_password is not None:
    c.DemoAuthenticator.registry_url = db_url
    c.DemoAuthenticator.demo_password = login.demo_password
if login.authenticator_class == OIDC_CLASS:
    c.SDEOAuthenticator.registry_url = db_url
c.Authenticator.admin_users = {"admin"}
