"""A tiny ONNX model with the WD14 tagger's input/output layout ([N, 448, 448, 3] BGR 0-255 in, [N, tags]
probabilities out) and its selected_tags.csv: the real loading and inference code runs against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TAGS = [
    ("general", 9),
    ("sensitive", 9),
    ("questionable", 9),
    ("explicit", 9),
    ("1girl", 0),
    ("red_hair", 0),
    ("outdoors", 0),
    ("smile", 0),
    ("^_^", 0),
    ("mascot_character", 4),
]


def build_tiny_wd14(dest: Path, size: int = 448, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.05, size=(3, len(TAGS))).astype(np.float32)
    bias = rng.normal(0, 1.0, size=(len(TAGS),)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
            helper.make_node("Div", ["pooled", "scale"], ["unit"]),
            helper.make_node("MatMul", ["unit", "weight"], ["logits0"]),
            helper.make_node("Add", ["logits0", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_wd14",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(TAGS)])],
        [
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
            numpy_helper.from_array(weight * 40, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, dest / "model.onnx")
    lines = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, (n, c) in enumerate(TAGS)]
    (dest / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    return dest
