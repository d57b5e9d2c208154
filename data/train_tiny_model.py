"""Train mili-tiny-qwen3 with transformers' Qwen3ForCausalLM (run through build_tiny_model.py train).

Each step is two forward/backward passes, one per sub-batch, summed into one AdamW step:
`--short-batch` conversations of the short skills, and `--recall-batch` recall conversations
whose tables all have one size (drawn per step), so padding stays small. Batches are made by
DataLoader workers from the seed alone (`train/{seed}/{step}`), fresh every step.

Every `--eval-every` steps it prints teacher-forced exact-match accuracy per skill on questions
from `mili.tasks.eval_suite` (greedy decoding returns the answer iff every answer token is the
argmax given the previous ones), and saves the checkpoint (bf16 safetensors) to `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from build_tiny_model import MODEL_DIR, RECALL_MIXES, chat_renderer, sample
from tokenizers import Tokenizer
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from mili import tasks

IGNORE = -100
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # workers fork after the main process used it


def model_config(vocab: int, tiny: bool, eos: list[int]) -> Qwen3Config:
    hidden, inter, layers = (64, 128, 2) if tiny else (256, 768, 8)
    return Qwen3Config(vocab_size=-(-vocab // 128) * 128, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                       max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       bos_token_id=eos[1], eos_token_id=eos[0], pad_token_id=eos[1], max_window_layers=layers,
                       dtype="bfloat16")


def rows(tok: Tokenizer, convs: list[list[tuple[str, bool]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (IGNORE outside the answers), right-padded to the longest row."""
    encoded = iter(tok.encode_batch([text for conv in convs for text, _ in conv], add_special_tokens=False))
    ids_rows, label_rows = [], []
    for conv in convs:
        ids, labels = [], []
        for _, target in conv:
            piece = next(encoded).ids
            ids += piece
            labels += piece if target else [IGNORE] * len(piece)
        ids_rows.append(ids)
        label_rows.append(labels)
    width = max(map(len, ids_rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids_rows])
    labels = torch.tensor([r + [IGNORE] * (width - len(r)) for r in label_rows])
    return ids, labels


class Batches(torch.utils.data.IterableDataset):
    """Step s's batch is a pure function of (seed, s); worker w makes steps w, w+W, ..."""

    def __init__(self, tokenizer_path: str, seed: int, steps: int, short: int, recall: int, pad: int,
                 curriculum_steps: int = 0, mix: str = "v2"):
        self.args = tokenizer_path, seed, steps, short, recall, pad, curriculum_steps, mix

    def __iter__(self):
        path, seed, steps, short, recall, pad, curriculum_steps, mix = self.args
        info = torch.utils.data.get_worker_info()
        first, stride = (info.id, info.num_workers) if info else (0, 1)
        tok, render = Tokenizer.from_file(path), chat_renderer()
        for step in range(first, steps, stride):
            rng = random.Random(f"train/{seed}/{step}")
            size = rng.randint(1, table_cap(step, curriculum_steps))
            yield (rows(tok, [sample(rng, render) for _ in range(short)], pad)
                   + rows(tok, [sample(rng, render, "recall", size, mix) for _ in range(recall)], pad))


def table_cap(step: int, curriculum_steps: int) -> int:
    """The largest recall table at `step`: grows from 4 to MAX_TABLE over `curriculum_steps`."""
    if step >= curriculum_steps:
        return tasks.MAX_TABLE
    return 4 + (tasks.MAX_TABLE - 4) * step // curriculum_steps


def eval_batches(tok: Tokenizer, n: int, seed: int, pad: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forcing batches of eval questions, prompted the default way."""
    render = chat_renderer()
    return {skill: rows(tok, [[(render(q.messages), False), (q.answer + "<|im_end|>", True)] for q in qs], pad)
            for skill, qs in tasks.eval_suite(n, seed).items()}


@torch.no_grad()
def exact_match(model, batches, device, chunk: int = 64) -> dict[str, float]:
    model.eval()
    scores = {}
    for skill, (ids, labels) in batches.items():
        right = 0
        for i in range(0, len(ids), chunk):
            x, y = ids[i:i + chunk].to(device), labels[i:i + chunk].to(device)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                pred = model(input_ids=x).logits[:, :-1].argmax(-1)
            target = y[:, 1:]
            right += ((pred == target) | (target == IGNORE)).all(-1).sum().item()
        scores[skill] = right / len(ids)
    model.train()
    return scores


def save(model, out: Path, eos: list[int]) -> None:
    """bf16 safetensors via save_pretrained, written beside and moved in, so a kill leaves a whole file."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        half = copy.deepcopy(model).to(torch.bfloat16)
        half.generation_config = GenerationConfig(bos_token_id=eos[1], eos_token_id=eos, pad_token_id=eos[1],
                                                  do_sample=False)
        half.save_pretrained(tmp, safe_serialization=True)
        for f in Path(tmp).iterdir():
            f.replace(out / f.name)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (out / name).resolve() != (MODEL_DIR / name).resolve():
            shutil.copy(MODEL_DIR / name, out / name)


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to peak/10 as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=MODEL_DIR)
    p.add_argument("--steps", type=int, default=None, help="default: as many as fit in --minutes (schedule by time)")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget (stops and saves)")
    p.add_argument("--short-batch", type=int, default=512)
    p.add_argument("--recall-batch", type=int, default=32)
    p.add_argument("--curriculum-steps", type=int, default=0,
                   help="grow the largest recall table from 4 to 64 entries over this many steps")
    p.add_argument("--recall-mix", choices=sorted(RECALL_MIXES), default="v2", help="see RECALL_MIXES")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--resume", type=Path, default=None, help="start from this checkpoint folder")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model for a CPU smoke run")
    p.add_argument("--log", type=Path, default=None, help="also write eval results (JSON) here")
    args = p.parse_args(argv)
    start = time.time()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok_path = str(MODEL_DIR / "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    if args.resume:
        model = Qwen3ForCausalLM.from_pretrained(args.resume, dtype=torch.float32)
    else:
        model = Qwen3ForCausalLM(model_config(tok.get_vocab_size(), args.tiny, eos)).float()
    model.to(device).train()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
    val = eval_batches(tok, args.eval_n, seed=10_000 + args.seed, pad=eos[1])
    steps = args.steps or 1_000_000
    loader = torch.utils.data.DataLoader(
        Batches(tok_path, args.seed, steps, args.short_batch, args.recall_batch, eos[1],
                args.curriculum_steps, args.recall_mix), batch_size=None,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None, persistent_workers=False)
    history, tokens = [], 0
    for step, (sx, sy, rx, ry) in enumerate(loader):
        if step >= steps:
            break
        progress = step / steps if args.steps else (time.time() - start) / (args.minutes * 60)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, args.lr, args.warmup)
        loss_sum = 0.0
        for x, y in ((sx, sy), (rx, ry)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(input_ids=x, labels=y).loss
            loss.backward()
            loss_sum += loss.detach()
            tokens += x.numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = step + 1 == steps or time.time() - start > args.minutes * 60
        if step % 100 == 0 or last:
            elapsed = time.time() - start
            print(f"step {step:5d}  loss {float(loss_sum):.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{tokens / elapsed / 1e3:.0f}k tok/s  {elapsed:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or last:
            scores = exact_match(model, val, device)
            history.append({"step": step + 1, "seconds": round(time.time() - start, 1), **scores})
            print("  eval " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
            save(model, args.out, eos)
            if args.log:
                args.log.write_text(json.dumps(history, indent=1) + "\n")
        if last:
            break
    print(f"trained {step + 1} steps in {time.time() - start:.0f}s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
