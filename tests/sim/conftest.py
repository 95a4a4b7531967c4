import pytest
from hydra import compose, initialize_config_dir

from sim.config import load_config, register_schema
from sim.run import CONF_DIR


@pytest.fixture
def make_config():
    """Compose the real conf/ tree with overrides and return the typed SimConfig."""
    register_schema()

    def _make(*overrides: str, typed: bool = True):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["output.progress=false", *overrides])
        return load_config(cfg) if typed else cfg

    return _make
