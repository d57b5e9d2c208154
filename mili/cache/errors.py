"""The one error the KV-cache structures raise when memory runs out (chapter 05).

The engine's scheduler catches it (or asks `can_allocate` / `can_append` first) and preempts a
sequence; every other misuse (double free, unknown ids, bad lengths) is a plain ValueError.
"""


class OutOfBlocksError(RuntimeError):
    """No free KV block is left, even after evicting everything the prefix cache may evict."""
