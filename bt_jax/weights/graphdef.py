"""A reader of frozen TensorFlow graphs (``GraphDef`` .pb files) that needs no TensorFlow.

Only what a frozen inference graph carries is decoded: each node's name, op, inputs and
attributes, and the tensors inside ``Const`` nodes. The protobuf wire format is small
(varints and length-delimited fields), so a decoder of the few messages involved is
shorter and easier to audit than a dependency that carries TensorFlow's message
definitions. Field numbers are those of ``tensorflow/core/framework/*.proto``:

* ``GraphDef``: node = 1 (``NodeDef``)
* ``NodeDef``: name = 1, op = 2, input = 3, device = 4, attr = 5 (map<string, AttrValue>)
* ``AttrValue``: list = 1, s = 2, i = 3, f = 4, b = 5, type = 6, shape = 7, tensor = 8
* ``TensorProto``: dtype = 1, tensor_shape = 2, tensor_content = 4, float_val = 5,
  double_val = 6, int_val = 7, int64_val = 10, bool_val = 11
* ``TensorShapeProto``: dim = 2 (size = 1), unknown_rank = 3

Unknown fields are skipped, as protobuf requires, so newer writers stay readable.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

# Wire types.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# TensorFlow's DataType enum -> numpy, for the types a frozen vision graph holds.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          9: np.int64, 10: np.bool_, 19: np.float16}


class GraphDefError(ValueError):
    """The bytes are not a GraphDef this reader understands."""


class DType(int):
    """A TensorFlow DataType enum value: an int that re-encodes as ``type``, not ``i``."""


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise GraphDefError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphDefError("varint longer than 10 bytes")


def fields(data: bytes) -> Iterator[Tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one message, in order.

    Varints come as int, fixed-size values as their raw bytes, length-delimited ones as
    a bytes slice (a sub-message, a string, or a packed repeated field).
    """
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise GraphDefError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire == LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise GraphDefError(f"field {number} runs {pos + size - end} bytes past the end")
            value, pos = data[pos:pos + size], pos + size
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if pos + size > end:
                raise GraphDefError(f"truncated fixed-size field {number}")
            value, pos = data[pos:pos + size], pos + size
        else:  # groups (3, 4) are long deprecated and never written by TensorFlow
            raise GraphDefError(f"unsupported wire type {wire} for field {number}")
        yield number, wire, value


