"""``python -m executor serve`` settings: clear errors before any worker starts."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import subprocess
import sys
from pathlib import Path

import pytest

from executor.__main__ import build_parser
from executor.serve_config import (ServeConfig, ServeConfigError, cluster_and_memory,
                                   model_spec, resident_tp_width, resolve_model)
from policies.specs import kv_blocks_per_gpu

REPO = Path(__file__).resolve().parents[2]


def test_named_shape_resolves_to_dummy_weights_with_bytes():
    model = resolve_model(ServeConfig(model="tiny", layout="tp", num_ranks=2))
    assert model.folder is None and model.tokenizer_folder is None
    assert model.served_name == "tiny" and model.config.num_kv_heads == 2


@pytest.mark.parametrize("settings, message", [
    ({"model": "/no/such/folder"}, "no such folder, and not a named shape"),
    ({"model": "tiny", "layout": "tp", "num_ranks": 4}, "num_kv_heads=2 is not divisible"),
    ({"model": "tiny", "layout": "mixed", "num_ranks": 3}, "cannot be cut into groups"),
    ({"model": "tiny", "layout": "zigzag"}, "--layout must be one of"),
    ({"model": "tiny", "num_ranks": 0}, "--num-ranks must be >= 1"),
    ({"model": "tiny", "dtype": "int8"}, "--dtype must be"),
    ({"model": "tiny", "kv_cache_mib": 0}, "--kv-cache-mib must be positive"),
])
def test_unservable_settings_are_named(settings, message):
    with pytest.raises(ServeConfigError, match=message):
        cfg = ServeConfig(**settings)
        cfg.check()
        resolve_model(cfg)


def test_a_folder_without_weights_or_tokenizer_is_refused(tiny_llama_dir, tmp_path):
    (tmp_path / "config.json").write_text((Path(tiny_llama_dir) / "config.json").read_text())
    with pytest.raises(ServeConfigError, match="model.safetensors"):
        resolve_model(ServeConfig(model=str(tmp_path)))
    with pytest.raises(ServeConfigError, match="no tokenizer.json"):
        resolve_model(ServeConfig(model=str(tiny_llama_dir)))
    assert resolve_model(ServeConfig(model=str(tiny_llama_dir), tokenizer="bytes")).folder


def test_cpu_kv_pool_is_the_requested_size():
    cfg = ServeConfig(model="tiny", kv_cache_mib=8, block_size_tokens=16)
    spec = model_spec(resolve_model(cfg))
    cluster, memory = cluster_and_memory(cfg, spec, 0)
    block_bytes = 16 * spec.kv_bytes_per_token
    assert kv_blocks_per_gpu(spec, cluster, memory, 1) == 8 * 2**20 // block_bytes


def test_cli_reports_a_missing_model_and_exits_2():
    proc = subprocess.run([sys.executable, "-m", "executor", "serve", "--model", "/no/model"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "error: --model '/no/model': no such folder" in proc.stderr


def test_cli_flags_map_onto_serve_config():
    args = build_parser().parse_args(["serve", "--model", "tiny", "--layout", "mixed",
                                      "--num-ranks", "4", "--engines-per-group", "2",
                                      "--api-key", "k", "--block-size", "8"])
    assert (args.layout, args.num_ranks, args.api_key, args.block_size_tokens) == \
        ("mixed", 4, "k", 8)


def test_resident_weights_are_laid_out_for_every_width_a_switch_may_use():
    def width(**settings):
        cfg = ServeConfig(model="tiny", **settings)
        return resident_tp_width(resolve_model(cfg).config, cfg)

    assert width(layout="dp", num_ranks=2) == 2  # DP now, TP2 later without a reload
    assert width(layout="dp", num_ranks=4) == 2  # 2 KV heads cannot split 4 ways, but 2 ways
    assert width(layout="mixed", num_ranks=4) == 2  # ... so the static 2xTP2 works
