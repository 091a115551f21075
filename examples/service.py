"""A stand-in for the application service the seed README's handler example imports."""

from __future__ import annotations

from typing import Any


class UserService:
    def __init__(self) -> None:
        self.users: list[Any] = []

    async def do_smth_with_the_user(self, user: Any) -> None:
        self.users.append(user)


_service = UserService()


def get_user_service() -> UserService:
    return _service
