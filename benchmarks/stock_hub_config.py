"""Baseline hub for ``python -m benchmarks.spawn``: stock DockerSpawner, nothing of ours.

An ordinary single-host DockerSpawner deployment: the hub runs on the host, workspaces run on
Docker's default ``bridge`` network and reach the hub through the bridge gateway (docker0),
the hub reaches them on their bridge address. Same image, command, timeouts and default URL as
``jupyterhub_config.py``, so the only difference measured is the spawner.

Settings (env, all set by the benchmark): BENCH_STOCK_PORT (public proxy port, loopback),
BENCH_STOCK_HUB_PORT, BENCH_STOCK_PROXY_API_PORT, BENCH_STOCK_HUB_CONNECT_IP (docker0 gateway,
default 172.17.0.1), BENCH_STOCK_TOKEN (API token of the ``bench`` service),
BENCH_STOCK_IMAGE (default sde-notebook:latest), BENCH_STOCK_DB_URL (JupyterHub's database,
default SQLite in the working directory).
"""

import os

c = get_config()  # noqa: F821 - provided by JupyterHub
env = os.environ

hub_port = env.get("BENCH_STOCK_HUB_PORT", "8081")
c.JupyterHub.bind_url = f"http://127.0.0.1:{env.get('BENCH_STOCK_PORT', '8000')}"
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{hub_port}"
c.JupyterHub.hub_connect_url = (
    f"http://{env.get('BENCH_STOCK_HUB_CONNECT_IP', '172.17.0.1')}:{hub_port}"
)
c.ConfigurableHTTPProxy.api_url = (
    f"http://127.0.0.1:{env.get('BENCH_STOCK_PROXY_API_PORT', '8001')}"
)
c.JupyterHub.allow_named_servers = True
if env.get("BENCH_STOCK_DB_URL"):
    c.JupyterHub.db_url = env["BENCH_STOCK_DB_URL"]

c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = env.get("BENCH_STOCK_IMAGE", "sde-notebook:latest")
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "ifnotpresent"
c.DockerSpawner.network_name = "bridge"
c.DockerSpawner.use_internal_ip = True
c.Spawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True  # the proxy listens on loopback only; the benchmark uses a token
c.JupyterHub.services = [{"name": "bench", "api_token": env["BENCH_STOCK_TOKEN"]}]
c.JupyterHub.load_roles = [
    {
        "name": "bench",
        "scopes": ["admin:users", "admin:servers", "users", "servers", "read:users"],
        "services": ["bench"],
    }
]
