"""The operator's error types, apart from the adapters that raise them.

The reconcile sorts failures by these types only, so it needs neither the kubernetes client (`kube` raises the
API errors) nor an HTTP library (`prometheus` raises `MetricsUnavailableError`): it stays pure enough for the
import contract. Each error says what happens next: retried by itself, or waiting for a person.
"""

from __future__ import annotations


class InvalidSpecError(ValueError):
    """A ModelDeployment that does not validate; the message lists each field path and what is wrong."""


class TransientApiError(Exception):
    """An API call failed in a way that heals by itself; retry after `delay` seconds."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class ApiRejectedError(Exception):
    """The API server refused a call for a reason a person must fix (RBAC, a missing CRD, an invalid object)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MetricsUnavailableError(Exception):
    """Prometheus could not be asked (unreachable, timing out, or refusing the query)."""
