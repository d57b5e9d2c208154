"""The radix tree's node and the answer of a prefix look-up (chapter 05, plumbing for 5.3).

A `RadixNode` is one edge of the tree with the node it leads to: `tokens` is the edge's label
(a whole number of blocks of token ids) and `block_ids` the KV blocks that hold those tokens'
keys and values, one block per `block_size` tokens. `children` is keyed by the first block of
each child's label, so following an edge costs one dictionary look-up per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)  # nodes compare (and hash) by identity
class RadixNode:
    tokens: tuple[int, ...] = ()
    block_ids: list[int] = field(default_factory=list)
    parent: RadixNode | None = None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock_ref: int = 0  # running sequences that use this node (or a descendant): never evicted while > 0
    last_access: int = 0  # the cache's logical clock when a look-up or insert last passed through
    created: int = 0  # the clock when the node's blocks were inserted

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def path_tokens(self) -> tuple[int, ...]:
        """Every token from the root down to the end of this node's label."""
        parts, node = [], self
        while node is not None:
            parts.append(node.tokens)
            node = node.parent
        return tuple(t for part in reversed(parts) for t in part)

    def __repr__(self) -> str:
        return f"RadixNode(tokens={len(self.tokens)}, blocks={self.block_ids}, lock_ref={self.lock_ref})"


@dataclass
class PrefixMatch:
    """The longest cached prefix of a query, in whole blocks.

    block_ids: the blocks holding the prefix's K/V, in order.
    num_tokens: the prefix's length in tokens, len(block_ids) * block_size.
    node: the deepest node of the match (the root when nothing matched): pass it to
    `RadixCache.pin` while a sequence uses the blocks and to `unpin` when it lets go.
    """

    block_ids: list[int]
    num_tokens: int
    node: object
