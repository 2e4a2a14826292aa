"""The Dockerfiles, checked with what runs here (no Docker engine): pinned bases, non-root users that match the
pods, the commands the operator and the chart run, each image carrying only its own side of `bertmesh`, and an
operator image without torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from bertmesh_operator.render import render
from bertmesh_operator.render.deployment import SERVER_UID
from tests.distributions import dependency_closure

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
SERVER = IMAGES / "model-server" / "Dockerfile"
OPERATOR = IMAGES / "operator" / "Dockerfile"
# What a CUDA torch install pulls (torch, triton, the nvidia-* and cuda-* wheels): none may reach the operator.
HEAVY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|transformers|tokenizers|safetensors|sentence-transformers)$")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword and its arguments, continuation lines joined."""

    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions in order (comments and blank lines dropped, `\\` continuations joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip()))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    return dict(ins.args.split("=", 1) for ins in instructions if ins.keyword == "ARG" and "=" in ins.args)


def base_images(instructions: list[Instruction]) -> list[str]:
    """Every FROM image with ARG defaults substituted (stage names dropped)."""
    defaults = arg_defaults(instructions)
    images = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return images


def exec_form(ins: Instruction) -> list[str]:
    value: list[str] = json.loads(ins.args)
    return value


@pytest.mark.parametrize("dockerfile", [SERVER, OPERATOR], ids=["model-server", "operator"])
def test_base_images_are_pinned(dockerfile: Path) -> None:
    for image in base_images(parse(dockerfile)):
        if "@sha256:" in image:
            assert re.search(r"@sha256:[a-f0-9]{64}$", image), image
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{image}: pin a tag or a digest"
        assert re.match(r"^\d+\.\d+\.\d+-", tag), f"{image}: pin the full version, not a moving tag"


@pytest.mark.parametrize("dockerfile", [SERVER, OPERATOR], ids=["model-server", "operator"])
def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    (user,) = [ins.args for ins in final_stage(parse(dockerfile)) if ins.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user}: numeric, so runAsNonRoot can verify it"
    assert int(uid) != 0 and int(gid) != 0


