"""Make the bundled CenterNet ONNX take any input height/width (multiples of 32).

The converted graph fixed its input at 512x512, but nothing in it depends on that size (its
padding and 2x upsampling are size-free): renaming the two dims to symbols lets the detector
take aspect-kept inputs (e.g. 512x384). Only the input's and outputs' H/W dims change;
tests/test_shapes.py checks that putting 512 (and 128) back gives the original file byte for
byte (sha256 a4b0a5328d8b59e4...).

    python scripts/centernet_symbolic_hw.py src/imgfeat/models/weights/centernet_mbv3.onnx
"""

import sys

import onnx


def make_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "height", "width"
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[1].dim_param, dims[2].dim_param = "height_4", "width_4"
    return model


if __name__ == "__main__":
    path = sys.argv[1]
    onnx.save(make_symbolic(onnx.load(path)), path)
