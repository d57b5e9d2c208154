"""`mili eval`: ask a model fresh questions from `mili.tasks` and score its greedy answers exactly.

    mili eval [--model PATH] [--n 200] [--seed 1] [--backend hf|mili|both] [--json]

`hf` answers with transformers (AutoTokenizer + AutoModelForCausalLM + apply_chat_template), which
proves the folder loads in the ecosystem; `mili` with mili's own tokenizer and model (float32, CPU);
`both` runs the two and also counts the questions where their answers differ. `--json` also lists
every reply, in `tasks.eval_suite` order, so runs can be compared later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from mili import tasks

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "mili-tiny-qwen3"
MAX_NEW_TOKENS = 64


def hf_answers(model_path: Path, questions: list[tasks.Question], device: str) -> list[str]:
    """Greedy replies from transformers, batched by prompt length so no row is padded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    eos = model.generation_config.eos_token_id
    prompts = [tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False) for q in questions]
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(ids):
        by_length[len(row)].append(i)
    replies = [""] * len(questions)
    for group in by_length.values():
        for start in range(0, len(group), 64):
            chunk = group[start:start + 64]
            x = torch.tensor([ids[i] for i in chunk], device=device)
            with torch.no_grad():
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW_TOKENS,
                                     do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(chunk, out[:, x.shape[1]:].tolist()):
                replies[i] = tokenizer.decode(_until_eos(row, eos), skip_special_tokens=True)
    return replies


def mili_answers(model_path: Path, questions: list[tasks.Question], device: str) -> list[str]:
    """Greedy replies from mili's own tokenizer, model loader and generation loop (float32)."""
    import torch

    from mili.checkpoint import load_model
    from mili.generate import generate_tokens
    from mili.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(model_path)
    model = load_model(model_path, dtype=torch.float32, device=device, backend="torch")
    eos = list(tokenizer.eos_token_ids)
    replies = []
    for q in questions:
        prompt = tokenizer.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=False)
        new = list(generate_tokens(model, tokenizer.encode(prompt), MAX_NEW_TOKENS, eos))
        replies.append(tokenizer.decode(_until_eos(new, eos)))
    return replies


def _until_eos(ids: list[int], eos) -> list[int]:
    eos = {eos} if isinstance(eos, int) else set(eos)
    for i, token in enumerate(ids):
        if token in eos:
            return ids[:i]
    return ids


BACKENDS = {"hf": hf_answers, "mili": mili_answers}


def evaluate(model_path: Path, n: int, seed: int, backends: list[str], device: str = "cpu") -> dict:
    """Per-skill accuracy for each backend, plus (with two backends) the questions where they differ."""
    suite = tasks.eval_suite(n, seed)
    questions = [q for qs in suite.values() for q in qs]
    report: dict = {"model": str(model_path), "n": n, "seed": seed, "results": {}}
    replies = {}
    for backend in backends:
        t0 = time.time()
        replies[backend] = BACKENDS[backend](model_path, questions, device)
        scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        failures: dict[str, dict] = {}
        for q, reply in zip(questions, replies[backend]):
            ok = tasks.check(q, reply)
            scores[q.skill][0] += ok
            scores[q.skill][1] += 1
            if not ok and q.skill not in failures:
                failures[q.skill] = {"question": q.messages[-1]["content"], "expected": q.answer, "got": reply}
        report["results"][backend] = {
            "accuracy": {skill: right / total for skill, (right, total) in scores.items()},
            "seconds": round(time.time() - t0, 1), "first_failure": failures, "replies": replies[backend]}
    if len(backends) == 2:
        a, b = (replies[k] for k in backends)
        report["disagreements"] = [{"skill": q.skill, "question": q.messages[-1]["content"], backends[0]: x, backends[1]: y}
                                   for q, x, y in zip(questions, a, b) if x != y]
    return report


def compare_with(report: dict, saved: dict) -> list[dict]:
    """Questions where this report's replies differ from a saved `--json` report's (same seed, any n)."""
    if saved["seed"] != report["seed"]:
        raise ValueError(f"the saved report used seed {saved['seed']}, this one {report['seed']}")
    n = min(saved["n"], report["n"])
    suite = tasks.eval_suite(n, report["seed"])   # a prefix of both runs' questions, skill by skill
    diffs = []
    for backend, result in report["results"].items():
        for other, theirs in saved["results"].items():
            for k, (skill, questions) in enumerate(suite.items()):
                for i, q in enumerate(questions):
                    x, y = result["replies"][k * report["n"] + i], theirs["replies"][k * saved["n"] + i]
                    if x != y:
                        diffs.append({"skill": skill, "question": q.messages[-1]["content"], backend: x, "saved " + other: y})
    return diffs


def print_report(report: dict) -> None:
    backends = list(report["results"])
    print(f"{report['model']}  ·  {report['n']} questions per skill  ·  seed {report['seed']}")
    print(f"{'skill':<12}" + "".join(f"{b:>10}" for b in backends))
    for skill in report["results"][backends[0]]["accuracy"]:
        print(f"{skill:<12}" + "".join(f"{report['results'][b]['accuracy'][skill]:>10.1%}" for b in backends))
    for b in backends:
        result = report["results"][b]
        print(f"{b}: {result['seconds']} s")
        for skill, f in result["first_failure"].items():
            print(f"  {b} {skill} first miss: {f['question']!r} expected {f['expected']!r}, got {f['got']!r}")
    if "disagreements" in report:
        print(f"answers that differ between {' and '.join(backends)}: {len(report['disagreements'])}")
    if "differs_from_saved" in report:
        print(f"answers that differ from the saved report's: {len(report['differs_from_saved'])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mili eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a checkpoint folder (default: the tiny model)")
    parser.add_argument("--n", type=int, default=200, help="questions per skill (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="picks the questions (default 1)")
    parser.add_argument("--backend", choices=["hf", "mili", "both"], default="hf",
                        help="who answers: Hugging Face transformers, mili's model, or both (default hf)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--compare", type=Path, default=None,
                        help="a saved --json report (same seed): count the questions whose replies differ")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.model / "config.json").exists():
        parser.error(f"--model {args.model}: no config.json there (a Hugging Face checkpoint folder is expected)")
    backends = ["hf", "mili"] if args.backend == "both" else [args.backend]
    report = evaluate(args.model, args.n, args.seed, backends, args.device)
    if args.compare:
        report["differs_from_saved"] = compare_with(report, json.loads(args.compare.read_text()))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
