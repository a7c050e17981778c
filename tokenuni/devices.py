"""Device choice: CUDA when present (and allowed), else the CPU.

Kept free of heavy imports at module level so the Snakefile can ask :func:`cuda_device_count`
at parse time without initialising torch.
"""
from __future__ import annotations

import os
from pathlib import Path


def cuda_device_count() -> int:
    """Number of NVIDIA GPUs visible to this process, without importing torch.

    Honours ``CUDA_VISIBLE_DEVICES`` (an empty value or -1 hides every device).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def select_device(requested: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; an explicit ``cuda`` without CUDA is an error."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this machine")
    return device