def _signed(value: int) -> int:
    """int32/int64 fields are two's complement in a 64-bit varint."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _repeated(wire: int, value, fmt: str) -> List:
    """One occurrence of a repeated scalar field, packed or not."""
    if wire == LENGTH and fmt == "varint":
        out, pos = [], 0
        while pos < len(value):
            item, pos = _varint(value, pos)
            out.append(_signed(item))
        return out
    if wire == LENGTH:
        return list(struct.unpack(f"<{len(value) // struct.calcsize(fmt)}{fmt}", value))
    if fmt == "varint":
        return [_signed(value)]
    return list(struct.unpack(f"<{fmt}", value))


def parse_shape(data: bytes) -> Optional[Tuple[int, ...]]:
    """TensorShapeProto -> tuple of sizes (-1 for unknown), None for unknown rank."""
    dims = []
    for number, _, value in fields(data):
        if number == 2:
            size = 0
            for sub, _, v in fields(value):
                if sub == 1:
                    size = _signed(v)
            dims.append(size)
        elif number == 3 and value:
            return None
    return tuple(dims)


def parse_tensor(data: bytes) -> np.ndarray:
    """TensorProto -> numpy array (content bytes, or the typed repeated values)."""
    dtype_enum, shape, content = 1, (), None
    values: List = []
    for number, wire, value in fields(data):
        if number == 1:
            dtype_enum = value
        elif number == 2:
            shape = parse_shape(value) or ()
        elif number == 4:
            content = value
        elif number == 5:
            values += _repeated(wire, value, "f")
        elif number == 6:
            values += _repeated(wire, value, "d")
        elif number in (7, 10, 11):
            values += _repeated(wire, value, "varint")
    if dtype_enum not in DTYPES:
        raise GraphDefError(f"tensor of TensorFlow dtype {dtype_enum}, which this reader "
                            "does not convert")
    dtype = np.dtype(DTYPES[dtype_enum]).newbyteorder("<")
    count = int(np.prod(shape))
    if content is not None:
        array = np.frombuffer(content, dtype)
        if array.size != count:
            raise GraphDefError(f"tensor content holds {array.size} values, shape {shape} "
                                f"needs {count}")
        return array.reshape(shape).astype(dtype.newbyteorder("="))
    array = np.asarray(values, dtype.newbyteorder("="))
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1 or (array.size == 0 and count == 0):
        # Protobuf writers store a constant fill as its one value.
        return np.full(shape, array[0] if array.size else 0, array.dtype)
    if array.size == 0:
        return np.zeros(shape, array.dtype)
    raise GraphDefError(f"tensor holds {array.size} values, shape {shape} needs {count}")


def _parse_list(data: bytes) -> List:
    out: List = []
    for number, wire, value in fields(data):
        if number == 2:
            out.append(value.decode("utf-8", "replace"))
        elif number in (3, 5):
            out += _repeated(wire, value, "varint")
        elif number == 6:
            out += [DType(t) for t in _repeated(wire, value, "varint")]
        elif number == 4:
            out += _repeated(wire, value, "f")
        elif number == 7:
            out.append(parse_shape(value))
        elif number == 8:
            out.append(parse_tensor(value))
    return out


def parse_attr(data: bytes) -> Any:
    """AttrValue -> Python value: str, int, float, bool, dtype enum, shape, array or list."""
    for number, wire, value in fields(data):
        if number == 1:
            return _parse_list(value)
        if number == 2:
            return value.decode("utf-8", "replace")
        if number == 3:
            return _signed(value)
        if number == 6:
            return DType(value)
        if number == 4:
            return struct.unpack("<f", value)[0]
        if number == 5:
            return bool(value)
        if number == 7:
            return parse_shape(value)
        if number == 8:
            return parse_tensor(value)
    return None


@dataclasses.dataclass
class Node:
    """One NodeDef: ``inputs`` keep TensorFlow's spelling (``name:1``, ``^control``)."""

    name: str
    op: str
    inputs: List[str]
    attr: Dict[str, Any]

    @property
    def data_inputs(self) -> List[str]:
        """Producing node names of the data inputs (control inputs and ``:k`` dropped)."""
        return [i.split(":")[0] for i in self.inputs if not i.startswith("^")]


def _parse_node(data: bytes) -> Node:
    name, op, inputs, attr = "", "", [], {}
    for number, _, value in fields(data):
        if number == 1:
            name = value.decode("utf-8")
        elif number == 2:
            op = value.decode("utf-8")
        elif number == 3:
            inputs.append(value.decode("utf-8"))
        elif number == 5:
            key, attr_value = "", b""
            for sub, _, v in fields(value):
                if sub == 1:
                    key = v.decode("utf-8")
                elif sub == 2:
                    attr_value = v
            attr[key] = parse_attr(attr_value)
    return Node(name, op, inputs, attr)


def parse_graph(data: bytes) -> Dict[str, Node]:
    """GraphDef bytes -> {node name: Node}, in the file's order."""
    nodes: Dict[str, Node] = {}
    for number, wire, value in fields(data):
        if number == 1 and wire == LENGTH:
            node = _parse_node(value)
            if not node.name or not node.op:
                raise GraphDefError(f"a node without a name or op after {len(nodes)} nodes")
            if node.name in nodes:
                raise GraphDefError(f"node {node.name!r} appears twice")
            nodes[node.name] = node
    if not nodes:
        raise GraphDefError("no nodes")
    return nodes


