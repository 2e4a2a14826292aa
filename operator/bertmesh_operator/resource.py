"""The ModelDeployment resource as a whole (apiVersion, kind, metadata, spec, status) and its parsing.

`parse_model_deployment` is the one door through which a ModelDeployment enters Python, for `bertmesh render`
and for the operator alike; its error names every offending field by its path in the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.schema import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    DURATION,
    IMAGE,
    LABEL_KEY,
    LABEL_VALUE,
    QUANTITY,
    CelRule,
    CrdModel,
)
from bertmesh_operator.spec import ModelDeploymentSpec
from bertmesh_operator.spec.serving import STORAGE_URI
from bertmesh_operator.status_model import ModelDeploymentStatus

GROUP: Final = "serving.bertmesh.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "serving.bertmesh.io/v1alpha1"
KIND: Final = "ModelDeployment"
PLURAL = "modeldeployments"
# The Service is named after the ModelDeployment and the per-track objects add "-stable"/"-canary": the name
# must leave room for the suffix within a DNS-1035 label (63).
MAX_NAME_LENGTH = 52
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"


class ObjectMeta(CrdModel):
    """The part of metadata the operator reads; every other field is accepted and ignored."""

    model_config = CrdModel.model_config | ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    uid: Annotated[str, Field(max_length=64)] | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


def _name_fits(md: ModelDeployment) -> bool:
    name = md.metadata.name
    return len(name) <= MAX_NAME_LENGTH and re.fullmatch(_DNS1035, name) is not None


NAME_RULE = CelRule(
    rule=f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('^{_DNS1035}$')",
    message=f"metadata.name must be a DNS-1035 label (lower case, starting with a letter) of at most "
    f"{MAX_NAME_LENGTH} characters: it names the Service and the per-track objects",
    check=_name_fits,
)


class ModelDeployment(CrdModel):
    """A ModelDeployment object as stored by the API server."""

    model_config = CrdModel.model_config | ConfigDict(extra="ignore")
    cel_rules = (NAME_RULE,)

    api_version: Literal["serving.bertmesh.io/v1alpha1"] = API_VERSION
    kind: Literal["ModelDeployment"] = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def name(self) -> str:
        """The object's name."""
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The object's namespace ("default" when a manifest leaves it out, as kubectl does)."""
        return self.metadata.namespace or "default"


# What each grammar means, for people: a regular expression is not an error message.
PATTERN_HINTS = {
    STORAGE_URI: "must be pvc://<claim>[/<path>], s3://<bucket>/<path>, gs://<bucket>/<path> or https://<url>",
    QUANTITY: "must be a positive Kubernetes quantity such as 500m, 2 or 4Gi (written as a string)",
    DURATION: "must be a duration such as 30s, 1m30s or 2h",
    DNS1123_LABEL: "must be a DNS label: lower-case letters, digits and '-', alphanumeric at both ends",
    DNS1123_SUBDOMAIN: "must be a DNS name: lower-case letters, digits, '-' and '.'",
    IMAGE: "must be a container image reference such as ghcr.io/org/image:tag",
    LABEL_KEY: "must be a label key such as example.com/name",
    LABEL_VALUE: "must be a label value: at most 63 letters, digits, '-', '_' or '.'",
}


def _message(item: ErrorDetails) -> str:
    if item["type"] == "string_pattern_mismatch":
        pattern = str((item.get("ctx") or {}).get("pattern", ""))
        return PATTERN_HINTS.get(pattern, f"must match {pattern}")
    return item["msg"].removeprefix("Value error, ")


def format_errors(error: ValidationError) -> str:
    """Render pydantic errors as one line per field, with paths as they appear in the manifest."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(object)"
        lines.append(f"  {path}: {_message(item)}")
    return "\n".join(lines)


def parse_model_deployment(obj: Mapping[str, Any] | ModelDeployment) -> ModelDeployment:
    """Validate a ModelDeployment manifest (a dict as read from YAML or from the API server)."""
    if isinstance(obj, ModelDeployment):
        return obj
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind != KIND or api_version != API_VERSION:
        raise InvalidSpecError(f"expected apiVersion {API_VERSION} kind {KIND}, got {api_version} {kind}")
    try:
        return ModelDeployment.model_validate(obj, by_alias=True)
    except ValidationError as error:
        name = (obj.get("metadata") or {}).get("name", "?")
        raise InvalidSpecError(f"ModelDeployment {name!r} is invalid:\n{format_errors(error)}") from None
