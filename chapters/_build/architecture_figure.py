"""Draw chapters/figures/qwen3_architecture.png: the Qwen3 decoder as boxes and arrows."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

COLORS = {"io": "#eeeeee", "embed": "#fde2b8", "norm": "#d6ecd2", "attn": "#cfe0f7", "mlp": "#f7d4d4",
          "add": "#ffffff", "head": "#fde2b8", "layer": "#fafafa"}


def box(ax, x, y, w, h, text, kind, fontsize=9, weight="normal"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=COLORS[kind], edgecolor="#333333", linewidth=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def arrow(ax, start, end, style="-|>", color="#333333", connection="arc3", lw=1.2):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color,
                                 linewidth=lw, connectionstyle=connection, shrinkA=0, shrinkB=0))


def add_node(ax, x, y):
    ax.add_patch(plt.Circle((x, y), 0.22, facecolor="white", edgecolor="#333333", linewidth=1.0, zorder=3))
    ax.text(x, y, "+", ha="center", va="center", fontsize=12, zorder=4)


def draw(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.2, 11.5))
    ax.set_xlim(0, 12)
    ax.set_ylim(-0.6, 20.6)
    ax.axis("off")
    cx, w = 5.0, 5.6

    box(ax, cx, 20.0, w, 0.6, "token ids  [T]   and   positions  [T]", "io")
    box(ax, cx, 18.9, w, 0.75, "Embedding  embed_tokens  [V, H]\n(row lookup: only T rows are read)", "embed")
    arrow(ax, (cx, 19.7), (cx, 19.28))

    # the repeated decoder layer
    ax.add_patch(FancyBboxPatch((0.6, 3.7), 8.8, 14.2, boxstyle="round,pad=0.05,rounding_size=0.3",
                                facecolor=COLORS["layer"], edgecolor="#555555", linewidth=1.4, linestyle="--"))
    ax.text(9.7, 17.6, "× N decoder layers\n(28 for 0.6B, 36 for 8B,\n64 for 32B)", ha="left", va="top",
            fontsize=9.5, style="italic")
    arrow(ax, (cx, 18.52), (cx, 17.45))
    box(ax, cx, 17.05, w, 0.6, "RMSNorm  (input_layernorm)", "norm")

    # attention block, expanded
    ax.add_patch(FancyBboxPatch((1.3, 10.65), 7.4, 5.75, boxstyle="round,pad=0.03,rounding_size=0.2",
                                facecolor="#eef4fd", edgecolor="#3b6fb6", linewidth=1.2))
    arrow(ax, (cx, 16.75), (cx, 16.05))
    ax.text(1.45, 16.25, "self-attention", fontsize=9, weight="bold", color="#3b6fb6", va="top")
    box(ax, cx, 15.75, 4.6, 0.6, "qkv_proj  [H → (Hq + 2·Hkv)·D]  (fused q|k|v)", "attn", fontsize=8.5)
    lanes = {"q": 3.0, "k": 5.0, "v": 7.0}
    for name, x in lanes.items():
        arrow(ax, (cx, 15.45), (x, 14.85))
    box(ax, lanes["q"], 14.5, 1.7, 0.6, "q  [T, Hq, D]", "attn", fontsize=8.5)
    box(ax, lanes["k"], 14.5, 1.7, 0.6, "k  [T, Hkv, D]", "attn", fontsize=8.5)
    box(ax, lanes["v"], 14.5, 1.7, 0.6, "v  [T, Hkv, D]", "attn", fontsize=8.5)
    for name in ("q", "k"):
        x = lanes[name]
        arrow(ax, (x, 14.2), (x, 13.75))
        box(ax, x, 13.45, 1.7, 0.55, f"{name}_norm\n(RMSNorm over D)", "norm", fontsize=7.5)
        arrow(ax, (x, 13.17), (x, 12.78))
    box(ax, 4.0, 12.5, 3.7, 0.55, "RoPE: rotate q, k by position", "attn", fontsize=8.5)
    arrow(ax, (lanes["v"], 14.2), (lanes["v"], 12.05))
    arrow(ax, (4.0, 12.22), (4.6, 12.05))
    box(ax, cx, 11.72, 6.6, 0.62, "GQA causal attention  softmax(q·kᵀ/√D + mask)·v\n"
        "Hq query heads share Hkv K/V heads; K, V are written to the KV cache", "attn", fontsize=8)
    arrow(ax, (cx, 11.4), (cx, 11.2))
    box(ax, cx, 10.95, 3.6, 0.45, "o_proj  [Hq·D → H]", "attn", fontsize=8.5)

    add_node(ax, cx, 10.05)
    arrow(ax, (cx, 10.72), (cx, 10.27))
    arrow(ax, (cx, 10.05 - 0.22), (cx, 9.45))
    box(ax, cx, 9.15, w, 0.6, "RMSNorm  (post_attention_layernorm)", "norm")

    ax.add_patch(FancyBboxPatch((1.3, 5.25), 7.4, 3.25, boxstyle="round,pad=0.03,rounding_size=0.2",
                                facecolor="#fdf0f0", edgecolor="#b63b3b", linewidth=1.2))
    arrow(ax, (cx, 8.85), (cx, 8.03))
    ax.text(1.45, 8.4, "SwiGLU MLP", fontsize=9, weight="bold", color="#b63b3b", va="top")
    box(ax, cx, 7.75, 4.6, 0.55, "gate_up_proj  [H → 2·I]  (fused gate|up)", "mlp", fontsize=8.5)
    arrow(ax, (cx, 7.47), (cx, 7.1))
    box(ax, cx, 6.8, 4.6, 0.55, "silu(gate) · up   [T, I]", "mlp", fontsize=8.5)
    arrow(ax, (cx, 6.52), (cx, 6.15))
    box(ax, cx, 5.85, 4.6, 0.55, "down_proj  [I → H]", "mlp", fontsize=8.5)

    add_node(ax, cx, 4.6)
    arrow(ax, (cx, 5.57), (cx, 4.82))

    # residual stream on the left
    rx = 0.95
    ax.plot([cx, rx, rx], [17.72, 17.72, 10.05], color="#777777", lw=1.3)
    arrow(ax, (rx, 10.05), (cx - 0.22, 10.05), color="#777777")
    ax.plot([cx, rx, rx], [9.6, 9.6, 4.6], color="#777777", lw=1.3)
    arrow(ax, (rx, 4.6), (cx - 0.22, 4.6), color="#777777")
    ax.text(rx + 0.1, 14.0, "residual", rotation=90, fontsize=8, color="#555555", va="center")
    ax.text(rx + 0.1, 7.1, "residual", rotation=90, fontsize=8, color="#555555", va="center")

    arrow(ax, (cx, 4.38), (cx, 3.15))
    box(ax, cx, 2.8, w, 0.6, "final RMSNorm  (model.norm)", "norm")
    arrow(ax, (cx, 2.5), (cx, 2.05))
    box(ax, cx, 1.65, w, 0.75, "LM head  [H → V]\n(tied: reuses embed_tokens for 0.6B, 1.7B, 4B)", "head")
    arrow(ax, (cx, 1.27), (cx, 0.75))
    box(ax, cx, 0.4, w, 0.6, "logits  [T, V]  → next token", "io")

    notes = ("H  hidden size (1024 … 5120)\nI  MLP size (3072 … 25600)\nV  vocabulary (151,936)\n"
             "D  head dim (128)\nHq query heads (16 … 64)\nHkv K/V heads (8)\nT  tokens in the step")
    ax.text(9.9, 8.0, notes, fontsize=8.5, va="center", family="monospace",
            bbox=dict(boxstyle="round", facecolor="white", edgecolor="#999999"))
    ax.set_title("Qwen3 dense decoder (as mili builds it)", fontsize=12, weight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(__file__).resolve().parents[1] / "figures" / "qwen3_architecture.png")
