"""Prediction bodies of JSON read into pixels: the instances of POST …/predict and the Open
Inference Protocol's infer request (its JSON, and the binary tensor data after it).

Parsing JSON holds the GIL from start to end: json, pydantic and numpy build their objects in C
without a pause in which another thread could run, so a body parsed in a thread stalls the
event loop as surely as one parsed on it (32 MiB of JSON holds it for seconds). A large body is
therefore read in a worker process of anyio's pool, while the loop goes on serving others; a
small one is read at once, where the hop would cost more than the parse. Every function here
that a worker runs is importable without Keras and returns or raises only what pickles.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_process
import numpy as np
from anyio import BrokenWorkerProcess, CapacityLimiter
from anyio.lowlevel import RunVar
from fastapi import HTTPException
from pydantic import ValidationError

from core.images import SIDE
from service.schemas import EncodedImage, InferenceRequest, InferenceRequestInput, PredictInstances
from service.tensors import HEADER_LENGTH, TensorError, cut, from_bytes, split_body
from service.tensors import from_json as tensor_from_json

T = TypeVar("T")

# JSON up to this size is read on the event loop: at most ~2 ms of parsing (about 25 µs a KiB),
# and the hop to a worker process and back costs ~1 ms. Larger JSON goes to a worker.
OFFLOAD_BYTES = 64 * 2**10
# Worker processes parsing at once, per API process: each takes a core while it parses.
PARSERS = 2
_parsers: RunVar[CapacityLimiter] = RunVar("tricklab_body_parsers")

# The model's interface on the Open Inference Protocol.
INPUT = "images"
INPUT_DATATYPES = ("UINT8", "FP32")
PROBABILITIES, LABELS = "probabilities", "labels"
OUTPUTS = {PROBABILITIES: "FP32", LABELS: "INT64"}


class BodyError(ValueError):
    """The body is not usable JSON for the route: a 400 with this message."""


class Invalid(ValueError):
    """The JSON breaks the request's schema: `errors` as pydantic lists them, each with its
    type, loc, msg and plain ctx (never the input, which may be megabytes)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


class ParserLost(RuntimeError):
    """The worker process reading a body died (out of memory, killed): a 503, to retry."""


async def read(function: Callable[..., T], body: bytes, *args: Any, json_bytes: int) -> T:
    """`function(body, *args)`: at once when the body's JSON is `json_bytes` ≤ OFFLOAD_BYTES,
    else in a worker process while the event loop serves other requests."""
    if json_bytes <= OFFLOAD_BYTES:
        return function(body, *args)
    try:
        limiter = _parsers.get()
    except LookupError:  # one per event loop, as anyio's own pool of workers is
        limiter = CapacityLimiter(PARSERS)
        _parsers.set(limiter)
    try:
        return await anyio.to_process.run_sync(function, body, *args, limiter=limiter)
    except BrokenWorkerProcess:
        raise ParserLost("the process reading the body was lost; send it again") from None


async def read_or_refuse(
    function: Callable[..., T],
    body: bytes,
    *args: Any,
    json_bytes: int,
    invalid: Callable[[list[dict[str, Any]]], Exception],
) -> T:
    """`read`, its refusals raised as HTTP errors: BodyError or TensorError a 400 with its
    message, ParserLost a 503 to retry a second later, and Invalid whatever `invalid` makes of
    its errors, as each door answers a broken schema in its own shape."""
    try:
        return await read(function, body, *args, json_bytes=json_bytes)
    except (BodyError, TensorError) as error:
        raise HTTPException(400, str(error)) from None
    except Invalid as error:
        raise invalid(error.errors) from None
    except ParserLost as error:
        raise HTTPException(503, str(error), {"Retry-After": "1"}) from None


def json_size(body_bytes: int, header_length: str | None) -> int:
    """The bytes of JSON in an infer body: all of it, or the Inference-Header-Content-Length
    (0 when that is no byte count: split_body refuses it at once)."""
    if header_length is None:
        return body_bytes
    text = header_length.strip()
    usable = text.isascii() and text.isdigit() and len(text) <= len(str(body_bytes))
    return min(int(text), body_bytes) if usable else 0


def _plain(error: ValidationError, *prefix: str) -> list[dict[str, Any]]:
    plain = []
    for problem in error.errors(include_url=False, include_input=False):
        context = {
            key: value
            for key, value in problem.get("ctx", {}).items()
            if isinstance(value, int | float | str)
        }
        plain.append({**problem, "loc": (*prefix, *problem["loc"]), "ctx": context})
    return plain


# ---- POST …/predict: {"instances": [...]} ------------------------------------------------


