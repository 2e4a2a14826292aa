"""Open Inference Protocol v2 tensors: the BYTES text input in, FP32 and BYTES outputs out (pure functions).

Raw BYTES contents are, per element, a 4-byte little-endian length and that many bytes. Each task module builds
its own output tensors with these (see model_server.tasks); the OIP servicer decodes and answers with them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model_server.errors import InvalidArgument
from model_server.proto.inference import grpc_service_pb2 as oip

INPUT_NAME = "text"
Parameters = Mapping[str, oip.InferParameter]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class OutputTensor:
    """One output: name, datatype, shape and its raw little-endian contents."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


def decode_bytes_elements(raw: bytes, field: str) -> list[bytes]:
    """Splits raw BYTES contents into elements."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"{field}: truncated BYTES element length at byte {offset}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidArgument(
                f"{field}: BYTES element {len(out)} declares {size} bytes, {len(raw) - offset} remain"
            )
        out.append(raw[offset : offset + size])
        offset += size
    return out


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """Joins elements into raw BYTES contents."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def texts_from_request(request: oip.ModelInferRequest) -> list[str]:
    """The texts of the request's single BYTES input, shape [N] or [N, 1], as UTF-8 strings."""
    if len(request.inputs) != 1:
        names = [t.name for t in request.inputs]
        raise InvalidArgument(f"inputs: expected exactly one input tensor {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    field = f"inputs[0] ({tensor.name!r})"
    if tensor.name != INPUT_NAME:
        raise InvalidArgument(f"inputs[0].name: expected {INPUT_NAME!r}, got {tensor.name!r}")
    if tensor.datatype != "BYTES":
        raise InvalidArgument(f"{field}.datatype: expected BYTES, got {tensor.datatype!r}")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise InvalidArgument(f"{field}.shape: expected [N] or [N, 1], got {shape}")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(f"raw_input_contents: {len(request.raw_input_contents)} entries for 1 input tensor")
        if tensor.HasField("contents"):
            raise InvalidArgument(f"{field}.contents: must be empty when raw_input_contents is used")
        elements = decode_bytes_elements(request.raw_input_contents[0], "raw_input_contents[0]")
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise InvalidArgument(f"{field}: shape {shape} declares {shape[0]} elements, contents hold {len(elements)}")
    texts = []
    for i, element in enumerate(elements):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"{field}[{i}]: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return texts


def parameter(params: Parameters, name: str, kind: type) -> object | None:
    """A request parameter of the given Python type (bool, int or str), or None when absent."""
    if name not in params:
        return None
    value = params[name]
    choice = value.WhichOneof("parameter_choice")
    expected = {bool: "bool_param", int: "int64_param", str: "string_param"}[kind]
    if choice == "uint64_param" and kind is int:
        return int(value.uint64_param)
    if choice != expected:
        raise InvalidArgument(f"parameters[{name!r}]: expected a {kind.__name__} parameter, got {choice}")
    found: object = getattr(value, expected)
    return found


def select_outputs(
    outputs: Sequence[OutputTensor], requested: Sequence[oip.ModelInferRequest.InferRequestedOutputTensor]
) -> list[OutputTensor]:
    """The outputs the caller asked for, in its order (all when it asked for none)."""
    if not requested:
        return list(outputs)
    by_name = {o.name: o for o in outputs}
    chosen = []
    for i, want in enumerate(requested):
        if want.name not in by_name:
            raise InvalidArgument(f"outputs[{i}].name: unknown output {want.name!r}; this model has {sorted(by_name)}")
        chosen.append(by_name[want.name])
    return chosen


def float_matrix(name: str, rows: Sequence[FloatArray], width: int) -> OutputTensor:
    """An FP32 [N, width] output of one row per input."""
    matrix = np.asarray(rows, dtype="<f4").reshape(len(rows), width)
    return OutputTensor(name, "FP32", matrix.shape, matrix.tobytes())


def json_elements(name: str, documents: Sequence[object]) -> OutputTensor:
    """A BYTES [N] output of one JSON document per input."""
    encoded = [json.dumps(doc).encode() for doc in documents]
    return OutputTensor(name, "BYTES", (len(documents),), encode_bytes_elements(encoded))


def infer_response(
    request: oip.ModelInferRequest, model_name: str, version: str, outputs: Sequence[OutputTensor]
) -> oip.ModelInferResponse:
    """A ModelInferResponse carrying every output as raw contents."""
    response = oip.ModelInferResponse(model_name=model_name, model_version=version, id=request.id)
    for out in outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.shape))
        response.raw_output_contents.append(out.raw)
    return response
