"""Load Qwen3 checkpoints as published on the Hugging Face hub, or make seeded random weights.

- Only safetensors (`model.safetensors`, or shards listed in `model.safetensors.index.json`).
  mili never unpickles `.bin` / `.pt` files: unpickling can run arbitrary code.
- Tensors are memory-mapped, converted to the requested dtype while copied into place, and
  q/k/v and gate/up are fused on the way (exercise 1.6 says where each one goes).
- Every problem is reported at once, by name: missing tensors, unexpected tensors, wrong shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mili.backends import Backend
from mili.config import PRESETS, Qwen3Config, preset
from mili.model.qwen3 import Qwen3ForCausalLM
from mili.model.rope import rope_cos_sin_cache
from mili.model.weights import checkpoint_name_to_param, shard_rows

DOWNLOAD_HINT = ("download one with e.g. `huggingface-cli download Qwen/Qwen3-0.6B --local-dir models/Qwen3-0.6B`, "
                 "or pass a preset (" + ", ".join("Qwen3-" + k for k in PRESETS) + ") for random weights")


class CheckpointError(ValueError):
    """A checkpoint folder that mili cannot load, with every reason named."""


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def build_model(config: Qwen3Config, *, dtype: torch.dtype, device: torch.device | str,
                backend: Backend | str = "auto") -> Qwen3ForCausalLM:
    """An uninitialised model on `device`: parameters in `dtype`, the RoPE cache in float32."""
    device = torch.device(device)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config, backend=backend, device=device)
    model.to_empty(device=device)
    for param in model.parameters():
        param.data = param.data.to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    rotary = model.model.layers[0].self_attn.rotary
    rotary.cos_sin_cache = rope_cos_sin_cache(config.head_dim, config.max_position_embeddings, config.rope_theta).to(device)
    return model.eval()


def random_model(config: Qwen3Config, *, seed: int = 0, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", backend: Backend | str = "auto") -> Qwen3ForCausalLM:
    """Seeded random weights (normal, std 0.02; norms near 1), for benchmarks at real sizes."""
    dtype = dtype or default_dtype(device)
    model = build_model(config, dtype=dtype, device=device, backend=backend)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen, device=param.device))
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen, device=param.device))
    return model


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {err}") from err
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are not in {folder}: {', '.join(missing)}")
        return files
    if single.exists():
        return [single]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise CheckpointError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}). mili loads safetensors only and never "
            "unpickles weights (unpickling can run arbitrary code); download the safetensors version of the model")
    raise CheckpointError(f"{folder} has no model.safetensors or model.safetensors.index.json; {DOWNLOAD_HINT}")


def load_weights(model: Qwen3ForCausalLM, folder: Path) -> None:
    """Copy every checkpoint tensor into `model`, fusing and converting; raise on any mismatch."""
    from safetensors import safe_open

    config = model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = set()
    for name in params:
        if name.endswith("qkv_proj.weight"):
            expected |= {(name, s) for s in ("q", "k", "v")}
        elif name.endswith("gate_up_proj.weight"):
            expected |= {(name, s) for s in ("gate", "up")}
        elif not (config.tie_word_embeddings and name == "lm_head.weight"):
            expected.add((name, None))
    loaded, unexpected, wrong_shape = set(), [], []
    with torch.no_grad():
        for file in checkpoint_files(folder):
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for ckpt_name in f.keys():
                    name, shard = checkpoint_name_to_param(ckpt_name)
                    if config.tie_word_embeddings and name == "lm_head.weight":
                        continue  # tied: the embedding matrix serves as the LM head
                    if (name, shard) not in expected:
                        unexpected.append(ckpt_name)
                        continue
                    target = params[name].data
                    if shard is not None:
                        target = target[shard_rows(shard, config)]
                    tensor = f.get_tensor(ckpt_name)
                    if tuple(tensor.shape) != tuple(target.shape):
                        wrong_shape.append(f"{ckpt_name}: checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}")
                        continue
                    target.copy_(tensor)
                    loaded.add((name, shard))
    missing = sorted(f"{n}" + (f" [{s}]" if s else "") for n, s in expected - loaded)
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): " + ", ".join(sorted(unexpected)[:20]))
    if wrong_shape:
        problems.append(f"wrongly shaped tensors ({len(wrong_shape)}): " + "; ".join(wrong_shape[:20]))
    if problems:
        raise CheckpointError(f"cannot load {folder}:\n  " + "\n  ".join(problems))


def load_model(model: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
               backend: Backend | str = "auto", seed: int = 0) -> Qwen3ForCausalLM:
    """A Hugging Face Qwen3 folder, or a preset name ('Qwen3-0.6B', '8B', ...) for random weights."""
    dtype = dtype or default_dtype(device)
    folder = Path(model).expanduser()
    if folder.is_dir():
        config = Qwen3Config.from_json(folder)
        result = build_model(config, dtype=dtype, device=device, backend=backend)
        load_weights(result, folder)
        return result
    try:
        config = preset(str(model))
    except ValueError:
        raise CheckpointError(f"{model} is neither a model folder nor a preset; {DOWNLOAD_HINT}") from None
    return random_model(config, seed=seed, dtype=dtype, device=device, backend=backend)
