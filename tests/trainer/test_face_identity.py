"""Face identity runs an operator's ArcFace-shaped ONNX model with onnxruntime (a tiny one built here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx", reason="onnx (dev extra) builds the test model")
pytest.importorskip("onnxruntime", reason="onnxruntime (caption extra) runs it")


def tiny_arcface(path: Path) -> Path:
    """[N, 3, 16, 16] -> Flatten -> MatMul -> [N, 8]: the input and output shapes of an ArcFace export."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3 * 16 * 16, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["embedding"])],
        "arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_face_embeddings_are_unit_vectors_alike_for_alike_pictures(tmp_path: Path) -> None:
    from loraflow.evaluation.face import FaceEmbedder

    face = FaceEmbedder(str(tiny_arcface(tmp_path / "arcface.onnx")))
    assert face.size == (16, 16)
    red, red2, blue = (Image.new("RGB", (40, 30), c) for c in ((200, 20, 20), (205, 25, 20), (20, 20, 200)))
    emb = face.embed([red, red2, blue])
    assert emb.shape == (3, 8)
    assert np.allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    from loraflow.errors import UserInputError
    from loraflow.evaluation.face import FaceEmbedder

    with pytest.raises(UserInputError, match="LORAFLOW_ARCFACE_MODEL"):
        FaceEmbedder(str(tmp_path / "none.onnx"))
