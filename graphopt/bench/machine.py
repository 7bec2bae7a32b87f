"""What a benchmark records of the machine: CPU, memory (process RSS and its high-water mark),
GPUs and their memory in use."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from graphopt import runtime


def _status_kb(key: str) -> int | None:
    """A ``Vm*`` line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    return _status_kb("VmRSS")


def peak_rss_bytes() -> int | None:
    return _status_kb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the process high-water mark (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _nvidia_smi(*args: str) -> str | None:
    """nvidia-smi's stdout, or None where there is no such tool or it fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        return subprocess.run(
            [smi, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> list[dict[str, str]]:
    """Name, memory and driver of each NVIDIA GPU (empty where there is none)."""
    out = _nvidia_smi("--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
    if out is None:
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def gpu_memory_bytes(device: int = 0) -> int | None:
    """Device memory this process holds on GPU ``device`` (NVML, else nvidia-smi; else None)."""
    import os

    pid = os.getpid()
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid:
                return int(proc.usedGpuMemory)
        return 0
    except Exception:  # not installed, no driver, no permission: try nvidia-smi
        pass
    out = _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    if out is None:
        return None
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1]) * 1024 * 1024
    return 0


def machine() -> dict[str, Any]:
    from graphopt.runtime.target import detect_cpu

    env = runtime.environment()
    env["cpu_features"] = detect_cpu().summary()
    env["gpus"] = gpu_info()
    return env


def machine_line(env: dict[str, Any]) -> str:
    """'Machine: <cpu> (<isa>, AMX|no AMX); onnxruntime <version> CPU EP' for a results page."""
    features = env.get("cpu_features") or {}
    amx = ", AMX" if any("amx" in f for f in features.get("flags", [])) else ", no AMX"
    return (
        f"Machine: {env.get('cpu', '?')} ({features.get('isa', '?')}{amx}); onnxruntime "
        f"{env.get('onnxruntime', '?')} CPU EP"
    )
