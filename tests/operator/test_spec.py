"""The ModelDeployment spec: defaults a user can rely on, and every rule refusing what it should."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.spec import DEFAULT_IMAGE, ModelDeploymentSpec

MakeManifest = Callable[..., dict[str, Any]]


def test_minimal_spec_gets_documented_defaults(make_md: MakeManifest) -> None:
    spec = parse_model_deployment(make_md()).spec
    assert spec.model.task == "auto"
    assert spec.runtime.image == DEFAULT_IMAGE
    assert spec.runtime.precision == "auto"
    assert (spec.runtime.max_batch_tokens, spec.runtime.max_queued_tokens) == (16384, 262144)
    assert (spec.resources.gpus, spec.resources.cpu, spec.resources.memory) == (0, "1", "2Gi")
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (1, 3)
    assert (spec.autoscaling.metric, spec.autoscaling.effective_target(spec.resources.gpus)) == ("queuedTokens", 512)
    assert spec.traffic.canary is None
    assert (spec.traffic.timeout, spec.traffic.retry_attempts) == ("30s", 2)
    policy = spec.traffic.policy
    assert policy.schedule == (10, 20, 30, 40, 50)
    assert (policy.interval, policy.threshold, policy.progress_deadline) == ("1m", 3, "10m")
    assert (policy.analysis.min_success_rate, policy.analysis.max_p99_latency_ms) == (0.99, 1000)
    assert (policy.header_pin.name, policy.header_pin.value) == ("x-bertmesh-track", "canary")
    assert spec.rate_limit is None
    assert spec.access.allowed_callers is None


@pytest.mark.parametrize(
    ("metric", "gpus", "target"),
    [("inflight", 0, 16), ("queuedTokens", 1, 16384), ("queuedTokens", 0, 512), ("cpu", 0, 70), ("cpu", 1, 70)],
)
def test_autoscaling_target_defaults_per_metric(make_md: MakeManifest, metric: str, gpus: int, target: int) -> None:
    spec = parse_model_deployment(make_md({"autoscaling": {"metric": metric}})).spec
    assert spec.autoscaling.effective_target(gpus) == target


CANARY = {"model": {"storageUri": "pvc://models/v2"}}
# Each case: a spec fragment and the message the rule refuses it with (None: accepted).
RULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("min<=max ok", {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}}, None),
    ("min>max", {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}}, "minReplicas must not exceed"),
    ("cpu target", {"autoscaling": {"metric": "cpu", "target": 1001}}, "utilisation percentage"),
    ("inflight big target ok", {"autoscaling": {"metric": "inflight", "target": 5000}}, None),
    ("steps ascending", {"traffic": {"canary": CANARY | {"steps": [5, 25, 50]}}}, None),
    ("steps equal", {"traffic": {"canary": CANARY | {"steps": [5, 5]}}}, "strictly ascending"),
    ("steps descending", {"traffic": {"canary": CANARY | {"steps": [50, 25]}}}, "strictly ascending"),
    ("steps over 100", {"traffic": {"canary": CANARY | {"steps": [5, 101]}}}, "less than or equal to 100"),
    ("step zero", {"traffic": {"canary": CANARY | {"steps": [0, 10]}}}, "greater than or equal to 1"),
    ("steps and stepWeight", {"traffic": {"canary": CANARY | {"steps": [5], "stepWeight": 5}}}, "not both"),
    ("step over max", {"traffic": {"canary": CANARY | {"steps": [5, 60], "maxWeight": 50}}}, "at most max"),
    ("stepWeight over max", {"traffic": {"canary": CANARY | {"stepWeight": 60, "maxWeight": 50}}}, "at most"),
    ("canary without change", {"traffic": {"canary": {"steps": [10]}}}, "needs a model or runtime override"),
    ("empty override", {"traffic": {"canary": {"model": {}}}}, "at least one field"),
    ("runtime-only canary", {"traffic": {"canary": {"runtime": {"precision": "fp32"}}}}, None),
    ("interval too short", {"traffic": {"canary": CANARY | {"interval": "5s"}}}, "interval must be between"),
    ("interval too long", {"traffic": {"canary": CANARY | {"interval": "2h"}}}, "interval must be between"),
    ("interval composite", {"traffic": {"canary": CANARY | {"interval": "1m30s"}}}, None),
    ("deadline", {"traffic": {"canary": CANARY | {"progressDeadline": "30s"}}}, "progressDeadline must be"),
    ("timeout", {"traffic": {"timeout": "0s"}}, "timeout must be between"),
    ("burst >= rps", {"rateLimit": {"requestsPerSecond": 10, "burst": 5}}, "burst must be at least"),
    ("burst default", {"rateLimit": {"requestsPerSecond": 10}}, None),
    ("queue < batch", {"runtime": {"maxBatchTokens": 4096, "maxQueuedTokens": 1024}}, "maxQueuedTokens must"),
    ("input > batch", {"runtime": {"maxBatchTokens": 256, "maxTokensPerInput": 512}}, "maxTokensPerInput"),
    ("fp16 on cpu", {"runtime": {"precision": "fp16"}}, "precision fp16/bf16 needs gpus"),
    ("fp16 on gpu", {"runtime": {"precision": "fp16"}, "resources": {"gpus": 1}}, None),
    ("int8 on gpu", {"runtime": {"precision": "int8"}, "resources": {"gpus": 1}}, "int8 is CPU-only"),
    ("pvc parent", {"model": {"storageUri": "pvc://models/../etc"}}, "must not contain '..'"),
    ("pvc secret", {"model": {"storageUri": "pvc://m/x", "secretName": "s"}}, "needs no credentials"),
    ("s3 secret", {"model": {"storageUri": "s3://bucket/x", "secretName": "s"}}, None),
    ("ftp scheme", {"model": {"storageUri": "ftp://host/x"}}, "must be pvc://<claim>"),
    ("https", {"model": {"storageUri": "https://example.com/minilm.tar.gz"}}, None),
    ("gs", {"model": {"storageUri": "gs://bucket/path/to/model"}}, None),
    ("zero cpu", {"resources": {"cpu": "0"}}, "cpu must be greater than zero"),
    ("millicpu", {"resources": {"cpu": "500m"}}, None),
    ("bad quantity", {"resources": {"memory": "2GB"}}, "Kubernetes quantity such as 500m"),
    ("exists+value", {"resources": {"tolerations": [{"operator": "Exists", "value": "v"}]}}, "not set value"),
    ("node selector key", {"resources": {"nodeSelector": {"bad key": "v"}}}, "must be a label key"),
    ("unknown field", {"runtime": {"maxBatchToken": 10}}, "Extra inputs are not permitted"),
    ("callers", {"access": {"allowedCallers": [{"namespace": "web", "serviceAccount": "api"}]}}, None),
    ("no callers", {"access": {"allowedCallers": []}}, "at least 1 item"),
    (
        "pin upper case",
        {"traffic": {"canary": CANARY | {"headerPin": {"name": "X-Pin"}}}},
        r"must match \^\[a-z0-9\]",
    ),
]


@pytest.mark.parametrize(("case", "fragment", "error"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_rules(make_md: MakeManifest, case: str, fragment: dict[str, Any], error: str | None) -> None:
    if error is None:
        parse_model_deployment(make_md(fragment))
        return
    with pytest.raises(InvalidSpecError, match=error):
        parse_model_deployment(make_md(fragment))


@pytest.mark.parametrize("name", ["Minilm", "9lives", "a" * 53, "has.dot"])
def test_names_that_cannot_name_a_service_are_refused(make_md: MakeManifest, name: str) -> None:
    with pytest.raises(InvalidSpecError):
        parse_model_deployment(make_md(name=name))


def test_errors_name_each_field_by_its_manifest_path(make_md: MakeManifest) -> None:
    bad = make_md({"autoscaling": {"maxReplicas": 0}, "resources": {"gpus": 99}})
    with pytest.raises(InvalidSpecError) as info:
        parse_model_deployment(bad)
    text = str(info.value)
    assert "'minilm' is invalid" in text
    assert "spec.autoscaling.maxReplicas: Input should be greater than or equal to 1" in text
    assert "spec.resources.gpus: Input should be less than or equal to 1" in text


def test_wrong_kind_is_refused(make_md: MakeManifest) -> None:
    with pytest.raises(InvalidSpecError, match="expected apiVersion"):
        parse_model_deployment(make_md() | {"kind": "Deployment"})


def test_canary_overrides_merge_over_the_base(make_md: MakeManifest) -> None:
    spec = parse_model_deployment(
        make_md(
            {
                "model": {"revision": "v1", "task": "embedding"},
                "traffic": {"canary": {"model": {"storageUri": "pvc://models/v2", "revision": "v2"}}},
            }
        )
    ).spec
    desired = spec.desired_serving
    assert desired.model.storage_uri == "pvc://models/v2"
    assert (desired.model.revision, desired.model.task) == ("v2", "embedding")
    assert spec.base_serving.model.revision == "v1"
    assert desired.revision != spec.base_serving.revision


def test_an_override_that_breaks_a_rule_is_refused_at_parse(make_md: MakeManifest) -> None:
    bad = make_md({"traffic": {"canary": {"runtime": {"maxBatchTokens": 128}}}})
    with pytest.raises(InvalidSpecError, match=r"the candidate .* is invalid: runtime: .*maxTokensPerInput"):
        parse_model_deployment(bad)


def test_a_new_storage_uri_brings_its_own_credentials_and_version(make_md: MakeManifest) -> None:
    base = {"storageUri": "gs://bucket/v1", "secretName": "gcs", "revision": "v1"}
    to_pvc = make_md({"model": base, "traffic": {"canary": {"model": {"storageUri": "pvc://models/v2"}}}})
    model = parse_model_deployment(to_pvc).spec.desired_serving.model
    assert (model.storage_uri, model.secret_name, model.revision) == ("pvc://models/v2", None, None)
    relabel = make_md({"model": base, "traffic": {"canary": {"model": {"revision": "v1-fixed"}}}})
    model = parse_model_deployment(relabel).spec.desired_serving.model
    assert (model.storage_uri, model.secret_name, model.revision) == ("gs://bucket/v1", "gcs", "v1-fixed")


def test_revision_tracks_model_and_runtime_only(make_md: MakeManifest) -> None:
    def revision(fragment: dict[str, Any]) -> str:
        return parse_model_deployment(make_md(fragment)).spec.base_serving.revision

    base = revision({})
    assert revision({}) == base
    assert revision({"resources": {"cpu": "4"}, "autoscaling": {"maxReplicas": 9}}) == base
    assert revision({"runtime": {"maxBatchTokens": 8192}}) != base
    assert revision({"model": {"revision": "v7"}}) != base
    # Writing a default explicitly changes nothing.
    assert revision({"runtime": {"maxBatchTokens": 16384}, "model": {"task": "auto"}}) == base


@pytest.mark.parametrize(
    ("fragment", "schedule"),
    [
        ({"steps": [5, 25, 50]}, (5, 25, 50)),
        ({"stepWeight": 20}, (20, 40, 50)),
        ({"stepWeight": 30, "maxWeight": 80}, (30, 60, 80)),
        ({"stepWeight": 60}, (60,)),
        ({"stepWeight": 25, "maxWeight": 100}, (25, 50, 75, 100)),
        ({"steps": [10, 20], "maxWeight": 40}, (10, 20)),
    ],
)
def test_schedules(make_md: MakeManifest, fragment: dict[str, Any], schedule: tuple[int, ...]) -> None:
    spec = parse_model_deployment(make_md({"traffic": {"canary": CANARY | fragment}})).spec
    assert spec.traffic.policy.schedule == schedule
    assert max(schedule) <= spec.traffic.policy.effective_max_weight


def test_models_are_frozen(make_md: MakeManifest) -> None:
    spec = parse_model_deployment(make_md()).spec
    with pytest.raises(ValueError, match="frozen"):
        spec.autoscaling.max_replicas = 9
    assert isinstance(spec, ModelDeploymentSpec)


def test_node_selector_keys_must_be_label_keys(make_md: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(InvalidSpecError, match="nodeSelector"):
        parse_model_deployment(make_md({"resources": {"nodeSelector": {"bad key!": "x"}}}))
    parse_model_deployment(make_md({"resources": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}}))