def read_graph(path: str) -> Dict[str, Node]:
    """The nodes of the frozen graph at ``path``, with a clear error for other files."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return parse_graph(data)
    except GraphDefError as e:
        raise ValueError(f"{path} is not a frozen TensorFlow graph (GraphDef .pb): {e}.") from None


def constants(nodes: Dict[str, Node]) -> Dict[str, np.ndarray]:
    """{name: value} of every Const node."""
    return {n.name: n.attr["value"] for n in nodes.values() if n.op == "Const"}


# ----------------------------------------------------------------------------------------
# Writing: enough of the format to make test graphs and to edit a graph for another reader.

_NUMPY_TO_TF = {np.dtype(v): k for k, v in DTYPES.items()}


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are written as 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _length(number: int, payload: bytes) -> bytes:
    return _key(number, LENGTH) + _encode_varint(len(payload)) + payload


def _packed_varints(number: int, values) -> bytes:
    return _length(number, b"".join(_encode_varint(int(v)) for v in values))


def encode_shape(shape: Optional[Tuple[int, ...]]) -> bytes:
    if shape is None:
        return _key(3, VARINT) + _encode_varint(1)
    return b"".join(_length(2, _key(1, VARINT) + _encode_varint(int(d))) for d in shape)


def encode_tensor(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.dtype not in _NUMPY_TO_TF:
        raise GraphDefError(f"no TensorFlow dtype for numpy {array.dtype}")
    head = (_key(1, VARINT) + _encode_varint(_NUMPY_TO_TF[array.dtype])
            + _length(2, encode_shape(array.shape)))
    # TensorFlow writes one-value tensors as a typed value, and some readers (OpenCV's)
    # expect scalars there rather than in tensor_content.
    if array.size == 1 and array.dtype == np.float32:
        return head + _length(5, struct.pack("<f", float(array.reshape(()))))
    if array.size == 1 and array.dtype == np.int32:
        return head + _packed_varints(7, [int(array.reshape(()))])
    content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return head + _length(4, content)


def _encode_list(values: List) -> bytes:
    if all(isinstance(v, str) for v in values):
        return b"".join(_length(2, v.encode()) for v in values)
    if all(isinstance(v, DType) for v in values):
        return _packed_varints(6, values)
    if all(isinstance(v, bool) for v in values):
        return _packed_varints(5, values)
    if all(isinstance(v, int) for v in values):
        return _packed_varints(3, values)
    if all(isinstance(v, float) for v in values):
        return _length(4, struct.pack(f"<{len(values)}f", *values))
    if all(isinstance(v, np.ndarray) for v in values):
        return b"".join(_length(8, encode_tensor(v)) for v in values)
    return b"".join(_length(7, encode_shape(v)) for v in values)


def encode_attr(value: Any) -> bytes:
    """The inverse of :func:`parse_attr` (shapes are tuples, lists are lists)."""
    if isinstance(value, list):
        return _length(1, _encode_list(value))
    if isinstance(value, str):
        return _length(2, value.encode())
    if isinstance(value, DType):
        return _key(6, VARINT) + _encode_varint(value)
    if isinstance(value, (bool, np.bool_)):
        return _key(5, VARINT) + _encode_varint(int(value))
    if isinstance(value, int):
        return _key(3, VARINT) + _encode_varint(value)
    if isinstance(value, float):
        return _key(4, FIXED32) + struct.pack("<f", value)
    if isinstance(value, np.ndarray):
        return _length(8, encode_tensor(value))
    if value is None or isinstance(value, tuple):
        return _length(7, encode_shape(value))
    raise GraphDefError(f"cannot encode an attribute of type {type(value).__name__}")


def encode_node(node: Node) -> bytes:
    out = _length(1, node.name.encode()) + _length(2, node.op.encode())
    out += b"".join(_length(3, i.encode()) for i in node.inputs)
    for key, value in node.attr.items():
        out += _length(5, _length(1, key.encode()) + _length(2, encode_attr(value)))
    return out


def encode_graph(nodes) -> bytes:
    """GraphDef bytes of ``nodes`` (a dict or a sequence of Node), in their order."""
    values = nodes.values() if isinstance(nodes, dict) else nodes
    return b"".join(_length(1, encode_node(n)) for n in values)


def const_node(name: str, value: np.ndarray) -> Node:
    value = np.asarray(value)
    return Node(name, "Const", [], {"dtype": DType(_NUMPY_TO_TF[value.dtype]), "value": value})
