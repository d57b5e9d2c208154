"""The `mili` command: status, grade, generate, eval, serve, bench.

Every command turns bad input into one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from pathlib import Path

from mili.argtypes import device, non_negative_float, positive_int, probability, seed, triton_problem
from mili.distributed.failure import TensorParallelFailure
from mili.exercise import CHAPTERS, repo_root

DEFAULT_MODEL = repo_root() / "data" / "mili-tiny-qwen3"
BENCHMARKS = ("kernels", "attention", "cache", "throughput", "latency", "ledger", "serve")
# what the engine calls on a CPU (the torch backend): checked up front where references are missing
ENGINE_EXERCISES = ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "3.1", "3.2", "3.3", "3.4", "3.5", "5.1", "5.2",
                    "5.3")
NEEDS = {"generate": ENGINE_EXERCISES, "eval": ENGINE_EXERCISES, "serve": ENGINE_EXERCISES + ("6.1", "6.2")}


class UsageError(Exception):
    """Bad arguments: reported as one line, exit status 2."""


class GenerationError(Exception):
    """The engine failed on the request: reported as one line, exit status 1."""


# ---------------------------------------------------------------- status / grade

def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_status(args) -> int:
    from mili.exercise import IMPORT_ERRORS, REGISTRY, current_mode, discover, references_available

    mode = current_mode()
    exercises = discover(strict=False)
    broken = {ex.broken for ex in REGISTRY.values() if ex.broken}
    failed: dict[str, list[str]] = {}
    for module, error in IMPORT_ERRORS.items():
        failed.setdefault(error, []).append(module)
    for error, modules in failed.items():
        if error not in broken:
            print(f"warning: {', '.join(modules)} do{'es' if len(modules) == 1 else ''} not import: {error}",
                  file=sys.stderr)
        elif len(modules) > 1 or not any(t.module == modules[0] for ex in REGISTRY.values() for t in ex.targets):
            print(f"warning: {len(modules)} modules that import a broken file do not import either "
                  f"({', '.join(modules)})", file=sys.stderr)
    rule = {"auto": "an exercise runs your code once all its parts are written, the reference until then",
            "student": "only your code runs (what grading uses)",
            "reference": "only the reference solutions run"}[mode]
    print(f"MILI_IMPL={mode}: {rule}  ({len(exercises)} exercises)")
    if not references_available():
        print("this copy of the course has no reference solutions: an unwritten exercise runs its stub")
    runs = {"student": "yours", "reference": "reference", "stub": "stub"}
    print(f"\n{'id':<5} {'title':<48} {'runs':<10} {'file':<33} your code")
    chapter = None
    for ex in exercises.values():
        if ex.chapter != chapter:
            chapter = ex.chapter
            print(f"-- {chapter} {CHAPTERS.get(chapter, '')}")
        where = ", ".join(sorted({t.module.replace(".", "/") + ".py" for t in ex.targets}))
        print(f"{ex.id:<5} {_cut(ex.title, 48):<48} {runs[ex.implemented_by]:<10} {where:<33} "
              f"{ex.describe_progress()}")
    return 0


def cmd_grade(args) -> int:
    from mili.grading import grade, grade_submission, grade_submissions

    if args.timeout < 0:
        raise UsageError("--timeout must be >= 0 seconds (0: no limit)")
    if args.submission and args.submissions:
        raise UsageError("give --submission DIR (one student) or --submissions DIR (a folder per student)")
    if args.submissions:
        if not (args.csv or args.report):
            raise UsageError("--submissions needs --csv FILE and/or --report FILE for the scores")
        if args.format != "mili":
            raise UsageError("--format gradescope grades one student: use --submission DIR")
        grade_submissions(args.submissions, selector=args.target, csv_path=args.csv, report=args.report,
                          timeout=args.timeout, extra_tests=args.extra_tests)
        return 0
    if args.csv:
        raise UsageError("--csv goes with --submissions DIR (one row per student)")
    report = args.report or ("results.json" if args.format == "gradescope" else None)
    options = {"report": report, "timeout": args.timeout, "verbose": args.verbose, "extra_tests": args.extra_tests,
               "report_format": args.format, "quiet": False}
    if args.submission:
        summary = grade_submission(args.submission, selector=args.target, **options)
    else:
        summary = grade(args.target, **options)
    return 0 if summary["score"] == summary["max_score"] else 1


# ---------------------------------------------------------------- generate

def _resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    if not DEFAULT_MODEL.is_dir():
        raise UsageError(f"the default model {DEFAULT_MODEL} is not here; pass --model PATH (a Hugging Face "
                         "Qwen3 folder) or a preset such as --model Qwen3-0.6B for random weights")
    return str(DEFAULT_MODEL)


def _load_tokenizer(model: str):
    from mili.tokenizer import Tokenizer

    folder = Path(model).expanduser()
    if folder.is_dir():
        return Tokenizer.from_pretrained(folder)
    from mili.qwen3_tokenizer import qwen3_tokenizer  # presets use the real Qwen3 vocabulary

    return qwen3_tokenizer()


def _pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_generate(args) -> int:
    import torch

    from mili.engine import LLM, SamplingParams

    if args.prompt is None:
        if sys.stdin.isatty():
            raise UsageError("give a prompt: mili generate \"What is 17 + 25?\"")
        args.prompt = sys.stdin.read().rstrip("\r\n")  # `echo ... |` ends the line; the prompt does not
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    if (problem := triton_problem(args.backend, args.device)) is not None:
        raise UsageError(problem)
    model_name = _resolve_model(args.model)
    tokenizer = _load_tokenizer(model_name)
    chat = tokenizer.has_chat_template if args.chat is None else args.chat
    if chat:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}],
                                                   add_generation_prompt=True, tokenize=True)
    else:
        prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise UsageError("the prompt is empty")
    llm = LLM(model_name, tokenizer=tokenizer, dtype=args.dtype, device=_pick_device(args.device),
              backend=args.backend, seed=args.seed or 0,
              num_kv_blocks=(len(prompt_ids) + args.max_tokens) // 16 + 2,
              tensor_parallel_size=args.tensor_parallel_size)
    context = llm.model.config.max_position_embeddings
    if len(prompt_ids) + args.max_tokens > context:
        raise UsageError(f"the prompt ({len(prompt_ids)} tokens) plus --max-tokens ({args.max_tokens}) exceeds the "
                         f"model's context window of {context} tokens")
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or -1,
                            seed=args.seed, max_tokens=args.max_tokens)
    engine = llm.engine
    engine.add_request("mili-generate", {"prompt_token_ids": prompt_ids}, params)
    shown, completion, error = "", None, None
    # the engine logs a failed request with its traceback; here the failure is reported in one line below
    with torch.inference_mode(), _quiet_logger("mili.engine"):
        while engine.has_unfinished_requests():
            for output in engine.step():
                completion, error = output.outputs[0], output.error
                if not args.json and len(completion.text) > len(shown):
                    sys.stdout.write(completion.text[len(shown):])
                    sys.stdout.flush()
                    shown = completion.text
    if error is not None:
        if shown:
            sys.stdout.write("\n")
        raise GenerationError(f"the generation failed: {error}")
    if args.json:
        print(json.dumps({"prompt_token_ids": prompt_ids, "token_ids": completion.token_ids,
                          "text": completion.text, "finish_reason": completion.finish_reason}))
    else:
        sys.stdout.write("\n")
    return 0


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _require_exercises(command: str) -> None:
    """In a copy without the engine's references (a student release), name every missing exercise at once."""
    from mili.exercise import require

    packages = ("model", "engine", "cache") + (("server",) if command == "serve" else ())
    if all((repo_root() / "solutions" / package).is_dir() for package in packages):
        return  # the references stand in for anything unwritten
    require(NEEDS[command], f"mili {command}")


