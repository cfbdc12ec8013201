"""Tensors as the Open Inference Protocol carries them over HTTP (KServe V2, as Triton and
MLServer speak it), with its binary tensor data extension. Knows nothing of models or routes.

A request or response body is a JSON object, optionally followed by the raw bytes of some of
its tensors: then the `Inference-Header-Content-Length` header gives the JSON's length, each
binary tensor's `parameters.binary_data_size` its byte count, and the bytes follow in the order
the tensors are listed. Binary data is little-endian, row major, without padding. Tensors given
in JSON carry `data`: their elements in row-major order, flat or nested.

Every problem with a request is a TensorError whose message names the tensor and what is
wrong with it, for a 400.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol's fixed-size datatypes, little-endian (BYTES, of variable size, is left out).
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
# The kinds of numpy array (from JSON data) that a datatype's elements may be given as.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


class TensorError(ValueError):
    """The request breaks the protocol, or asks what this server cannot do: a 400."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it. `header_length`: the request's
    Inference-Header-Content-Length, None when the whole body is JSON."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise TensorError(f"{HEADER_LENGTH} must be a byte count, not {header_length!r}")
    # A count of more digits than the body's size is out of range (and int() refuses thousands).
    digits = text.lstrip("0") or "0"
    length = int(digits) if len(digits) <= len(str(len(body))) else len(body) + 1
    if length == 0 or length > len(body):
        shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} digits)"
        raise TensorError(
            f"{HEADER_LENGTH} is {shown}, but the body has {len(body)} bytes: it must give the "
            "length of the JSON object at the start of the body"
        )
    return body[:length], memoryview(body)[length:]


def cut(binary: memoryview, sizes: Sequence[int | None]) -> list[memoryview | None]:
    """The binary data after the JSON header cut into each tensor's bytes, in order: `sizes`
    are their binary_data_size parameters, None for a tensor given in JSON."""
    total = sum(size for size in sizes if size is not None)
    if total != len(binary):
        raise TensorError(
            f"the body has {len(binary)} bytes after its JSON header, but the inputs' "
            f"binary_data_size add up to {total}"
            + ("" if len(binary) else f" (is the {HEADER_LENGTH} header missing?)")
        )
    pieces: list[memoryview | None] = []
    start = 0
    for size in sizes:
        if size is None:
            pieces.append(None)
        else:
            pieces.append(binary[start : start + size])
            start += size
    return pieces


def from_bytes(data: memoryview, datatype: str, shape: Sequence[int], what: str) -> np.ndarray:
    """A binary tensor's bytes as an array of `shape` (read-only: no copy is made)."""
    dtype = _dtype(datatype, what)
    count = math.prod(shape)
    needed = count * dtype.itemsize
    if len(data) != needed:
        raise TensorError(
            f"{what}: {len(data)} bytes of binary data, but shape {list(shape)} of {datatype} "
            f"takes {needed} ({count} elements of {dtype.itemsize} bytes)"
        )
    return np.frombuffer(data, dtype).reshape(shape)


def from_json(data: Any, datatype: str, shape: Sequence[int], what: str) -> np.ndarray:
    """A tensor's JSON `data` (its elements in row-major order, flat or nested in any way)
    as an array of `shape` and `datatype`."""
    dtype = _dtype(datatype, what)
    try:
        values = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise TensorError(f"{what}: data must be an array of numbers, not ragged") from None
    kinds = _JSON_KINDS[dtype.kind]
    if values.dtype.kind not in kinds and values.size:  # [] is float64 to numpy
        expected = {"b": "true or false", "iu": "integers", "iuf": "numbers"}[kinds]
        within = ""
        if dtype.kind in "iu":  # numpy keeps integers beyond 64 bits as objects
            within = f", within {np.iinfo(dtype).min}–{np.iinfo(dtype).max}"
        raise TensorError(f"{what}: data must hold {expected} for {datatype}{within}")
    count = math.prod(shape)
    if values.size != count:
        raise TensorError(
            f"{what}: data holds {values.size} elements, but shape {list(shape)} takes {count}"
        )
    if dtype.kind in "iu" and values.size:
        limits = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < limits.min or high > limits.max:
            raise TensorError(
                f"{what}: {datatype} elements must be within {limits.min}–{limits.max}, "
                f"but data holds {low if low < limits.min else high}"
            )
    return values.astype(dtype).reshape(shape)


@dataclass(frozen=True)
class Output:
    """An output tensor of a response, in JSON or as binary data."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def encode_response(
    document: dict[str, Any], outputs: Sequence[Output]
) -> tuple[bytes, int | None]:
    """The response body: `document` with its "outputs", then the binary outputs' bytes; and
    the JSON's length when binary data follows it (the Inference-Header-Content-Length), else
    None. JSON numbers of a float32 tensor are written as the shortest decimal that reads back
    as the same float32."""
    listed: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for output in outputs:
        array = output.array
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(array.shape),
        }
        if output.binary:
            raw = np.ascontiguousarray(array, DATATYPES[output.datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            tensor["data"] = np.ascontiguousarray(array).reshape(-1)
        listed.append(tensor)
    header = orjson.dumps({**document, "outputs": listed}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def _dtype(datatype: str, what: str) -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise TensorError(
            f"{what}: unknown datatype {datatype!r}; the protocol's are "
            f"{', '.join(DATATYPES)} and BYTES"
        ) from None
