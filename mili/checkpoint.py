"""Load Qwen3 checkpoints as published on the Hugging Face hub, or make seeded random weights.

- Only safetensors (`model.safetensors`, or shards listed in `model.safetensors.index.json`).
  mili never unpickles `.bin` / `.pt` files: unpickling can run arbitrary code.
- Tensors are memory-mapped, converted to the requested dtype while copied into place, and
  q/k/v and gate/up are fused on the way (exercise 1.6 says where each one goes).
- Every problem is reported at once, by name: missing tensors, unexpected tensors, wrong shapes;
  a corrupt or truncated file is named in a `CheckpointError`, and an index may only name shards
  inside the model folder.
- One rank of a tensor-parallel group (a `ModelShard`) reads only its part of each tensor
  (safetensors' `get_slice`), so no rank ever holds the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mili.backends import Backend
from mili.config import PRESETS, Qwen3Config, preset
from mili.model.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    TensorParallelGroup,
    VocabParallelEmbedding,
)
from mili.model.qwen3 import Qwen3ForCausalLM
from mili.model.rope import rope_cos_sin_cache
from mili.model.shard import ModelShard
from mili.model.weights import checkpoint_name_to_param, shard_rows

DOWNLOAD_HINT = ("download one with e.g. `huggingface-cli download Qwen/Qwen3-0.6B --local-dir models/Qwen3-0.6B`, "
                 "or pass a preset (" + ", ".join("Qwen3-" + k for k in PRESETS) + ") for random weights")


class CheckpointError(ValueError):
    """A checkpoint folder that mili cannot load, with every reason named."""


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def build_model(config: Qwen3Config, *, dtype: torch.dtype, device: torch.device | str,
                backend: Backend | str = "auto", shard: ModelShard | None = None) -> Qwen3ForCausalLM:
    """An uninitialised model (one rank's part, given a shard) on `device`: parameters in `dtype`,
    the RoPE cache in float32."""
    device = torch.device(device)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config, backend=backend, device=device, shard=shard)
    model.to_empty(device=device)
    for param in model.parameters():
        param.data = param.data.to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    rotary = model.model.layers[0].self_attn.rotary
    rotary.cos_sin_cache = rope_cos_sin_cache(config.head_dim, config.max_position_embeddings, config.rope_theta).to(device)
    return model.eval()


def random_model(config: Qwen3Config, *, seed: int = 0, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", backend: Backend | str = "auto",
                 shard: ModelShard | None = None) -> Qwen3ForCausalLM:
    """Seeded random weights (normal, std 0.02; norms near 1), for benchmarks at real sizes.

    A rank's shard draws every full tensor in turn and keeps its part, so the ranks of a group
    together hold exactly the weights one process would draw with the same seed.
    """
    dtype = dtype or default_dtype(device)
    model = build_model(config, dtype=dtype, device=device, backend=backend, shard=shard)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    full_params = _full_model_shapes(model) if shard is not None else None
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = param.shape if shard is None else full_params[name]
            if name.endswith("norm.weight"):
                full = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=param.device)
            else:
                full = 0.02 * torch.randn(shape, generator=gen, device=param.device)
            if shard is None:
                param.copy_(full)
            elif name.endswith(("qkv_proj.weight", "gate_up_proj.weight")):
                for part in ("q", "k", "v") if name.endswith("qkv_proj.weight") else ("gate", "up"):
                    _copy_into(model, name, part, full[shard_rows(part, config)])
            else:
                _copy_into(model, name, None, full)
    return model


def _full_model_shapes(model: Qwen3ForCausalLM) -> dict[str, torch.Size]:
    """Every parameter's shape in the whole (unsharded) model."""
    config = model.shard.config if model.shard is not None else model.config
    with torch.device("meta"):
        full = Qwen3ForCausalLM(config, backend=model.backend)
    return {name: p.shape for name, p in full.named_parameters(remove_duplicate=False)}


def _copy_into(model: Qwen3ForCausalLM, name: str, part: str | None, source) -> None:
    """Copy a full checkpoint tensor (or a q/k/v/gate/up part of a fused one) into parameter
    `name`, keeping this rank's part when the model is a shard. `source`: a tensor or a lazy
    safetensors slice (indexing it reads only what it selects)."""
    shard, param = model.shard, model.get_parameter(name)
    if part is not None:  # fused: this rank's rows of the part, into the part's rows of the fused weight
        param.data[shard_rows(part, model.config)].copy_(source if shard is None else source[shard.checkpoint_rows(part)])
        return
    module = model.get_submodule(name.rpartition(".")[0])
    if isinstance(module, (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)):
        module.load(source)
    else:
        param.data.copy_(source if isinstance(source, torch.Tensor) else source[:])


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {err}") from err
        files = sorted({folder / f for f in weight_map.values()})
        outside = [str(f) for f in files if not f.resolve().is_relative_to(folder.resolve())]
        if outside:
            raise CheckpointError(f"{index} names shards outside the model folder {folder}: {', '.join(outside)}")
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
    """Copy every checkpoint tensor into `model`, fusing and converting; raise on any mismatch.

    A shard (tensor parallelism) reads only its part of each tensor from the memory-mapped files.
    """
    from safetensors import SafetensorError

    shard = model.shard
    config = shard.config if shard is not None else model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    full_shapes = _full_model_shapes(model) if shard is not None else {n: p.shape for n, p in params.items()}
    expected = set()
    for name in params:
        if name.endswith("qkv_proj.weight"):
            expected |= {(name, s) for s in ("q", "k", "v")}
        elif name.endswith("gate_up_proj.weight"):
            expected |= {(name, s) for s in ("gate", "up")}
        elif not (config.tie_word_embeddings and name == "lm_head.weight"):
            expected.add((name, None))
    loaded, unexpected, wrong_shape, misshapen = set(), [], [], set()
    with torch.no_grad():
        for file in checkpoint_files(folder):
            try:
                _copy_tensors(model, file, config, full_shapes, expected, loaded, unexpected, wrong_shape, misshapen)
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err}); "
                                      "it may be truncated or corrupt: download it again") from None
    missing = sorted(f"{n}" + (f" [{s}]" if s else "") for n, s in expected - loaded - misshapen)
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): " + ", ".join(sorted(unexpected)[:20]))
    if wrong_shape:
        problems.append(f"wrongly shaped tensors ({len(wrong_shape)}): " + "; ".join(wrong_shape[:20]))
    if problems:
        raise CheckpointError(f"cannot load {folder}:\n  " + "\n  ".join(problems))


