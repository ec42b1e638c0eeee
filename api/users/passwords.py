"""Password hashing off the event loop, at most one hash per core at a time."""

from __future__ import annotations

import asyncio
import os

from api.core import security


class PasswordHasher:
    """PBKDF2 work for sign-ups and sign-ins, built by the app's lifespan.

    A hash at 600,000 iterations takes a few hundred milliseconds: it runs in a thread, and at
    most `concurrency` at once, so a flood of sign-ins queues here instead of filling the
    default thread pool that everything else off the loop shares.
    """

    def __init__(self, *, pepper: bytes, concurrency: int | None = None) -> None:
        self._pepper = pepper
        self._gate = asyncio.Semaphore(concurrency or max(1, os.cpu_count() or 1))
        self._decoys: dict[int, str] = {}

    async def hash(self, password: str, *, iterations: int) -> str:
        """A new salted, peppered hash."""
        async with self._gate:
            return await asyncio.to_thread(
                security.hash_password, password, pepper=self._pepper, iterations=iterations
            )

    async def verify(self, password: str, encoded: str, *, iterations: int = 0) -> bool:
        """Whether the password matches the stored hash, at the cost of at least `iterations`
        rounds (the current setting, whatever the stored hash was made with)."""
        async with self._gate:
            return await asyncio.to_thread(
                security.verify_password,
                password,
                encoded,
                pepper=self._pepper,
                min_iterations=iterations,
            )

    async def decoy(self, *, iterations: int) -> str:
        """A hash to verify against when the name is unknown, so both failures cost the same."""
        decoy = self._decoys.get(iterations)
        if decoy is None:
            decoy = self._decoys[iterations] = await self.hash(
                "decoy password", iterations=iterations
            )
        return decoy
