"""Memory figures for ``/get_resource_usage``: the process, the machine, and each GPU in use."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

__all__ = ["resource_usage"]

_GIB = 2**30


def _gib(value: float) -> float:
    return round(value / _GIB, 2)


def _machine_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _process_memory_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # Peak, not current, where /proc is missing (macOS reports bytes, Linux kibibytes).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def resource_usage(name: str, num_gpus: int) -> dict[str, Any]:
    """The original's ``memory_usage`` entry, in GiB rounded to 2 decimals.

    ``used_memory`` of a GPU is device-wide (``total - free``), other processes included.
    """
    gpus = []
    if num_gpus > 0:
        import torch

        for index in range(min(num_gpus, torch.cuda.device_count())):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(
                {"index": index, "total_memory": _gib(total), "used_memory": _gib(total - free)}
            )
    machine = _machine_memory_bytes()
    return {
        "name": name,
        "num_gpus": num_gpus,
        "gpus": gpus,
        "cpu": {
            "total_memory": None if machine is None else _gib(machine),
            "used_memory": _gib(_process_memory_bytes()),
        },
    }
