"""Seeds, devices and precision of a fine-tuning run: :func:`set_seed`, :func:`resolve_precision` and the
autocast context the loop and inference run under (:mod:`tokenuni.finetune.train`)."""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def set_seed(seed: int) -> None:
    """Seed python's ``random``, numpy's global state and torch (CPU and every CUDA device).

    Call it before building the model too: the classification head is initialised at construction.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_precision(precision: str, device) -> str:
    """``fp32`` on the CPU whatever was asked; on CUDA ``auto`` → ``bf16`` if supported, else ``fp16``."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if torch.device(device).type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def _device(device):
    """A torch device from "auto", "cpu", "cuda[:i]" (checked to exist) or a torch device."""
    import torch

    from tokenuni.devices import select_device

    return select_device(device) if isinstance(device, str) else torch.device(device)


def _autocast(precision: str, device):
    import torch

    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type,
                          dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
