"""The Open Inference Protocol's tensors on the wire: the JSON header and the binary data after
it, each tensor's bytes and JSON data, and responses that the stock Triton client reads."""

import json

import numpy as np
import orjson
import pytest

from service.tensors import (
    DATATYPES,
    Output,
    TensorError,
    cut,
    encode_response,
    from_bytes,
    from_json,
    split_body,
)

SIZES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4}
SIZES |= {"INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}


def test_the_datatypes_are_the_protocols_little_endian_with_their_sizes():
    assert {name: dtype.itemsize for name, dtype in DATATYPES.items()} == SIZES
    assert all(dtype.byteorder in "<|=" for dtype in DATATYPES.values())
    assert np.dtype("<f4").newbyteorder("<") == DATATYPES["FP32"]


def test_the_body_splits_at_the_header_length():
    header, binary = split_body(b'{"a": 1}\x01\x02', "8")
    assert header == b'{"a": 1}' and bytes(binary) == b"\x01\x02"
    header, binary = split_body(b'{"a": 1}', None)  # all JSON
    assert header == b'{"a": 1}' and len(binary) == 0
    assert bytes(split_body(b"{}", " 2 ")[1]) == b""


@pytest.mark.parametrize(
    ("length", "message"),
    [
        ("-1", "must be a byte count, not '-1'"),
        ("1e3", "must be a byte count"),
        ("٣", "must be a byte count"),  # a digit, but not an ASCII one
        ("0", "is 0, but the body has 4 bytes"),
        ("5", "is 5, but the body has 4 bytes"),
    ],
)
def test_a_header_length_that_cannot_be_is_named(length, message):
    with pytest.raises(TensorError, match="Inference-Header-Content-Length") as refused:
        split_body(b"{}ab", length)
    assert message in str(refused.value)


def test_the_binary_data_is_cut_in_the_order_of_the_tensors():
    pieces = cut(memoryview(b"aabbbc"), [2, None, 3, 1])
    assert [None if p is None else bytes(p) for p in pieces] == [b"aa", None, b"bbb", b"c"]
    assert cut(memoryview(b""), [None, 0]) == [None, memoryview(b"")]
    with pytest.raises(TensorError, match="has 6 bytes after its JSON header, but the inputs' "):
        cut(memoryview(b"aabbbc"), [2, 3])
    with pytest.raises(TensorError, match="add up to 784 \\(is the Inference-Header-Content-"):
        cut(memoryview(b""), [784])
    with pytest.raises(TensorError, match="has 2 bytes after"):
        cut(memoryview(b"ab"), [None])  # bytes that no tensor claims


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_binary_tensors_read_back_as_written(datatype):
    values = (np.arange(24) % 2 if datatype == "BOOL" else np.arange(24)).reshape(2, 3, 4)
    array = values.astype(DATATYPES[datatype])
    read = from_bytes(memoryview(array.tobytes()), datatype, [2, 3, 4], "input 'x'")
    assert read.shape == (2, 3, 4) and read.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(read, array)


def test_binary_data_is_little_endian():
    read = from_bytes(memoryview(b"\x01\x00\x00\x00\x00\x00\x80\x3f"), "INT32", [2], "x")
    assert read.tolist() == [1, 1065353216]
    assert from_bytes(memoryview(b"\x00\x00\x80\x3f"), "FP32", [1], "x").tolist() == [1.0]


def test_a_byte_count_that_does_not_fit_the_shape_is_named():
    with pytest.raises(TensorError) as refused:
        from_bytes(memoryview(bytes(783)), "UINT8", [1, 28, 28], "input 'images'")
    assert str(refused.value) == (
        "input 'images': 783 bytes of binary data, but shape [1, 28, 28] of UINT8 takes 784 "
        "(784 elements of 1 bytes)"
    )
    with pytest.raises(TensorError, match="takes 3136 \\(784 elements of 4 bytes\\)"):
        from_bytes(memoryview(bytes(784)), "FP32", [1, 28, 28], "x")
    with pytest.raises(TensorError, match="unknown datatype 'BYTES'; the protocol's are BOOL"):
        from_bytes(memoryview(b""), "BYTES", [0], "x")


def test_json_data_may_be_flat_or_nested():
    nested = from_json([[1, 2, 3], [4, 5, 6]], "UINT8", [2, 3], "x")
    flat = from_json([1, 2, 3, 4, 5, 6], "UINT8", [2, 3], "x")
    assert nested.dtype == flat.dtype == np.uint8
    np.testing.assert_array_equal(nested, flat)
    assert from_json([0, 1.5, 255], "FP32", [3], "x").tolist() == [0, 1.5, 255]
    assert from_json([1, 2], "FP32", [2], "x").dtype == np.float32  # integers are numbers
    assert from_json([True, False], "BOOL", [2], "x").tolist() == [True, False]
    assert from_json([], "UINT8", [0, 28, 28], "x").shape == (0, 28, 28)


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        ([[1, 2], [3]], "UINT8", "data must be an array of numbers, not ragged"),
        ([1, "2"], "UINT8", "data must hold integers for UINT8"),
        ([1, None], "FP32", "data must hold numbers for FP32"),
        ([1.5, 2], "UINT8", "data must hold integers for UINT8"),
        ([True, False], "UINT8", "data must hold integers for UINT8"),
        ([1, 2], "BOOL", "data must hold true or false for BOOL"),
        ([{"a": 1}, 2], "FP32", "data must hold numbers"),
        ([1, 256], "UINT8", "UINT8 elements must be within 0–255, but data holds 256"),
        ([-1, 2], "UINT8", "within 0–255, but data holds -1"),
        ([2**70, 1], "INT64", "data must hold integers for INT64"),
        ([1, 2, 3], "UINT8", "data holds 3 elements, but shape [2, 2] takes 4"),
        ([1], "STRING", "unknown datatype 'STRING'"),
    ],
)
def test_json_data_that_does_not_fit_is_named(data, datatype, message):
    shape = [2, 2] if "shape" in message else [len(data)]
    with pytest.raises(TensorError) as refused:
        from_json(data, datatype, shape, "input 'images'")
    assert str(refused.value).startswith("input 'images': ")
    assert message in str(refused.value)


