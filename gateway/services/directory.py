"""The configured local calendar users, looked up by address or alias."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.domain.addresses import normalise
from gateway.domain.model import UserPolicy

__all__ = ["StaticDirectory"]


class StaticDirectory:
    """Local users from the configuration file; aliases map to the primary address.

    Lookups normalise the address (``MAILTO:`` prefix, case, display-name wrappers), so
    a calendar's ``ATTENDEE;CN=Room:mailto:Room@Example.org`` finds the room.
    """

    def __init__(self, users: Iterable[UserPolicy]) -> None:
        self._by_address: dict[str, UserPolicy] = {}
        for user in users:
            primary = normalise(user.address)
            if primary != user.address:
                raise ValueError(f"user address {user.address!r} is not normalised")
            for addr in (primary, *user.aliases):
                key = normalise(addr)
                if key in self._by_address:
                    raise ValueError(f"address {key!r} is configured twice")
                self._by_address[key] = user

    def local_user(self, address: str) -> UserPolicy | None:
        return self._by_address.get(normalise(address))

    def is_local(self, address: str) -> bool:
        return normalise(address) in self._by_address

    def users(self) -> list[UserPolicy]:
        seen: dict[str, UserPolicy] = {}
        for user in self._by_address.values():
            seen.setdefault(user.address, user)
        return list(seen.values())
