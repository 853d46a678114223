"""`pellucid bench --machine`: this machine's limits, measured and cached (pellucid/machine.py).

Behaviour only: the numbers are positive and in the documented shape, the cache holds them per CPU and
thread count; how fast this machine is, is not a test's business.
"""

from __future__ import annotations

import json

from pellucid import machine
from test_cli import run

FIELDS = {"cpu", "threads", "bandwidth_gb_s", "matmul_gflops_f32", "matmul_gflops_bf16", "matmul_gflops",
          "measured_at"}  # fmt: skip


def test_bench_machine_measures_and_caches(tmp_path, monkeypatch):
    env = {"PELLUCID_HOME": str(tmp_path)}
    proc = run("bench", "--machine", "--threads", "1", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    limits = json.loads(proc.stdout)
    assert set(limits) == FIELDS
    assert limits["threads"] == 1 and limits["bandwidth_gb_s"] > 0 and limits["matmul_gflops_f32"] > 0
    assert limits["matmul_gflops"] in (limits["matmul_gflops_f32"], limits["matmul_gflops_bf16"])
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path))
    assert machine.cached(1).as_dict() == limits
    assert machine.cached(7) is None  # another thread count was never measured
    text = run("bench", "--machine", "--threads", "1", env=env)
    assert text.returncode == 0 and "GB/s" in text.stdout and "GFLOP/s" in text.stdout


def test_a_damaged_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("PELLUCID_HOME", str(tmp_path))
    (tmp_path / "machine.json").write_text("{not json")
    assert machine.cached(1) is None
    (tmp_path / "machine.json").write_text(json.dumps({f"{machine.cpu_name()} / 1 threads": {"cpu": "x"}}))
    assert machine.cached(1) is None  # an entry of another shape
