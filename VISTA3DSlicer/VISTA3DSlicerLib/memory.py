"""Memory free on the host and on a GPU: what the engine and the supervoxels size their work to.

Slicer imports the library at start-up, so nothing here imports torch at module level.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

GIB = 2**30


def host_memory_available() -> Optional[int]:
    """Bytes of RAM free for a new allocation, or None where this system does not say."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return None  # Windows or macOS without psutil


def host_memory_total() -> int:
    """Bytes of RAM this machine has (a modest workstation's 16 GiB where the system does not say)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().total)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows without psutil
        return 16 * GIB


def format_bytes(count: int) -> str:
    """``12.3 GB`` or ``456 MB``, for messages."""
    return f"{count / GIB:.1f} GB" if count >= GIB else f"{count / 2**20:.0f} MB"


def gpu_memory_available(device: "torch.device") -> int:
    """Bytes free on the CUDA ``device`` for this process: the driver's free memory and the blocks
    PyTorch's caching allocator holds unused (the driver counts those as used)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + cached
