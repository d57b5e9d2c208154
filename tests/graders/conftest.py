import pytest

from tests.hf_oracle import make_hf_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(folder, transformers model) of a tiny random Qwen3 with GQA 2 and untied embeddings."""
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    return folder, make_hf_checkpoint(folder)