def _copy_tensors(model: Qwen3ForCausalLM, file: Path, config, full_shapes: dict, expected: set, loaded: set,
                  unexpected: list, wrong_shape: list, misshapen: set) -> None:
    """Copy one file's tensors into `model`, noting each one loaded, unexpected or wrongly shaped."""
    from safetensors import safe_open

    shard = model.shard
    with safe_open(str(file), framework="pt", device="cpu") as f:
        for ckpt_name in f.keys():
            name, part = checkpoint_name_to_param(ckpt_name)
            if config.tie_word_embeddings and name == "lm_head.weight":
                continue  # tied: the embedding matrix serves as the LM head
            if (name, part) not in expected:
                unexpected.append(ckpt_name)
                continue
            want = tuple(full_shapes[name])
            if part is not None:
                rows = shard_rows(part, config)
                want = (rows.stop - rows.start, *want[1:])
            source = f.get_tensor(ckpt_name) if shard is None else f.get_slice(ckpt_name)
            shape = tuple(source.shape) if shard is None else tuple(source.get_shape())
            if shape != want:
                wrong_shape.append(f"{ckpt_name}: checkpoint {shape}, model {want}")
                misshapen.add((name, part))
                continue
            _copy_into(model, name, part, source)
            loaded.add((name, part))


def load_model(model: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
               backend: Backend | str = "auto", seed: int = 0,
               group: TensorParallelGroup | None = None) -> Qwen3ForCausalLM:
    """A Hugging Face Qwen3 folder, or a preset name ('Qwen3-0.6B', '8B', ...) for random weights.

    group: this process's rank in a tensor-parallel group; the model is then that rank's part.
    """
    dtype = dtype or default_dtype(device)
    folder = Path(model).expanduser()
    if folder.is_dir():
        config = Qwen3Config.from_json(folder)
    else:
        try:
            config = preset(str(model))
        except ValueError:
            raise CheckpointError(f"{model} is neither a model folder nor a preset; {DOWNLOAD_HINT}") from None
    shard = ModelShard.of(config, group) if group is not None else None
    if not folder.is_dir():
        return random_model(config, seed=seed, dtype=dtype, device=device, backend=backend, shard=shard)
    result = build_model(config, dtype=dtype, device=device, backend=backend, shard=shard)
    load_weights(result, folder)
    return result
