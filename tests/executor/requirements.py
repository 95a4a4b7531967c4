"""Imported first by every executor test module: skips the module (not the run) when the
executor's optional dependencies are absent (``pip install -e '.[executor]'``)."""
import pytest

pytest.importorskip("torch", reason="executor tests need torch (pip install -e '.[executor]')")
# transformers >= 5: the tests write configs with ``rope_parameters`` (its config format).
pytest.importorskip("transformers", minversion="5.0",
                    reason="executor tests need transformers>=5 (pip install -e '.[executor]')")
pytest.importorskip("safetensors", reason="executor tests need safetensors")
