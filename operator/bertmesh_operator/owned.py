"""An in-memory index of watched objects by the ModelDeployment they belong to, and by uid. Pure.

The children's and the pods' watches each keep one: a reconcile reads a ModelDeployment's objects without a
request, and a watch event finds the owner to wake. Not thread-safe: the event loop is the one writer.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")
Owner = tuple[str, str]  # (namespace, ModelDeployment name)


class OwnerIndex(Generic[T]):
    """Values by owner and uid; keyed by uid, so an object whose owner label moves moves with it."""

    def __init__(self) -> None:
        self._by_owner: dict[Owner, dict[str, T]] = {}
        self._owner_of: dict[str, Owner] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def put(self, owner: Owner, uid: str, value: T) -> T | None:
        """Record `value` for `uid` under `owner`; returns what was recorded for it there before, if anything."""
        if self._owner_of.get(uid) not in (None, owner):
            self.pop(uid)
        children = self._by_owner.setdefault(owner, {})
        previous = children.get(uid)
        children[uid] = value
        self._owner_of[uid] = owner
        return previous

    def pop(self, uid: str) -> tuple[Owner, T] | None:
        """Forget `uid`; returns its owner and value, or None if it was not recorded."""
        owner = self._owner_of.pop(uid, None)
        if owner is None:
            return None
        children = self._by_owner.get(owner, {})
        value = children.pop(uid)
        if not children:
            self._by_owner.pop(owner, None)
        return owner, value

    def values(self, owner: Owner) -> list[T]:
        """A copy of the owner's values."""
        return list(self._by_owner.get(owner, {}).values())
