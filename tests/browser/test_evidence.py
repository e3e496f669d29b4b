"""The evidence report reads in Chromium: from a real run's JUnit XML and a real registry,
offline (no request leaves the file), no script, each safe and statement with its status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from sde_spawner.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_evidence_report_reads_offline_in_chromium(tmp_path, chromium, monkeypatch):
    monkeypatch.setenv("SDE_STATE_DIR", str(tmp_path / "state"))
    xml = tmp_path / "unit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
         "tests/unit/test_policy.py", "tests/unit/test_firewall.py"],
        cwd=REPO, capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    db = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    runner = CliRunner()
    assert runner.invoke(main, ["--db", db, "demo-seed", str(tmp_path / "data")]).exit_code == 0
    out = tmp_path / "evidence"
    done = runner.invoke(main, ["--db", db, "evidence", "--junit", str(xml), "--out", str(out)])
    assert done.exit_code == 0, done.output

    context = chromium.new_context()
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto((out / "index.html").as_uri())
        assert page.title() == "Five Safes evidence report"
        rows = page.locator("#safes-table tr[id^=safe-]")
        assert rows.count() == 5
        assert "Safe people" in page.locator("#safe-people").inner_text()
        # the controls behind safe settings are partly run here (network: firewall unit tests)
        network = page.locator("#control-network")
        assert "passed" in network.inner_text()
        network.locator("details").first.locator("summary").click()
        assert "tests.unit.test_firewall::" in network.inner_text()
        # a statement not met says why; one whose tests did not run here is not called met
        at_rest = page.locator("#statement-2\\.8\\.01").inner_text()
        assert "not met" in at_rest and "encrypted volumes" in at_rest
        internet = page.locator("#statement-2\\.2\\.11").inner_text()
        assert "not proven in this run" in internet
        facts = page.locator("#facts-table").inner_text()
        assert "events verified" in facts and "national v1" in facts
        assert page.locator("script").count() == 0
        assert requests == [(out / "index.html").as_uri()]
    finally:
        context.close()