@pytest.mark.parametrize("dockerfile", [SERVER, OPERATOR], ids=["model-server", "operator"])
def test_copies_only_what_dockerignore_lets_in(dockerfile: Path) -> None:
    allowed = {
        line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for ins in parse(dockerfile):
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            *sources, _ = ins.args.split()
            for source in sources:
                assert source in allowed, f"{source} is not in the build context (.dockerignore)"
                assert (REPO / source).exists(), source


def test_model_server_image_fits_the_pods_the_operator_renders() -> None:
    instructions = final_stage(parse(SERVER))
    md = {
        "apiVersion": "serving.bertmesh.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ml"},
        "spec": {"model": {"storageUri": "pvc://models/m"}, "resources": {"gpus": 1}},
    }
    (deployment,) = [o for o in render(md) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    (entrypoint,) = [exec_form(i) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == container["command"] == ["bertmesh", "serve"]
    (user,) = [i.args for i in instructions if i.keyword == "USER"]
    assert user == f"{SERVER_UID}:{SERVER_UID}" == f"{pod['securityContext']['runAsUser']}:{SERVER_UID}"
    assert container["image"].startswith("ghcr.io/bertmesh/model-server:")
    # No model inside: the operator mounts one read-only at /mnt/models.
    assert any(m["mountPath"] == "/mnt/models" and m.get("readOnly") for m in container["volumeMounts"])
    run = " ".join(i.args for i in parse(SERVER) if i.keyword == "RUN")
    assert '".[server]"' in run and "--constraint requirements/lock.txt" in run
    assert not re.search(r"huggingface|hf_hub_download|\.safetensors|/mnt/models", run), "no model baked in"
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "HOME=/tmp" in env


def test_operator_image_fits_the_chart() -> None:
    instructions = final_stage(parse(OPERATOR))
    (user,) = [i.args for i in instructions if i.keyword == "USER"]
    template = (REPO / "charts" / "bertmesh" / "templates" / "deployment.yaml").read_text()
    uid = re.search(r"runAsUser: (\d+)", template)
    gid = re.search(r"runAsGroup: (\d+)", template)
    assert uid and gid and user == f"{uid.group(1)}:{gid.group(1)}"
    (entrypoint,) = [exec_form(i) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["bertmesh"]  # the chart sets command: [bertmesh] and args: [operator, ...]
    run = " ".join(i.args for i in parse(OPERATOR) if i.keyword == "RUN")
    assert re.findall(r'"\.\[[a-z,]+\]"', run) == ['".[operator]"'], "the operator image installs .[operator] only"


def test_operator_extra_pulls_no_torch_or_cuda() -> None:
    closure = dependency_closure("bertmesh", {"operator"})
    assert {"kopf", "kubernetes", "pydantic", "pyyaml"} <= closure
    heavy = sorted(name for name in closure if HEAVY.match(name))
    assert not heavy, f"the operator image would install {heavy}"
    # The same walk finds torch and CUDA behind the server extra: the check can see them.
    assert {"torch", "triton"} <= dependency_closure("bertmesh", {"server"})


def build_context(dockerfile: Path) -> list[str]:
    """What the build stage copies from the build context (repository paths)."""
    sources: list[str] = []
    for ins in parse(dockerfile):
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            sources += ins.args.split()[:-1]
    return sources


@pytest.mark.parametrize(
    ("dockerfile", "ours"),
    [(OPERATOR, {"bertmesh_cli", "bertmesh_operator"}), (SERVER, {"bertmesh_cli", "model_server"})],
    ids=["operator", "model-server"],
)
def test_each_image_carries_the_dispatcher_and_its_own_side_only(
    dockerfile: Path, ours: set[str], tmp_path: Path
) -> None:
    """The wheel `pip install` builds from exactly what the Dockerfile copies holds one side and `bertmesh`."""
    context = tmp_path / "context"
    for source in build_context(dockerfile):
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, context / source)
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    built = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=context, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("bertmesh-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {name.partition("/")[0] for name in names if ".dist-info/" not in name} == ours
    assert "bertmesh = bertmesh_cli:run" in scripts


# The packages of ours each image carries (test_each_image_carries_the_dispatcher_and_its_own_side_only).
OPERATOR_SIDE = {"bertmesh_cli", "bertmesh_operator"}
SERVER_SIDE = {"bertmesh_cli", "model_server"}
OURS = OPERATOR_SIDE | SERVER_SIDE


def image_python(tmp_path: Path, image: str, ours: set[str], extra: str) -> list[str]:
    """A command line running `bertmesh` where only what the image installs can be imported: our packages in
    `ours` and the modules of the distributions `bertmesh[extra]` pulls in; any other import fails."""
    closure = dependency_closure("bertmesh", {extra})
    allowed = set(ours)
    for module, distributions in metadata.packages_distributions().items():
        if module not in OURS and any(canonicalize_name(d) in closure for d in distributions):
            allowed.add(module)
    guard = tmp_path / f"{image}.py"
    guard.write_text(
        "import importlib.abc, sys\n"
        f"ALLOWED = {sorted(allowed)!r}\n"
        "class Guard(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.partition('.')[0]\n"
        "        if top in sys.stdlib_module_names or top in ALLOWED or top.startswith('_'):\n"
        "            return None\n"
        f"        raise ModuleNotFoundError(f'{{name}} is not in the {image} image', name=name)\n"
        "sys.meta_path.insert(0, Guard())\n"
        "from bertmesh_cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, str(guard)]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def test_the_operator_commands_run_without_the_model_server(tmp_path: Path) -> None:
    """`bertmesh render`, `operator --help` and `rollout --help` with model_server and torch absent; the
    server's commands say which extra they need."""
    bertmesh = image_python(tmp_path, "operator", OPERATOR_SIDE, "operator")
    example = REPO / "examples" / "gpu-classifier-canary.yaml"
    rendered = run([*bertmesh, "render", "-f", str(example)])
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: Deployment" in rendered.stdout
    for command, flag in (("operator", "--prometheus-url"), ("rollout", "promote")):
        helped = run([*bertmesh, command, "--help"])
        assert helped.returncode == 0, helped.stderr
        assert flag in helped.stdout
    for command in ("serve", "embed", "bench"):
        refused = run([*bertmesh, command, "--help"])
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"bertmesh {command}: the model_server package is not installed here: install bertmesh[server], "
            "or run the model-server image"
        )


def test_the_server_commands_run_without_the_operator(tmp_path: Path) -> None:
    """`bertmesh serve --help` and the client commands with bertmesh_operator (and kopf) absent; the operator's
    commands say which extra they need."""
    bertmesh = image_python(tmp_path, "model-server", SERVER_SIDE, "server")
    for command, flag in (("serve", "--max-batch-tokens"), ("embed", "--target")):
        helped = run([*bertmesh, command, "--help"])
        assert helped.returncode == 0, helped.stderr
        assert flag in helped.stdout
    refused = run([*bertmesh, "render", "-f", str(REPO / "examples" / "cpu-embedding.yaml")])
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "bertmesh render: the bertmesh_operator package is not installed here: install bertmesh[operator], "
        "or run the operator image"
    )
