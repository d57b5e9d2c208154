"""Qwen3Config: the architecture hyper-parameters, read from a Hugging Face `config.json`.

Presets give the shapes of the published Qwen3 dense models, so benchmarks can run at real
sizes with random weights where no checkpoint can be downloaded.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM",)


class ConfigError(ValueError):
    """config.json is missing, malformed, or describes a model mili cannot run."""


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive number, got {value!r}")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count as stored (tied embeddings counted once)."""
        h, i, l_ = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 2 * self.head_dim
        mlp = 3 * h * i
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        return embed * (1 if self.tie_word_embeddings else 2) + l_ * per_layer + h

    def to_hf_dict(self) -> dict:
        d = asdict(self)
        d.update(architectures=list(SUPPORTED_ARCHITECTURES), model_type="qwen3",
                 hidden_act="silu", attention_bias=False, attention_dropout=0.0)
        return d

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> Qwen3Config:
        archs = raw.get("architectures")
        model_type = raw.get("model_type")
        if archs is not None and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise ConfigError(
                f"{source}: architecture {archs} is not supported; mili runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if archs is None and model_type not in (None, "qwen3"):
            raise ConfigError(f"{source}: model_type {model_type!r} is not supported; mili runs 'qwen3'")
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (Qwen3 uses 'silu')")
        if raw.get("attention_bias", False):
            raise ConfigError(f"{source}: attention_bias=true is not supported (Qwen3 has no attention bias)")
        values = {}
        required = [f.name for f in fields(cls) if f.default is MISSING]
        for f in fields(cls):
            if f.name in raw and raw[f.name] is not None:
                values[f.name] = raw[f.name]
            elif f.name == "head_dim" and "hidden_size" in raw and "num_attention_heads" in raw:
                values["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]
            elif f.name in required:
                raise ConfigError(f"{source}: required field {f.name!r} is missing")
        if "rope_theta" not in raw and isinstance(raw.get("rope_parameters"), dict):
            values["rope_theta"] = raw["rope_parameters"].get("rope_theta", cls.rope_theta)
        if "torch_dtype" not in raw and isinstance(raw.get("dtype"), str):
            values["torch_dtype"] = raw["dtype"]
        scaling = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
            raise ConfigError(f"{source}: rope scaling {scaling.get('rope_type', scaling.get('type'))!r} is not supported")
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from err

    @classmethod
    def from_json(cls, path: str | Path) -> Qwen3Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"{path} does not exist: a Hugging Face model folder holds a config.json")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(raw, source=str(path))


def _preset(hidden, inter, layers, heads, kv_heads, tie, max_pos=40960) -> Qwen3Config:
    return Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=128, max_position_embeddings=max_pos, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=tie, bos_token_id=151643, eos_token_id=151645)


# The published config.json values of the Qwen3 dense models.
PRESETS: dict[str, Qwen3Config] = {
    "0.6B": _preset(1024, 3072, 28, 16, 8, True),
    "1.7B": _preset(2048, 6144, 28, 16, 8, True),
    "4B": _preset(2560, 9728, 36, 32, 8, True),
    "8B": _preset(4096, 12288, 36, 32, 8, False),
    "14B": _preset(5120, 17408, 40, 40, 8, False),
    "32B": _preset(5120, 25600, 64, 64, 8, False),
}


def preset(name: str) -> Qwen3Config:
    key = name.removeprefix("Qwen3-").removeprefix("qwen3-")
    key = key[:-1] + "B" if key.lower().endswith("b") else key
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join('Qwen3-' + k for k in PRESETS)}")
    return PRESETS[key]