# ---------------------------------------------------------------- delegated commands

def _delegate(module: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            raise UsageError(f"{module} is not part of this checkout yet") from None
        raise
    return int(mod.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mili", description="MILI: a Qwen3 inference engine you build yourself.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("status", help="list every exercise and who implements it now").set_defaults(func=cmd_status)

    p = sub.add_parser("grade", help="grade your code: all, a chapter (01) or an exercise (2.1)")
    p.add_argument("target", nargs="?", default=None, help="chapter (01..06) or exercise id (e.g. 2.1)")
    p.add_argument("--report", metavar="FILE", help="write scores as JSON to FILE and JUnit XML beside it")
    p.add_argument("--format", choices=["mili", "gradescope"], default="mili",
                   help="the report's layout: mili's JSON + JUnit XML, or Gradescope's results.json "
                        "(written to results.json unless --report says where)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds each test may run before it fails as a hang (default 60; 0: no limit)")
    p.add_argument("--verbose", "-v", action="store_true", help="show every failing test, not the first three")
    p.add_argument("--extra-tests", metavar="DIR", help="also run the graders in DIR (an instructor's hidden tests)")
    p.add_argument("--submission", metavar="DIR", help="grade one student's copy (only its exercise files count)")
    p.add_argument("--submissions", metavar="DIR", help="grade every student's copy in DIR (one folder each)")
    p.add_argument("--csv", metavar="FILE", help="with --submissions: one row of scores per student")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("release", help="write a copy of the course for students (no reference solutions)",
                       add_help=False)
    p.set_defaults(delegate="mili.release")

    p = sub.add_parser("doctor", help="check this machine for the course and say what to fix", add_help=False)
    p.set_defaults(delegate="mili.doctor")

    p = sub.add_parser("generate", help="generate text from a prompt, streamed to the terminal")
    p.add_argument("prompt", nargs="?", help="the prompt (read from stdin if omitted)")
    p.add_argument("--model", default=None, help=f"model folder or preset (default: {DEFAULT_MODEL.name})")
    p.add_argument("--max-tokens", type=positive_int, default=128, help="the most tokens to generate (default 128)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling: keep this much probability "
                   "mass (default 1: all)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: no filter)")
    p.add_argument("--seed", type=seed, default=None, help="makes sampling reproducible (a 64-bit integer)")
    p.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template (default when the tokenizer has one)")
    p.add_argument("--no-chat", dest="chat", action="store_false", help="send the prompt as it is")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--device", type=device, default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations (default: bfloat16 on CUDA, float32 on a CPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                   help="the ops: plain PyTorch or Triton kernels (default: triton on CUDA, torch on a CPU)")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, metavar="N",
                   help="split the model over N processes: GPUs device, device+1, ... (NCCL) or CPU ranks (gloo)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="accuracy of a model on the tiny model's skills", add_help=False)
    p.set_defaults(delegate="mili.evaluation")

    p = sub.add_parser("serve", help="an OpenAI-compatible server (mili serve --help)", add_help=False)
    p.set_defaults(delegate="mili.server.cli")

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS))
    p.add_argument("name", choices=BENCHMARKS)
    p.set_defaults(delegate_bench=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        if argv and argv[0] in NEEDS and not {"-h", "--help"} & set(argv):
            _require_exercises(argv[0])
        if argv and argv[0] == "eval":
            return _delegate("mili.evaluation", argv[1:])
        if argv and argv[0] == "serve":
            return _delegate("mili.server.cli", argv[1:])
        if argv and argv[0] in ("release", "doctor"):
            return _delegate(f"mili.{argv[0]}", argv[1:])
        if argv and argv[0] == "bench" and len(argv) > 1 and argv[1] in BENCHMARKS:
            return _delegate(f"mili.bench.{argv[1]}", argv[2:])
        args = parser.parse_args(argv)
        return args.func(args)
    except UsageError as err:
        print(f"mili: error: {err}", file=sys.stderr)
        return 2
    except GenerationError as err:
        print(f"mili: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, ImportError, SyntaxError) as err:
        # str(KeyError('x')) is "'x'": its message is the argument itself
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        message = str(text).strip().splitlines()
        print(f"mili: error: {message[0] if message else type(err).__name__}", file=sys.stderr)
        for line in message[1:6]:
            print(f"  {line}", file=sys.stderr)
        return 2
    except TensorParallelFailure as err:
        print(f"mili: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
