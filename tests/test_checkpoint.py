"""Config and checkpoint loading: presets, clear errors by name, no unpickling."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mili.checkpoint import CheckpointError, load_model, random_model
from mili.config import PRESETS, ConfigError, Qwen3Config, preset
from tests.hf_oracle import make_hf_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    make_hf_checkpoint(path)
    return path


def test_presets_have_the_published_sizes():
    billions = {name: PRESETS[name].num_parameters() / 1e9 for name in PRESETS}
    assert billions["0.6B"] == pytest.approx(0.596, abs=0.01)
    assert billions["8B"] == pytest.approx(8.19, abs=0.02)
    assert billions["32B"] == pytest.approx(32.76, abs=0.05)
    assert preset("Qwen3-8B") is PRESETS["8B"] and preset("0.6b") is PRESETS["0.6B"]
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("Qwen3-7B")


def test_config_names_the_bad_field(folder, tmp_path):
    raw = json.loads((folder / "config.json").read_text())
    for field, value, message in [("hidden_size", None, "hidden_size"), ("num_key_value_heads", 3, "multiple"),
                                  ("architectures", ["LlamaForCausalLM"], "not supported"),
                                  ("rms_norm_eps", "tiny", "rms_norm_eps")]:
        broken = dict(raw)
        if value is None:
            del broken[field]
        else:
            broken[field] = value
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message):
            Qwen3Config.from_json(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Qwen3Config.from_json(tmp_path)


def test_missing_unexpected_and_misshaped_tensors_are_named(folder, tmp_path):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(3, 3)
    tensors["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    text = str(err.value)
    assert "model.layers.1.self_attn.qkv_proj.weight [k]" in text
    assert "model.layers.0.extra.weight" in text
    assert "model.layers.0.mlp.down_proj.weight: checkpoint (3, 3)" in text
    missing = text.split("missing tensors", 1)[1].split("\n")[0]
    assert "down_proj" not in missing, "a wrongly shaped tensor is not also missing"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header only"])
def test_a_corrupt_or_truncated_file_is_named(folder, tmp_path, damage):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    data = (folder / "model.safetensors").read_bytes()
    broken = {"truncated": data[:-100], "garbage": bytes(range(256)) * 8, "header only": data[:2000]}[damage]
    (tmp_path / "model.safetensors").write_bytes(broken)
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file.*download it"):
        load_model(tmp_path)


def test_an_index_may_not_name_shards_outside_the_model_folder(folder, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "elsewhere.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    names = load_file(str(folder / "model.safetensors"))
    index = {"weight_map": {name: "../elsewhere.safetensors" for name in names}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        load_model(model)


def test_pickled_weights_are_refused(folder, tmp_path):
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_model(tmp_path)


def test_unknown_model_says_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="huggingface-cli download"):
        load_model(tmp_path / "nowhere")


def test_random_weights_are_seeded():
    config = Qwen3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=32,
                         tie_word_embeddings=True)
    a, b, c = (random_model(config, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight, "tied embeddings share one tensor"
    assert a.model.layers[0].self_attn.rotary.cos_sin_cache.dtype == torch.float32
