"""50 concurrent creates (AsyncSandbox + asyncio.gather) from a warm pool of 4: most are
created on no stock. Every create answers 201 only once the gateway has the route, so the first
data-plane call of each sandbox must succeed (no 502), and every id is distinct."""

import asyncio
import time

from e2b import AsyncSandbox, SandboxQuery

from helpers import unique

COUNT = 50


async def test_fifty_concurrent_creates(stack):
    tag = unique("burst")
    started = time.monotonic()
    results = await asyncio.gather(
        *(AsyncSandbox.create(metadata={"tag": tag}, timeout=300) for _ in range(COUNT)),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, AsyncSandbox)]
    failures = [r for r in results if not isinstance(r, AsyncSandbox)]
    create_secs = time.monotonic() - started
    try:
        assert not failures, f"{len(failures)} of {COUNT} creates failed: {failures[:3]!r}"
        ids = [s.sandbox_id for s in created]
        assert len(set(ids)) == COUNT, "sandbox ids are not distinct"

        async def first_call(s):
            return await s.commands.run("true")

        runs = await asyncio.gather(*(first_call(s) for s in created), return_exceptions=True)
        bad = [(s.sandbox_id, r) for s, r in zip(created, runs) if isinstance(r, BaseException) or r.exit_code != 0]
        assert not bad, f"{len(bad)} first data-plane calls failed: {bad[:3]!r}"

        listed = []
        paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}))
        while paginator.has_next:
            listed.extend(await paginator.next_items())
        assert sorted(s.sandbox_id for s in listed) == sorted(ids)
    finally:
        kills = await asyncio.gather(*(s.kill() for s in created), return_exceptions=True)
    assert all(k is True for k in kills), kills
    print(f"{COUNT} concurrent creates took {create_secs:.1f} s")
