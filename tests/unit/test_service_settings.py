"""The ``sde`` service's one settings object: every setting listed by ``--help-all`` with its
variable, the environment read in one place, overridden by the command line, bad values
refused with one line naming the variable."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from sde_airlock.rules import EXPORT_SETTINGS
from sde_spawner.checking.limits import LimitSettings
from sde_spawner.services.settings import ServiceSettings
from sde_spawner.spawner import SDC_SETTINGS
from tests.support import REPO

ENV_READ = re.compile(r"os\.environ|getenv|\benviron\.get|\benviron\[")


def settings_traits() -> dict:
    return ServiceSettings.class_own_traits(config=True)


def test_help_all_lists_every_setting_with_its_help_and_variable():
    out = subprocess.run(
        [sys.executable, "-m", "sde_spawner.services", "--help-all"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    ).stdout
    words = "".join(out.split())  # help text is wrapped (at spaces and hyphens)
    traits = settings_traits()
    assert len(traits) >= 40
    for name, trait in traits.items():
        assert f"--ServiceSettings.{name}=" in out, name
        assert trait.help and "".join(trait.help.split()) in words, name


def test_every_limit_export_and_sdc_setting_is_a_trait():
    envs = set(ServiceSettings.env_names())
    assert {f"SDE_LIMIT_{f.name.upper()}" for f in fields(LimitSettings)} <= envs
    assert set(EXPORT_SETTINGS) <= envs
    assert set(SDC_SETTINGS) <= envs
    for name in ("SDE_DB_URL", "SDE_STATE_DIR", "SDE_AUDIT_ADMINS", "SDE_ENFORCE_SECONDS",
                 "SDE_REGISTRY_WATCH_SECONDS", "SDE_AUDIT_CHECKPOINT_SECONDS",
                 "SDE_CHECKING_PAGE_NETWORKS", "SDE_CHECKING_PREVIEW_ROWS"):  # fmt: skip
        assert name in envs, name


def test_the_environment_sets_values_and_derived_rules():
    s = ServiceSettings.from_env(
        {
            "SDE_LIMIT_REFUSAL_BURST": "5",
            "SDE_LIMIT_REQUEST_RATE": "2.5",
            "SDE_AUDIT_ADMINS": "admin, dpo",
            "SDE_EXPORT_ALLOWED_TYPES": ".csv,.png",
            "SDE_EXPORT_MAX_FILES": "3",
            "SDE_SDC_ZEROS_ARE_DISCLOSIVE": "false",
            "SDE_SDC_ROUNDING": "midpoint6",
            "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:9300",
            "JUPYTERHUB_SERVICE_PREFIX": "/services/sde",
            "SDE_STATE_DIR": "/srv/sde",
        }
    )
    assert s.limit_settings() == LimitSettings(refusal_burst=5, request_rate=2.5)
    assert s.admins == ["admin", "dpo"]
    rules = s.export_rules()
    assert (rules.allowed_suffixes, rules.max_files) == ((".csv", ".png"), 3)
    sdc_rules = s.sdc_rules()
    assert (sdc_rules.zeros_are_disclosive, sdc_rules.rounding) == (False, "midpoint6")
    assert (s.port, s.bind_ip, s.prefix) == (9300, "127.0.0.1", "/services/sde/")
    key, file = s.audit_paths()
    assert (str(key), str(file)) == (
        "/srv/sde/audit/checkpoint.key",
        "/srv/sde/audit/checkpoints.jsonl",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SDE_LIMIT_REFUSAL_BURST": "x"}, "SDE_LIMIT_REFUSAL_BURST='x': not a whole number"),
        ({"SDE_LIMIT_MIN_FREE_BYTES": "-1"}, "SDE_LIMIT_MIN_FREE_BYTES='-1'"),
        ({"SDE_ENFORCE_SECONDS": "soon"}, "SDE_ENFORCE_SECONDS='soon': not a number"),
        ({"SDE_CHECKING_PAGE_NETWORKS": "10.0.0/8"}, "SDE_CHECKING_PAGE_NETWORKS='10.0.0/8'"),
        ({"SDE_SDC_ROUNDING": "seven"}, "SDE_SDC_ROUNDING='seven'"),
        ({"SDE_SDC_ZEROS_ARE_DISCLOSIVE": "maybe"}, "not a yes/no value"),
        ({"SDE_EXPORT_ALLOWED_TYPES": ".csv,.zip"}, "archives are never exported"),
    ],
)
def test_a_bad_value_is_one_error_naming_it(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ServiceSettings.from_env(env)


def test_the_command_line_overrides_the_environment_and_bad_values_stop_the_service():
    code = (
        "from sde_spawner.services.__main__ import load_settings;"
        "s = load_settings(['--ServiceSettings.enforce_seconds=5']);"
        "print(s.enforce_seconds, s.registry_watch_seconds)"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SDE_ENFORCE_SECONDS": "7",
           "SDE_REGISTRY_WATCH_SECONDS": "2"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.stdout.split() == ["5.0", "2.0"], run.stderr
    env["SDE_LIMIT_REQUEST_BURST"] = "lots"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "sde service: SDE_LIMIT_REQUEST_BURST='lots': not a whole number"
    ]


def test_no_module_of_the_service_but_the_settings_reads_the_environment():
    """Every sde_spawner / sde_airlock module the service imports, read as source: only
    services/settings.py may touch os.environ (the lint below fails when a module reads
    ``os.environ.get("SDE_...")`` again)."""
    code = (
        "import sys, sde_spawner.services.__main__;"
        "from sde_spawner.services.app import make_app;"
        "import sde_spawner.checking.api, sde_spawner.checking.pages, sde_spawner.audit.api;"
        "import sde_spawner.imports.handlers, sde_spawner.services.metrics;"
        "import sde_spawner.services.admin_pages, sde_spawner.services.audit_pages;"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
        "if n.split('.')[0] in ('sde_spawner', 'sde_airlock') and getattr(m, '__file__', None)))"
    )
    files = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
        timeout=60,
    ).stdout.split()  # fmt: skip
    assert any(f.endswith("checking/api.py") for f in files)
    readers = sorted(
        f.split("/sde_", 1)[1] for f in files if ENV_READ.search(Path(f).read_text("utf-8"))
    )
    assert readers == ["spawner/services/settings.py"]
