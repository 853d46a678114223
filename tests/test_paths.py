"""Where pellucid keeps its files: the compile cache sits in $PELLUCID_HOME, not in /tmp (see pellucid.paths)."""

import os
import subprocess
import sys

PROBE = (
    "import pellucid, torch._inductor.config, os; "
    "from torch._inductor.runtime.cache_dir_utils import cache_dir; print(cache_dir())"
)


def probe(env_changes: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"} | env_changes
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_compile_cache_lives_in_pellucid_home(tmp_path):
    assert probe({"PELLUCID_HOME": str(tmp_path)}) == str(tmp_path / "compiled")


def test_torchinductor_cache_dir_still_wins(tmp_path):
    mine = tmp_path / "mine"
    assert probe({"PELLUCID_HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(mine)}) == str(mine)