def test_json_data_nested_deeper_than_numpy_allows_is_refused():
    deep: list = [1]
    for _ in range(100):
        deep = [deep]
    with pytest.raises(TensorError, match="data must"):
        from_json(deep, "UINT8", [1], "x")


PROBABILITIES = np.array([[0.047864623, 0.9521354], [1.0, 0.0]], np.float32)
LABELS = np.array([1, 0], np.int64)


def test_a_json_response_writes_flat_data_with_shortest_float32s():
    body, header_length = encode_response(
        {"model_name": "m", "id": "7"},
        [Output("probabilities", "FP32", PROBABILITIES, binary=False)],
    )
    assert header_length is None
    document = json.loads(body)
    assert document == {
        "model_name": "m",
        "id": "7",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 2],
                "data": [0.047864623, 0.9521354, 1.0, 0.0],
            }
        ],
    }
    assert b"0.047864623," in body  # not the float64 0.04786462336778641


def test_binary_outputs_follow_the_json_in_order():
    body, header_length = encode_response(
        {"model_name": "m"},
        [
            Output("labels", "INT64", LABELS, binary=True),
            Output("probabilities", "FP32", PROBABILITIES, binary=False),
            Output("again", "FP32", PROBABILITIES[:1], binary=True),
        ],
    )
    assert header_length is not None
    document = orjson.loads(body[:header_length])
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in document["outputs"]]
    assert sizes == [16, None, 8] and "data" not in document["outputs"][0]
    rest = body[header_length:]
    assert rest == LABELS.astype("<i8").tobytes() + PROBABILITIES[:1].astype("<f4").tobytes()


def test_the_triton_client_reads_responses_and_writes_requests_we_read():
    httpclient = pytest.importorskip("tritonclient.http")
    body, header_length = encode_response(
        {"model_name": "m"},
        [
            Output("probabilities", "FP32", PROBABILITIES, binary=True),
            Output("labels", "INT64", LABELS, binary=False),
        ],
    )
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), PROBABILITIES)
    np.testing.assert_array_equal(result.as_numpy("labels"), LABELS)

    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28) % 256
    first = httpclient.InferInput("a", [2, 28, 28], "UINT8")
    first.set_data_from_numpy(images.astype(np.uint8))
    second = httpclient.InferInput("b", [2, 28, 28], "FP32")
    second.set_data_from_numpy(images.astype(np.float32), binary_data=False)
    third = httpclient.InferInput("c", [2, 28, 28], "FP32")
    third.set_data_from_numpy(images.astype(np.float32))
    request, json_size = httpclient.InferenceServerClient.generate_request_body(
        [first, second, third]
    )
    header, binary = split_body(request, str(json_size))
    document = json.loads(header)
    sizes = [i.get("parameters", {}).get("binary_data_size") for i in document["inputs"]]
    pieces = cut(binary, sizes)
    read = [
        from_json(i["data"], i["datatype"], i["shape"], i["name"])
        if piece is None
        else from_bytes(piece, i["datatype"], i["shape"], i["name"])
        for i, piece in zip(document["inputs"], pieces, strict=True)
    ]
    assert [r.dtype for r in read] == [np.uint8, np.float32, np.float32]
    for array in read:
        np.testing.assert_array_equal(array, images)
