"""The load benchmark's machinery (``benchmarks.load``), run small so it cannot rot: a real hub
and ``sde`` service on SQLite, three researchers and one checker for three seconds."""

from __future__ import annotations

import argparse

from benchmarks import load


def test_pool_gives_each_request_to_distinct_checkers_oldest_first():
    pool = load.Pool(needed=2)
    owner = load.Person("lr000", "127.0.1.1")
    pool.add(1, owner, "a" * 64)
    pool.add(2, owner, "b" * 64)
    assert [pool.take("c1"), pool.take("c1"), pool.take("c1")] == [1, 2, None]
    assert pool.take("c2") == 1
    assert pool.waiting == {2: {"c1"}}  # request 1 has its two checkers


def test_small_run_against_the_real_hub_has_no_errors_and_the_audit_verifies(capsys):
    args = argparse.Namespace(
        researchers=3, checkers=1, projects=1, seconds=3.0, quiet=1, think=0.0
    )
    result = load.run_one("sqlite", args)
    load.report(result)
    out = capsys.readouterr().out
    assert result.quiet.errors == [] and result.load.errors == [], out
    assert result.verify_ok and result.verify.startswith("OK"), result.verify
    for call in load.CALLS:  # the whole cycle ran alone, and under load
        assert result.quiet.times[call], (call, out)
    assert len(result.load.times["submit"]) >= 3, out
    assert result.load.times["review"] and result.load.times["download"], out
    assert "errors: 0" in out
