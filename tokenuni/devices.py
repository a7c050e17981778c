"""Device choice: CUDA when present (and allowed), else the CPU.

Counting the GPUs without initialising CUDA (for the Snakefile and the GPU leases) is
:func:`tokenuni.gpu_lease.gpu_devices`.
"""
from __future__ import annotations

from tokenuni.errors import TokenuniError


class DeviceError(TokenuniError, RuntimeError):
    """A device was asked for that this machine does not have."""


def select_device(requested: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; an explicit ``cuda`` without CUDA is an error."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} requested but CUDA is not available on this machine; "
                          "use --device auto or cpu")
    return device
