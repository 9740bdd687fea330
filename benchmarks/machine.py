"""The machine line every benchmark table prints (benchmarks run as scripts: `python benchmarks/NAME.py`)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(*extra: str) -> str:
    """``CPU, N cores, Python X`` plus any ``extra`` items (library versions...)."""
    return ", ".join([cpu_name(), f"{os.cpu_count()} cores", f"Python {platform.python_version()}", *extra])
