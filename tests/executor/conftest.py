"""Session fixtures: the tiny Llama written once per run. Torch-free at import, so a run
without the executor extra skips these tests (see requirements.py) instead of failing."""
import pytest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(HF model, folder with one model.safetensors) of the tiny Llama."""
    from tests.executor.helpers import make_hf_model, save_hf

    model = make_hf_model("llama")
    return model, save_hf(model, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama):
    return tiny_llama[1]


@pytest.fixture(scope="session")
def tiny_llama_sharded_dir(tiny_llama, tmp_path_factory):
    from tests.executor.helpers import save_hf

    return save_hf(tiny_llama[0], tmp_path_factory.mktemp("tiny_llama_sharded"),
                   max_shard_size="60KB")
