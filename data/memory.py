"""Will it fit? Sizes are checked against the machine's memory before anything is allocated.

An option such as a backbone's ``num_frames=100000`` (one clip: 56 GiB of float32 frames) or a
head's ``hidden=100000000000`` does not fail cleanly where the memory is taken: the allocator
raises deep inside torch or the process is killed. So every place that derives a big
allocation from a user's option asks :func:`check_fits` first, with the byte count the option
implies, and gets a one-line ValueError naming the option, its value, what it needs and what the
machine has. Parameter counts come from building the module on torch's ``meta`` device
(:func:`module_bytes`), which allocates nothing.
"""
from __future__ import annotations

import os
from typing import Callable

GIB = 1 << 30


def available_memory() -> int | None:
    """Bytes this machine can still give a process: Linux's MemAvailable, else the physical
    memory (os.sysconf), else None when nothing says (then nothing is refused)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def describe_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def check_fits(nbytes: float, what: str, limit: int | None = None) -> None:
    """Refuse ``what`` (e.g. "backbone option timesformer.num_frames=100000: one batch of input")
    when it needs more than ``limit`` bytes (default: :func:`available_memory`)."""
    limit = available_memory() if limit is None else limit
    if limit is not None and nbytes > limit:
        raise ValueError(f"{what} would take {describe_bytes(nbytes)}, more than the {describe_bytes(limit)} of "
                         f"memory this machine has available")


def module_bytes(make: Callable, *args, **kwargs) -> int:
    """Bytes of the parameters and buffers of ``make(*args, **kwargs)``, built on the meta device
    (no memory taken, no random numbers drawn)."""
    import torch

    with torch.device("meta"):
        module = make(*args, **kwargs)
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
