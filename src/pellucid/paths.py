"""Where pellucid keeps its files: one folder, `$PELLUCID_HOME` (default `~/.cache/pellucid`).

    models/      the model store (pellucid.store)
    tmp/         downloads in progress
    rag/         the default RAG index
    compiled/    torch.compile's on-disk cache (inductor's kernels and graphs)
    servers/     one JSON file per running `pellucid serve` (pellucid.servers), and the logs of the servers
                 `run --keep-alive` started; $PELLUCID_SERVERS puts this registry elsewhere (the tests keep
                 their own, so a server you left running does not answer them)

The compile cache lives here rather than in inductor's default /tmp/torchinductor_$USER because many systems
empty /tmp at boot, and a cold cache makes the first answer after every reboot wait ~20-60 s (2 cores) for
compiling instead of a few seconds. It is safe to delete; it refills on the next run.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("PELLUCID_HOME") or Path.home() / ".cache" / "pellucid").expanduser()


def servers_dir() -> Path:
    return Path(os.environ.get("PELLUCID_SERVERS") or home() / "servers").expanduser()


def use_compile_cache() -> None:
    """Point inductor's cache at home()/compiled unless TORCHINDUCTOR_CACHE_DIR is set. Inductor reads the
    variable when it is first imported, so this runs at `import pellucid`, before any of our code imports it."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home() / "compiled"))
