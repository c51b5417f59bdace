"""The TensorFlow-free GraphDef reader and writer, checked against protobuf's own encoder.

protobuf (a dependency of tensorflow-datasets) serialises messages built from a
descriptor of the GraphDef fields declared here, so the reader is tested against an
independent implementation of the wire format, without TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pytest

from bt_jax.weights import graphdef

pytest.importorskip("google.protobuf", reason="protobuf builds the reference messages")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

F = descriptor_pb2.FieldDescriptorProto
# (message, [(field, number, type, label, message type)]) of tensorflow/core/framework/*.proto
_MESSAGES = [
    ("Dim", [("size", 1, F.TYPE_INT64, F.LABEL_OPTIONAL, None)]),
    ("TensorShapeProto", [("dim", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, "Dim"),
                          ("unknown_rank", 3, F.TYPE_BOOL, F.LABEL_OPTIONAL, None)]),
    ("TensorProto", [("dtype", 1, F.TYPE_ENUM, F.LABEL_OPTIONAL, "DataType"),
                     ("tensor_shape", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "TensorShapeProto"),
                     ("tensor_content", 4, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
                     ("float_val", 5, F.TYPE_FLOAT, F.LABEL_REPEATED, None),
                     ("int_val", 7, F.TYPE_INT32, F.LABEL_REPEATED, None),
                     ("int64_val", 10, F.TYPE_INT64, F.LABEL_REPEATED, None)]),
    ("ListValue", [("s", 2, F.TYPE_BYTES, F.LABEL_REPEATED, None),
                   ("i", 3, F.TYPE_INT64, F.LABEL_REPEATED, None),
                   ("f", 4, F.TYPE_FLOAT, F.LABEL_REPEATED, None),
                   ("type", 6, F.TYPE_ENUM, F.LABEL_REPEATED, "DataType")]),
    ("AttrValue", [("list", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "ListValue"),
                   ("s", 2, F.TYPE_BYTES, F.LABEL_OPTIONAL, None),
                   ("i", 3, F.TYPE_INT64, F.LABEL_OPTIONAL, None),
                   ("f", 4, F.TYPE_FLOAT, F.LABEL_OPTIONAL, None),
                   ("b", 5, F.TYPE_BOOL, F.LABEL_OPTIONAL, None),
                   ("type", 6, F.TYPE_ENUM, F.LABEL_OPTIONAL, "DataType"),
                   ("shape", 7, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "TensorShapeProto"),
                   ("tensor", 8, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "TensorProto")]),
    ("AttrEntry", [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                   ("value", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "AttrValue")]),
    ("NodeDef", [("name", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                 ("op", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                 ("input", 3, F.TYPE_STRING, F.LABEL_REPEATED, None),
                 ("device", 4, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                 ("attr", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, "AttrEntry")]),
    ("GraphDef", [("node", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, "NodeDef"),
                  ("version_stub", 4, F.TYPE_INT32, F.LABEL_OPTIONAL, None)]),
]


@pytest.fixture(scope="module")
def pb():
    """Message classes for the GraphDef subset, keyed by name."""
    file = descriptor_pb2.FileDescriptorProto(name="graphdef_subset.proto", package="t",
                                              syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for name, number in (("DT_INVALID", 0), ("DT_FLOAT", 1), ("DT_INT32", 3), ("DT_INT64", 9)):
        enum.value.add(name=name, number=number)
    for message, message_fields in _MESSAGES:
        m = file.message_type.add(name=message)
        for name, number, kind, label, type_name in message_fields:
            field = m.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".t.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"t.{name}"))
            for name, _ in _MESSAGES}


def _reference_graph(pb) -> bytes:
    g = pb["GraphDef"](version_stub=27)  # an unknown field: the reader must skip it
    weights = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    const = g.node.add(name="conv/weights", op="Const")
    const.attr.add(key="dtype", value=pb["AttrValue"](type=1))
    tensor = pb["TensorProto"](dtype=1, tensor_content=weights.tobytes())
    tensor.tensor_shape.dim.add(size=2)
    tensor.tensor_shape.dim.add(size=3)
    tensor.tensor_shape.dim.add(size=4)
    const.attr.add(key="value", value=pb["AttrValue"](tensor=tensor))
    scalar = g.node.add(name="scale", op="Const")
    scalar.attr.add(key="value", value=pb["AttrValue"](tensor=pb["TensorProto"](
        dtype=1, float_val=[0.17])))
    shape = g.node.add(name="shape", op="Const")
    shape_tensor = pb["TensorProto"](dtype=3, int_val=[-1, 1792])
    shape_tensor.tensor_shape.dim.add(size=2)
    shape.attr.add(key="value", value=pb["AttrValue"](tensor=shape_tensor))
    fill = g.node.add(name="fill", op="Const")
    fill_tensor = pb["TensorProto"](dtype=9, int64_val=[-5])
    fill_tensor.tensor_shape.dim.add(size=3)
    fill.attr.add(key="value", value=pb["AttrValue"](tensor=fill_tensor))
    conv = g.node.add(name="conv/Conv2D", op="Conv2D", input=["input:0", "conv/weights",
                                                              "^scale"], device="/cpu:0")
    conv.attr.add(key="strides", value=pb["AttrValue"](list=pb["ListValue"](i=[1, 2, 2, 1])))
    conv.attr.add(key="padding", value=pb["AttrValue"](s=b"VALID"))
    conv.attr.add(key="T", value=pb["AttrValue"](type=1))
    conv.attr.add(key="epsilon", value=pb["AttrValue"](f=0.001))
    conv.attr.add(key="offset", value=pb["AttrValue"](i=-3))
    conv.attr.add(key="use_cudnn_on_gpu", value=pb["AttrValue"](b=True))
    conv.attr.add(key="types", value=pb["AttrValue"](list=pb["ListValue"](type=[1, 3])))
    placeholder = g.node.add(name="input", op="Placeholder")
    ph_shape = pb["TensorShapeProto"]()
    for size in (-1, 160, 160, 3):
        ph_shape.dim.add(size=size)
    placeholder.attr.add(key="shape", value=pb["AttrValue"](shape=ph_shape))
    return g.SerializeToString()


def test_reads_what_protobuf_writes(pb):
    nodes = graphdef.parse_graph(_reference_graph(pb))
    assert list(nodes) == ["conv/weights", "scale", "shape", "fill", "conv/Conv2D", "input"]
    weights = nodes["conv/weights"].attr["value"]
    np.testing.assert_array_equal(weights, np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5)
    assert nodes["conv/weights"].attr["dtype"] == 1
    assert isinstance(nodes["conv/weights"].attr["dtype"], graphdef.DType)
    assert nodes["scale"].attr["value"].dtype == np.float32
    assert float(nodes["scale"].attr["value"]) == pytest.approx(0.17)
    np.testing.assert_array_equal(nodes["shape"].attr["value"], [-1, 1792])
    np.testing.assert_array_equal(nodes["fill"].attr["value"], [-5, -5, -5])  # one value fills
    conv = nodes["conv/Conv2D"]
    assert conv.inputs == ["input:0", "conv/weights", "^scale"]
    assert conv.data_inputs == ["input", "conv/weights"]
    assert conv.attr["strides"] == [1, 2, 2, 1] and conv.attr["padding"] == "VALID"
    assert conv.attr["epsilon"] == pytest.approx(0.001) and conv.attr["offset"] == -3
    assert conv.attr["use_cudnn_on_gpu"] is True and conv.attr["types"] == [1, 3]
    assert nodes["input"].attr["shape"] == (-1, 160, 160, 3)


def test_what_it_writes_protobuf_reads_back(pb):
    nodes = graphdef.parse_graph(_reference_graph(pb))
    rewritten = pb["GraphDef"].FromString(graphdef.encode_graph(nodes))
    assert [n.name for n in rewritten.node] == list(nodes)
    conv = {a.key: a.value for a in rewritten.node[4].attr}
    assert list(conv["strides"].list.i) == [1, 2, 2, 1] and conv["T"].type == 1
    assert list(conv["types"].list.type) == [1, 3] and conv["offset"].i == -3
    again = graphdef.parse_graph(graphdef.encode_graph(nodes))
    for name, node in nodes.items():
        assert again[name].inputs == node.inputs and again[name].op == node.op
        for key, value in node.attr.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(again[name].attr[key], value)
                assert again[name].attr[key].dtype == value.dtype
            else:
                assert again[name].attr[key] == value and type(again[name].attr[key]) is type(value)


@pytest.mark.parametrize("data, message", [
    (b"", "no nodes"),
    (b"\x0a\x05ab", "past the end"),
    (b"\x0a\x80", "truncated varint"),
    (b"\x0b", "unsupported wire type 3"),
    (b"\x0a\x02\x0a\x00", "without a name or op"),
])
def test_damaged_bytes_raise_a_clear_error(data, message):
    with pytest.raises(graphdef.GraphDefError, match=message):
        graphdef.parse_graph(data)


def test_read_graph_names_the_file(tmp_path):
    path = tmp_path / "weights.pb"
    path.write_bytes(b"PK\x03\x04 not a graph")
    with pytest.raises(ValueError, match=f"{path} is not a frozen TensorFlow graph"):
        graphdef.read_graph(str(path))
