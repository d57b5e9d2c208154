"""Drawings for chapter 05: block tables over the block pool, and the radix tree (matplotlib)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from mili.cache.radix_node import RadixNode

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def draw_block_tables(manager, seq_ids: Sequence[Hashable], ax, *, title: str = "") -> None:
    """Each sequence's block table (logical block -> physical block) above the physical pool,
    each block coloured by the sequence holding it; blocks held by several holders are hatched."""
    from matplotlib.patches import Rectangle

    colour = {seq: PALETTE[i % len(PALETTE)] for i, seq in enumerate(seq_ids)}
    owners: dict[int, list] = {}
    for seq in seq_ids:
        for block in manager.block_table(seq):
            owners.setdefault(block, []).append(seq)
    rows = len(seq_ids)
    for row, seq in enumerate(seq_ids):
        y = rows - row + 1
        ax.text(-0.3, y + 0.4, f"seq {seq} ({manager.num_tokens(seq)} tok)", ha="right", va="center", fontsize=9)
        for logical, block in enumerate(manager.block_table(seq)):
            ax.add_patch(Rectangle((logical, y), 0.9, 0.8, color=colour[seq], alpha=0.85))
            ax.text(logical + 0.45, y + 0.4, str(block), ha="center", va="center", color="white", fontsize=8)
    ax.text(-0.3, 0.4, "physical blocks", ha="right", va="center", fontsize=9)
    for block in range(manager.num_blocks):
        holders = manager.allocator.ref_count(block)
        held_by = owners.get(block, [])
        face = colour[held_by[0]] if held_by else ("#BBBBBB" if holders else "white")
        ax.add_patch(Rectangle((block, 0), 0.9, 0.8, facecolor=face, edgecolor="black", linewidth=0.5,
                               hatch="///" if holders > 1 else None, alpha=0.85))
        ax.text(block + 0.45, -0.35, str(block), ha="center", va="center", fontsize=7)
        if holders > 1:
            ax.text(block + 0.45, 0.4, f"×{holders}", ha="center", va="center", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    width = max(manager.num_blocks, max((len(manager.block_table(s)) for s in seq_ids), default=0))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.8, rows + 2.2)
    ax.set_axis_off()
    ax.set_title(title or "block tables (top) over the physical block pool (bottom; ×n = n holders)", fontsize=10)


def _layout(node: RadixNode, depth: int, next_x: list[float], places: dict) -> float:
    """Leaves get consecutive x positions; a parent sits above the middle of its children."""
    children = sorted(node.children.values(), key=lambda c: c.tokens)
    if not children:
        x = next_x[0]
        next_x[0] += 1.0
    else:
        xs = [_layout(child, depth + 1, next_x, places) for child in children]
        x = (xs[0] + xs[-1]) / 2
    places[id(node)] = (x, -depth, node)
    return x


def draw_radix_tree(cache, ax, *, decode: Callable[[Sequence[int]], str] | None = None, title: str = "") -> None:
    """The tree as boxes: each edge's tokens block by block ('|' between blocks), its block ids
    and its lock_ref (pinned nodes in red)."""
    decode = decode or (lambda tokens: " ".join(map(str, tokens)))
    places: dict = {}
    _layout(cache.root, 0, [0.0], places)
    bs = cache.block_size
    for x, y, node in places.values():
        if node.parent is not None:
            px, py, _ = places[id(node.parent)]
            ax.plot([px, x], [py - 0.15, y + 0.15], color="#777777", linewidth=1, zorder=1)
        if node.is_root:
            label, colour = "root", "#EEEEEE"
        else:
            blocks = [decode(node.tokens[i : i + bs]) for i in range(0, len(node.tokens), bs)]
            label = " | ".join(blocks) + f"\nblocks {node.block_ids}" + (f"  lock {node.lock_ref}" if node.lock_ref else "")
            colour = "#F4C7C3" if node.lock_ref else "#D5E8D4"
        ax.text(x, y, label, ha="center", va="center", fontsize=8, zorder=2,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": colour, "edgecolor": "#555555"})
    xs = [p[0] for p in places.values()]
    ys = [p[1] for p in places.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.6, 0.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
