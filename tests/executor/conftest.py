import pytest

pytest.importorskip("torch", reason="executor tests need torch (pip install -e '.[executor]')")
# transformers >= 5: the tests write configs with ``rope_parameters`` (its config format).
pytest.importorskip("transformers", minversion="5.0",
                    reason="executor tests need transformers>=5 and safetensors")
pytest.importorskip("safetensors", reason="executor tests need transformers and safetensors")

from tests.executor.helpers import make_hf_model, save_hf  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(HF model, folder with one model.safetensors) of the tiny Llama."""
    model = make_hf_model("llama")
    return model, save_hf(model, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama):
    return tiny_llama[1]


@pytest.fixture(scope="session")
def tiny_llama_sharded_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama_sharded")
    return save_hf(tiny_llama[0], folder, max_shard_size="60KB")
