"""Where tensors live: picking CUDA, MPS or CPU, and sizing the CPU thread pool.

`pick_device(None)` prefers an accelerator (CUDA, then Apple's MPS) and falls back to the CPU. On the CPU it
also sets torch's thread count to the number of *physical* cores: the matrix products that dominate a
forward pass gain nothing from SMT siblings, which only contend for the same floating-point units.
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from pellucid.errors import PellucidError


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run on: `requested` ("cpu", "cuda", "cuda:1", "mps") if it exists, else the best one."""
    if requested is None or str(requested) == "auto":
        device = _best_available()
    else:
        device = _checked(_parse(requested))
    if device.type == "cpu":
        torch.set_num_threads(physical_cores())
    return device


def _parse(requested: str | torch.device) -> torch.device:
    if isinstance(requested, torch.device):
        return requested
    try:
        return torch.device(requested)
    except RuntimeError:
        raise PellucidError(f"{requested!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None


def _best_available() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked(device: torch.device) -> torch.device:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PellucidError(
                f"device {device} was requested but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PellucidError(f"device {device} was requested but only {count} CUDA GPU(s) exist (cuda:0..)")
    elif device.type == "mps" and not _mps_available():
        raise PellucidError("device mps was requested but Apple's Metal backend is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PellucidError(f"device {device} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def physical_cores() -> int:
    """Physical cores this process may use (not SMT threads); at least 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = _linux_physical_cores() if platform.system() == "Linux" else _sysctl_physical_cores()
    return max(1, min(usable, cores or usable))


def _linux_physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    pairs = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    return len(pairs) or None


def _sysctl_physical_cores() -> int | None:
    """macOS reports physical cores through sysctl; elsewhere we trust os.cpu_count()."""
    if platform.system() != "Darwin":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
