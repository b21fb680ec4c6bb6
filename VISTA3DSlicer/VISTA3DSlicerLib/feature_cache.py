"""A memory-bounded, least-recently-used store of per-window network features.

An interactive session asks for the same 128³ windows again and again: every click
recomputes the windows of all the structure's clicks (as the reference does), and undoing,
redoing or moving a click revisits windows already seen. The image encoder is ~90% of a
window's cost, so its output is kept here, and a window already seen runs only the heads.

Entries stay on the compute device while the device has room for them (the GPU case),
otherwise they are parked in host memory and copied back when used. Either way the total
held is bounded by ``budget_bytes``; the least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable, Optional

from .memory import GIB, gpu_memory_available, host_memory_total

if TYPE_CHECKING:
    import torch

#: Device memory left free for the network's own activations when deciding where to keep an entry.
DEVICE_RESERVE_BYTES = 2 * GIB


def default_budget(device: "torch.device") -> int:
    """A cache size that leaves the machine usable: 40% of free GPU memory, or 25% of RAM, at most 8 GiB."""
    if device.type == "cuda":
        return int(min(8 * GIB, 0.4 * gpu_memory_available(device)))
    return int(min(8 * GIB, 0.25 * host_memory_total()))


def tensor_bytes(tensor: "torch.Tensor") -> int:
    return tensor.element_size() * tensor.nelement()


class FeatureCache:
    """Tensors by key, at most ``budget_bytes`` in all, least recently used evicted first."""

    def __init__(self, budget_bytes: int, device: "torch.device"):
        if budget_bytes < 0:
            raise ValueError("the cache budget must be >= 0 bytes")
        self.budget_bytes = int(budget_bytes)
        self.device = device
        self._entries: OrderedDict[Hashable, "torch.Tensor"] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(tensor_bytes(t) for t in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Optional["torch.Tensor"]:
        """The tensor stored under ``key``, on the compute device, or None (counted as a miss)."""
        tensor = self._entries.get(key)
        if tensor is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return tensor.to(self.device, non_blocking=True)

    def put(self, key: Hashable, tensor: "torch.Tensor") -> None:
        """Keep ``tensor`` (detached) under ``key``, evicting the least recently used entries to fit.

        A tensor larger than the whole budget is not kept: the next request computes it again.
        """
        size = tensor_bytes(tensor)
        self._entries.pop(key, None)
        if size > self.budget_bytes:
            return
        while self._entries and self.nbytes + size > self.budget_bytes:
            self._entries.popitem(last=False)
        self._entries[key] = self._placed(tensor.detach())

    def clear(self) -> None:
        """Forget everything (the image changed, or the session ended)."""
        self._entries.clear()

    def _placed(self, tensor: "torch.Tensor") -> "torch.Tensor":
        import torch

        if tensor.device.type != "cuda":
            return tensor
        free, _ = torch.cuda.mem_get_info(tensor.device)
        if free - tensor_bytes(tensor) >= DEVICE_RESERVE_BYTES:
            return tensor
        return tensor.to("cpu")
