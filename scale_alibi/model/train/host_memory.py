"""Host allocator tuning for CPU training: freed buffers kept in the heap (see scale_alibi.contract.host_memory)."""

from __future__ import annotations

from scale_alibi.contract.host_memory import retain_freed_memory

__all__ = ["retain_freed_memory"]
