#!/usr/bin/env bash
# One set-up command: creates .venv and installs the package with everything it needs (torch, timm,
# coremltools, hydra, onnx/onnxruntime, ...), plus Debian's Fashion-MNIST where apt-get and root are available.
#   bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision are pinned by constraints.txt and resolved in the same command as timm.
# The executorch extra (ExecuTorch + XNNPACK, about 15 s more) gives backend=executorch and format=executorch.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,executorch]"

# Fashion-MNIST (the default dataset) from Debian, only where that is possible; skipped quietly elsewhere.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the digits dataset still works (data=digits)"
fi
echo "set-up done: activate with 'source .venv/bin/activate'"