def predict_instances(body: bytes, max_instances: int) -> list[np.ndarray | bytes]:
    """The instances of a predict request's JSON, in order: each a 28×28 float32 array of
    pixels as sent, or the bytes of an image file (its base64 decoded). Raises BodyError or
    Invalid (with locations under "body", as FastAPI gives them)."""
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BodyError(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise BodyError("the body is not valid JSON: nested too deeply") from None
    except ValueError:  # int() refuses a literal longer than its limit of digits
        raise BodyError(
            f"the body holds a number of more than {sys.get_int_max_str_digits()} digits; "
            "pixels are numbers within 0–255"
        ) from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if isinstance(instances, list) and len(instances) > max_instances:
        raise BodyError(f"{len(instances)} instances; at most {max_instances} per request")
    try:
        request = PredictInstances.model_validate(document)
    except ValidationError as error:
        raise Invalid(_plain(error, "body")) from None
    return [
        instance.b64
        if isinstance(instance, EncodedImage)
        else np.asarray(instance, dtype=np.float32)
        for instance in request.instances
    ]


# ---- the Open Inference Protocol's infer request -----------------------------------------


@dataclass(frozen=True, slots=True)
class Wanted:
    """What an infer request asks for: its id, and each output wanted with whether it is
    binary."""

    id: str | None
    outputs: list[tuple[str, bool]]


def infer_request(
    body: bytes, header_length: str | None, max_images: int
) -> tuple[Wanted, np.ndarray]:
    """The request's outputs and its images, [N, 28, 28] on the 0–255 scale; raises
    TensorError naming what is wrong, or Invalid for JSON that breaks the request's schema."""
    header, binary = split_body(body, header_length)
    request = _parsed(header, body, header_length)
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(i.name) for i in request.inputs) or "none"
        raise TensorError(f"the model takes one input, {INPUT!r}; the request gives {names}")
    pixels = _images(request.inputs[0], binary, max_images)
    return Wanted(request.id, _outputs(request)), pixels


def _parsed(header: bytes, body: bytes, header_length: str | None) -> InferenceRequest:
    """The request's JSON, validated; TensorError when it is not JSON, Invalid when it breaks
    the schema."""
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as error:
        problems = error.errors()
        if problems[0]["type"] == "json_invalid":
            reason = problems[0]["msg"].removeprefix("Invalid JSON: ")
            hint = ""
            if header_length is not None:
                hint = f" ({HEADER_LENGTH} says the JSON is its first {len(header)} bytes)"
            elif b"binary_data_size" in body:
                hint = f" (binary tensor data needs the {HEADER_LENGTH} header)"
            raise TensorError(f"the request is not valid JSON: {reason}{hint}") from None
        raise Invalid(_plain(error)) from None


def _images(tensor: InferenceRequestInput, binary: memoryview, max_images: int) -> np.ndarray:
    """The input tensor as the model takes it, [N, 28, 28] pixels, 0–255: from its JSON data
    or from its bytes in `binary`, the body after the JSON."""
    what = f"input {INPUT!r}"
    if tensor.datatype not in INPUT_DATATYPES:
        raise TensorError(
            f"{what}: datatype {tensor.datatype!r}; the model takes {' or '.join(INPUT_DATATYPES)} "
            "pixels, 0–255"
        )
    shape = tensor.shape
    if len(shape) != 3 or shape[1:] != [SIDE, SIDE] or shape[0] < 1:
        raise TensorError(
            f"{what}: shape {shape}; the model takes [N, {SIDE}, {SIDE}]: N ≥ 1 images of "
            f"{SIDE}×{SIDE} pixels"
        )
    if shape[0] > max_images:
        raise TensorError(
            f"{what}: {shape[0]} images; at most {max_images} per request "
            "(TRICKLAB_MAX_PREDICT_INSTANCES)"
        )
    parameters = tensor.parameters or {}
    if "shared_memory_region" in parameters:
        raise TensorError(f"{what}: shared memory is not supported; send the data in the body")
    size = parameters.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise TensorError(f"{what}: binary_data_size must be a byte count, not {size!r}")
    if (size is None) == (tensor.data is None):
        raise TensorError(
            f"{what}: give either data (JSON) or parameters.binary_data_size (the bytes after "
            f"the JSON), not {'both' if size is not None else 'neither'}"
        )
    if size is None:
        (_,) = cut(binary, [None])  # no bytes may follow the JSON
        pixels = tensor_from_json(tensor.data, tensor.datatype, shape, what)
    else:
        (chunk,) = cut(binary, [size])
        assert chunk is not None
        pixels = from_bytes(chunk, tensor.datatype, shape, what)
    if pixels.dtype.kind == "f" and not (
        np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255
    ):
        raise TensorError(f"{what}: FP32 pixels must be finite numbers within 0–255")
    return pixels


def _outputs(request: InferenceRequest) -> list[tuple[str, bool]]:
    """Each output asked for (all, in order, if none is named), and whether it is binary."""
    binary_default = _flag(request.parameters, "binary_data_output", "the request") is True
    if not request.outputs:
        return [(name, binary_default) for name in OUTPUTS]
    wanted: list[tuple[str, bool]] = []
    for output in request.outputs:
        what = f"output {output.name!r}"
        if output.name not in OUTPUTS:
            raise TensorError(
                f"the model has no output {output.name!r}; its outputs are "
                f"{', '.join(map(repr, OUTPUTS))}"
            )
        if any(name == output.name for name, _ in wanted):
            raise TensorError(f"{what} is asked for twice")
        parameters = output.parameters or {}
        if "classification" in parameters:
            raise TensorError(
                f"{what}: the classification extension is not supported; ask for {LABELS!r} "
                f"(the most probable class) and {PROBABILITIES!r}"
            )
        if "shared_memory_region" in parameters:
            raise TensorError(f"{what}: shared memory is not supported")
        binary = _flag(parameters, "binary_data", what)
        wanted.append((output.name, binary_default if binary is None else binary))
    return wanted


def _flag(parameters: dict[str, Any] | None, name: str, where: str) -> bool | None:
    """A boolean parameter: None when it is not given."""
    value = (parameters or {}).get(name)
    if value is not None and not isinstance(value, bool):
        raise TensorError(f"{where}: {name} must be true or false, not {value!r}")
    return value
