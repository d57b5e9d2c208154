"""Qwen3 in plain PyTorch (chapter 01): the layers, the model, the checkpoint mapping."""
