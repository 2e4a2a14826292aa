"""The model server's small C libraries: built with the system's C compiler at start, or prebuilt in images.

Two libraries: MKL's vendor answer on AMD (model_server.mkl_amd) and the packed attention kernel
(model_server/backend/packed_attention.c, loaded by model_server.backend.native_attention). Each is compiled
into a private temporary directory (0700: nobody else can swap the file before it is loaded) and loaded from
there; images without a compiler carry them prebuilt at `<venv>/lib/bertmesh/` (`python -m model_server.native
--prebuild` in the image's build stage), root-owned and read-only to the server. This module never imports torch.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Library:
    """A C library of the model server: its file name, its source and the compiler flags it needs."""

    name: str
    source: Path | str  # a file in the package, or the text itself
    flags: tuple[str, ...]

    def text(self) -> str:
        """The C source."""
        return self.source.read_text() if isinstance(self.source, Path) else self.source


MKL_VENDOR = Library("libbertmesh_mkl_vendor.so", "int mkl_serv_intel_cpu_true(void) { return 1; }\n", ("-O2",))
# -fopenmp: the kernel's threads come from the OpenMP runtime torch has already loaded (same soname).
ATTENTION = Library(
    "libbertmesh_attention.so",
    Path(__file__).with_name("backend") / "packed_attention.c",
    ("-O3", "-fopenmp", "-Wno-psabi"),
)
LIBRARIES = (MKL_VENDOR, ATTENTION)


def prebuilt_path(library: Library, prefix: Path | None = None) -> Path:
    """Where an image's build stage leaves a library: inside the (root-owned) environment itself."""
    return (prefix or Path(sys.prefix)) / "lib" / "bertmesh" / library.name


def build(library: Library, directory: Path) -> Path | str:
    """Compiles `library` into `directory`; the file, or why not (in words)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return "no C compiler"
    # Absolute: the attention kernel includes itself (__FILE__), which resolves beside the including file.
    source, target = directory.resolve() / (library.name + ".c"), directory.resolve() / library.name
    source.write_text(library.text())
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", *library.flags, "-o", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    source.unlink()
    if built.returncode != 0:
        return f"{compiler} failed: {built.stderr.strip()[:200]}"
    return target


@functools.cache  # once per process: every model the process loads shares the library (no rebuild per load)
def load(library: Library, *, global_scope: bool = False) -> tuple[ctypes.CDLL | None, str]:
    """The prebuilt library if the environment has one, else a fresh build; (None, why) when neither works.
    `global_scope` makes its symbols resolve other libraries' lookups (RTLD_GLOBAL)."""
    mode = os.RTLD_GLOBAL if global_scope else os.RTLD_LOCAL
    prebuilt = prebuilt_path(library)
    if prebuilt.is_file():
        return ctypes.CDLL(str(prebuilt), mode=mode), f"prebuilt {prebuilt}"
    with tempfile.TemporaryDirectory(prefix="bertmesh-native-") as private:
        built = build(library, Path(private))
        if isinstance(built, str):
            return None, built
        # The file may go once it is mapped.
        return ctypes.CDLL(str(built), mode=mode), "built at start"


def main(argv: list[str]) -> int:
    """`python -m model_server.native --prebuild [PREFIX]`: builds every library into prebuilt_path(PREFIX)."""
    if not argv or argv[0] != "--prebuild":
        print("usage: python -m model_server.native --prebuild [PREFIX]", file=sys.stderr)
        return 2
    prefix = Path(argv[1]) if len(argv) > 1 else None
    for library in LIBRARIES:
        target = prebuilt_path(library, prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        built = build(library, target.parent)
        if isinstance(built, str):
            print(f"model_server.native: {library.name}: {built}", file=sys.stderr)
            return 1
        print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
