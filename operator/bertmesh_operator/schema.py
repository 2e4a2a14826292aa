"""Building blocks shared by the spec and status models: the base model, CEL rules, bounded string types.

Cross-field rules are written once, as a `CelRule` holding both the CEL expression the API server evaluates
(`x-kubernetes-validations` in the generated CRD) and the Python predicate pydantic evaluates (offline render,
and specs that reach the operator some other way). Tests check that the two agree on the same examples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Kubernetes name grammars (apimachinery validation), written for RE2 so the API server can run them too.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# resource.Quantity without a sign: "500m", "2", "1.5", "16Gi", "1e3".
QUANTITY = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# A Go/CEL duration restricted to h, m, s parts in that order ("90s", "1m30s", "2h").
DURATION = r"^([0-9]{1,4}h)?([0-9]{1,5}m)?([0-9]{1,6}s)?$"
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
Quantity = Annotated[str, Field(min_length=1, max_length=32, pattern=QUANTITY)]
Duration = Annotated[str, Field(min_length=2, max_length=16, pattern=DURATION)]

_DURATION_PART = re.compile(r"([0-9]+)([hms])")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}


def duration_seconds(text: str) -> int:
    """Return the number of seconds in a duration such as "1m30s"."""
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def quantity_value(text: str) -> float:
    """Return a resource quantity as a plain number ("500m" -> 0.5, "2Gi" -> 2147483648.0)."""
    suffixes = {
        "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
    }  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?", text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    if suffix is None:
        return float(number)
    if suffix[0] in "eE":
        return float(number + suffix)
    return float(number) * suffixes[suffix]


@dataclass(frozen=True)
class CelRule:
    """One cross-field rule: the CEL the API server runs and the Python predicate pydantic runs."""

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_crd(self) -> dict[str, str]:
        """Return the rule as an `x-kubernetes-validations` entry."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        return entry


class CrdModel(BaseModel):
    """Base of every spec and status model: frozen, camelCase on the wire, unknown fields refused."""

    # Unknown fields are refused here (a typo in `bertmesh render` input is an error) while the API server
    # prunes them; both sides therefore see the same object.
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Add the class's CEL rules to its JSON schema as `x-kubernetes-validations`."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.cel_rules:
            target["x-kubernetes-validations"] = [rule.to_crd() for rule in cls.cel_rules]
        return schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> CrdModel:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """Return the object as it appears in Kubernetes: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
