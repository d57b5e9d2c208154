"""The tensor-parallel runs of `benchmarks/record_tp.sh`, side by side: one JSON and one plot.

Reads the reports `mili bench latency|throughput --json` wrote into a folder as
`tp-latency-*.json` and `tp-throughput-*.json`, and writes `tp-summary-CARD.json` and
`tp-CARD.png` there. For each model measured at more than one size, the speed-up of batch-1
decode over TP=1 (or the smallest size measured) is set against the ideal one, the ratio of
the groups' weight-read floors. A size measured more than once (the script's rounds, each run a
new group of processes, whose times differ by a few percent) counts with the mean of its runs.

    python -m mili.bench.tensor_parallel_summary OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_TP2_OVER_TP1 = 0.6  # issue 16: batch-1 decode at 8B shapes with TP=2 in at most 0.6x the TP=1 time


def latency_row(report: dict) -> dict:
    return {"model": report["model"], "tensor_parallel_size": report.get("tensor_parallel_size", 1),
            "tpot_ms": report["mili"]["tpot_ms"], "ttft_ms": report["mili"]["ttft_ms"],
            "floor_ms_per_token": report["floor_ms_per_token"], "times_floor": report["mili"]["times_floor"],
            "cuda_graphs": report["cuda_graphs"], "prompt_len": report["prompt_len"],
            "new_tokens": report["new_tokens"]}


def latency_rows(reports: list[dict]) -> list[dict]:
    """One row per model and size, in that order: a size's only run, or the mean of its runs
    (time per token, time to the first token and floor; `runs_tpot_ms` lists them)."""
    runs_of = {}
    for row in map(latency_row, reports):
        runs_of.setdefault((row["model"], row["tensor_parallel_size"]), []).append(row)
    rows = []
    for _, runs in sorted(runs_of.items()):
        means = {key: sum(run[key] for run in runs) / len(runs) for key in ("tpot_ms", "ttft_ms", "floor_ms_per_token")}
        rows.append({**runs[0], **means, "times_floor": means["tpot_ms"] / means["floor_ms_per_token"],
                     "runs_tpot_ms": [run["tpot_ms"] for run in runs]})
    return rows


def throughput_row(report: dict) -> dict:
    mili, floor_s = report["mili"], report["floor_seconds"]
    return {"model": report["model"], "tensor_parallel_size": report.get("tensor_parallel_size", 1),
            "tokens_per_s": mili["tokens_per_s"], "seconds": mili["seconds"], "floor_seconds": floor_s,
            "floor_tokens_per_s": mili["output_tokens"] / floor_s,
            "fraction_of_bandwidth_floor": mili["fraction_of_bandwidth_floor"], "workload": report["workload"],
            "cuda_graphs": report["cuda_graphs"]}


def speedups(latency: list[dict]) -> dict:
    """Per model: each size's decode time over the smallest size's, measured and ideal (floors)."""
    result = {}
    for model in sorted({row["model"] for row in latency}):
        rows = sorted((r for r in latency if r["model"] == model), key=lambda r: r["tensor_parallel_size"])
        base = rows[0]
        for row in rows[1:]:
            key = f"tp{row['tensor_parallel_size']}_over_tp{base['tensor_parallel_size']}"
            entry = {"time_ratio": row["tpot_ms"] / base["tpot_ms"],
                     "ideal_time_ratio": row["floor_ms_per_token"] / base["floor_ms_per_token"]}
            if key == "tp2_over_tp1":
                entry["target_at_most"] = TARGET_TP2_OVER_TP1
                entry["target_met"] = entry["time_ratio"] <= TARGET_TP2_OVER_TP1
            result.setdefault(model, {})[key] = entry
    return result


def summarize(folder: Path) -> dict:
    latency_reports = [json.loads(p.read_text()) for p in sorted(folder.glob("tp-latency-*.json"))]
    throughput_reports = [json.loads(p.read_text()) for p in sorted(folder.glob("tp-throughput-*.json"))]
    reports = latency_reports + throughput_reports
    if not reports:
        raise FileNotFoundError(f"no tp-latency-*.json or tp-throughput-*.json in {folder}")
    latency = latency_rows(latency_reports)
    throughput = sorted(map(throughput_row, throughput_reports), key=lambda r: (r["model"], r["tensor_parallel_size"]))
    return {"environment": reports[0]["environment"], "latency": latency, "throughput": throughput,
            "decode_speedup": speedups(latency)}


def plot_summary(summary: dict, path) -> None:
    from mili.bench.plots import labelled_bars, pyplot, save

    panels = [(name, rows) for name, rows in (("latency", summary["latency"]), ("throughput", summary["throughput"]))
              if rows]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        labels = [f"{Path(r['model']).name}\nTP={r['tensor_parallel_size']}" for r in rows]
        if name == "latency":
            values, floors = [r["tpot_ms"] for r in rows], [r["floor_ms_per_token"] for r in rows]
            ax.set_ylabel("ms per output token, batch 1")
            text = "{:.2f}"
        else:
            values, floors = [r["tokens_per_s"] for r in rows], [r["floor_tokens_per_s"] for r in rows]
            ax.set_ylabel("output tokens / s")
            text = "{:.0f}"
        labelled_bars(ax, labels, values, text, color="C0", label="mili")
        ax.scatter(range(len(rows)), floors, marker="_", s=900, color="k", zorder=3,
                   label="group's weight-read floor" if name == "latency" else "bound from the group's floor")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=7, markerscale=0.3)
    fig.suptitle(f"Tensor parallelism on {summary['environment']['device']}", fontsize=10)
    save(fig, path)


def card_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'."""
    words = device_name.split()
    return (words[1] if len(words) > 1 and words[0] == "NVIDIA" else words[0]).lower()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mili.bench.tensor_parallel_summary OUT", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    summary = summarize(folder)
    card = card_slug(summary["environment"]["device"])
    (folder / f"tp-summary-{card}.json").write_text(json.dumps(summary, indent=1))
    plot_summary(summary, folder / f"tp-{card}.png")
    for row in summary["latency"]:
        print(f"latency    {row['model']:<10} TP={row['tensor_parallel_size']}  {row['tpot_ms']:8.3f} ms/token  "
              f"floor {row['floor_ms_per_token']:.3f}  ({row['times_floor']:.2f}x)")
    for row in summary["throughput"]:
        print(f"throughput {row['model']:<10} TP={row['tensor_parallel_size']}  {row['tokens_per_s']:8.0f} tok/s  "
              f"{row['fraction_of_bandwidth_floor']:.1%} of the floor's bound")
    print(json.dumps(summary["decode_speedup"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
