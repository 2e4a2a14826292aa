"""The chart's CRD is the operator's generated CRD, byte for byte, behind crds.enabled and crds.keep."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import yaml

from bertmesh_operator.crd import CRD_PATH
from bertmesh_operator.permissions import CLUSTER_RULES, RULES
from tests.charts.chart import REPO, Helm, by_kind

TEMPLATE = f"templates/crd-{CRD_PATH.name}"
KEEP = "  annotations:\n    # helm uninstall leaves the CRD, and so every ModelDeployment, in place.\n"
KEEP += "    helm.sh/resource-policy: keep\n"


def gen_chart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_chart", REPO / "hack" / "gen_chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_crd(helm: Helm, *sets: str) -> str:
    """The CRD document as the template renders it, without the frame helm prints around each document."""
    args = ["--show-only", TEMPLATE, *(f"--set={s}" for s in sets)]
    out = helm.template_text(extra=args).stdout
    # helm prints `---`, a `# Source:` line, the rendered text, then a blank line (the same for every template).
    head, tail = f"---\n# Source: bertmesh/{TEMPLATE}\n", "\n\n"
    assert out.startswith(head) and out.endswith(tail), out[:200]
    return out[len(head) : -len(tail)]


def test_generated_templates_are_current() -> None:
    gen = gen_chart()
    for path, text in gen.generated().items():
        assert path.read_text() == text, f"stale {path.name}: run `.venv/bin/python hack/gen_chart.py`"


def test_generator_check_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_chart.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_crd_without_keep_is_the_operators_file_byte_for_byte(helm: Helm) -> None:
    assert rendered_crd(helm, "crds.keep=false") == CRD_PATH.read_text()


def test_crd_with_keep_differs_only_by_the_keep_annotation(helm: Helm) -> None:
    text = rendered_crd(helm)
    name_line = "  name: modeldeployments.serving.bertmesh.io\n"
    assert text == CRD_PATH.read_text().replace(name_line, name_line + KEEP, 1)
    crd = yaml.safe_load(text)
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_helm_frames_every_document_the_same_way(helm: Helm) -> None:
    # What rendered_crd() strips, checked on a template whose last line is plain text.
    out = helm.template_text(extra=["--show-only", "templates/service.yaml"]).stdout
    assert out.startswith("---\n# Source: bertmesh/templates/service.yaml\n")
    assert out.endswith("      appProtocol: http\n\n\n")


def test_crds_disabled_renders_no_crd(helm: Helm) -> None:
    assert not by_kind(helm.template(values={"crds": {"enabled": False}}), "CustomResourceDefinition")


def test_template_delimiters_in_the_crd_are_printed_verbatim(helm: Helm) -> None:
    gen = gen_chart()
    crd = CRD_PATH.read_text().replace("canary.", "canary {{ .Values.x }}.", 1)
    template = gen.crd_template(crd)
    assert "{{ .Values.x }}" not in template
    assert '{{ "{{" }} .Values.x {{ "}}" }}' in template


def test_rules_template_lists_every_rule() -> None:
    text = gen_chart().rules_template(RULES, CLUSTER_RULES)
    own, cluster = text.split('{{- define "bertmesh.operatorClusterRules" -}}')
    assert own.count("- apiGroups:") == len(RULES)
    assert cluster.count("- apiGroups:") == len(CLUSTER_RULES) and "customresourcedefinitions" in cluster
    assert '"*"' not in text
