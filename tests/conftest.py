"""Test-wide set-up: GPU tests skip without CUDA; Triton kernels run in the interpreter on CPU."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is imported anywhere: kernels then run on the CPU, slowly.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run it on a machine with a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many small ops: one thread avoids OpenMP spin-waits when pytest-xdist workers share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    """A random Qwen3 checkpoint (seed 0) with the tiny model's tokenizer beside it, once per module."""
    from tests.hf_oracle import make_checkpoint_with_tokenizer

    folder = tmp_path_factory.mktemp("checkpoint-with-tokenizer")
    make_checkpoint_with_tokenizer(folder)
    return folder
