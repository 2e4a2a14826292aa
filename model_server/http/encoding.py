"""JSON bodies and vectors as the HTTP routes send them: orjson, float32 shortest decimals, base64, dimensions."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from model_server.errors import InvalidArgument
from model_server.postprocess import l2_normalize
from model_server.tasks import FloatArray

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JsonResponse(Response):
    """A JSON response serialised by orjson: numpy float32 arrays as their shortest decimals, no float64 noise."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """The body's bytes."""
        return orjson.dumps(content, option=_JSON_OPTIONS)


def check_dimensions(dimensions: int | None, model_dimensions: int, field: str = "dimensions") -> int | None:
    """A requested vector width: None (the model's), or 1..the model's width."""
    if dimensions is None or dimensions == model_dimensions:
        return None
    if not 1 <= dimensions <= model_dimensions:
        raise InvalidArgument(f"{field}: {dimensions} is outside 1..{model_dimensions}, the model's dimensions")
    return dimensions


def shorten(vector: FloatArray, dimensions: int | None, normalize: bool) -> FloatArray:
    """The vector's first `dimensions` values (None: all), L2-normalised again when the request normalises
    (Matryoshka truncation, as OpenAI's `dimensions` does)."""
    if dimensions is None:
        return vector
    head = vector[:dimensions]
    return l2_normalize(head) if normalize else head


def base64_floats(vector: FloatArray) -> str:
    """Little-endian float32 bytes in base64: what the OpenAI SDK decodes for encoding_format=base64."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


def float_list(vector: FloatArray) -> FloatArray:
    """A vector as a JSON array of float32 values (orjson writes float32 at float32 precision)."""
    return np.ascontiguousarray(vector, dtype=np.float32)
