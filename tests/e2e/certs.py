"""Throwaway test certificates by openssl: a CA, and certificates it signs (two days, RSA 2048)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.processes import run_command


def make_ca(stem: Path, name: str) -> None:
    """A self-signed CA: `stem`.crt and `stem`.key, subject CN=`name`."""
    run_command(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", f"{stem}.key", "-out", f"{stem}.crt"]
    )  # fmt: skip


def sign(ca: Path, stem: Path, name: str, extensions: str = "") -> None:
    """A key and a certificate for CN=`name` signed by the CA at `ca` (.crt/.key): `stem`.key and `stem`.crt;
    `extensions` (openssl extension lines, e.g. subjectAltName) are added when given."""
    run_command(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{stem}.key", "-out", f"{stem}.csr"]
    )  # fmt: skip
    extra: list[str] = []
    if extensions:
        extfile = stem.with_name(f"{stem.name}.ext")
        extfile.write_text(extensions)
        extra = ["-extfile", str(extfile)]
    run_command(
        ["openssl", "x509", "-req", "-days", "2", "-in", f"{stem}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{stem}.crt", *extra]
    )  # fmt: skip
