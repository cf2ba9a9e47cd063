"""Sandbox.list through the SDK (GET /v2/sandboxes): metadata filters (the SDK's triple
encoding), state filters, template and startedAfter filters, limit paging newest first with
X-Next-Token only while more remain, and order asc/desc (reference e2b-protocol.md §3.4)."""

import urllib.parse

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState

from helpers import assert_error_body, unique


def ids(items) -> list[str]:
    return [s.sandbox_id for s in items]


def all_pages(paginator) -> list:
    out = []
    pages = 0
    while paginator.has_next:
        out.extend(paginator.next_items())
        pages += 1
        assert pages < 100, "the paginator does not end"
    return out


@pytest.fixture
def three(stack, kill_after):
    """Three sandboxes with a unique tag, created one after the other (oldest first); the
    first is paused."""
    tag = unique("list")
    sbxs = []
    for i in range(3):
        s = Sandbox.create(metadata={"tag": tag, "i": str(i)})
        kill_after.append(s)
        sbxs.append(s)
    assert sbxs[0].pause() is True
    return tag, sbxs


def test_metadata_and_state_filters(stack, three):
    tag, sbxs = three
    every = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
    assert sorted(ids(every)) == sorted(ids(sbxs))
    by_id = {s.sandbox_id: s for s in every}
    assert by_id[sbxs[0].sandbox_id].state == SandboxState.PAUSED
    assert by_id[sbxs[1].sandbox_id].state == SandboxState.RUNNING
    assert by_id[sbxs[1].sandbox_id].metadata == {"tag": tag, "i": "1"}
    assert by_id[sbxs[1].sandbox_id].template_id == "base"

    running = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING])).next_items()
    assert sorted(ids(running)) == sorted(ids(sbxs[1:]))
    assert all(s.state == SandboxState.RUNNING for s in running)
    paused = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED])).next_items()
    assert ids(paused) == [sbxs[0].sandbox_id]
    both = Sandbox.list(
        query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING, SandboxState.PAUSED])
    ).next_items()
    assert sorted(ids(both)) == sorted(ids(sbxs))

    # Two metadata pairs must both match.
    one = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "i": "2"})).next_items()
    assert ids(one) == [sbxs[2].sandbox_id]
    p = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "i": "nope"}))
    assert p.next_items() == []
    assert p.has_next is False

    # Template filter: the template id matches, an unknown one gives nothing.
    base = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, template="base")).next_items()
    assert sorted(ids(base)) == sorted(ids(sbxs))
    assert Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, template="no-such-template")).next_items() == []

    # startedAfter is inclusive.
    started2 = Sandbox.get_info(sbxs[2].sandbox_id).started_at
    after = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, started_after=started2)).next_items()
    assert ids(after) == [sbxs[2].sandbox_id]

    # The v1 list (GET /sandboxes, older SDKs) shows running sandboxes only.
    q = urllib.parse.urlencode({"metadata": urllib.parse.urlencode({"tag": tag})})
    status, body, _ = stack.request("GET", f"/sandboxes?{q}")
    assert status == 200, body
    assert sorted(s["sandboxID"] for s in body) == sorted(ids(sbxs[1:]))


def test_metadata_filter_with_reserved_characters(stack, kill_after):
    tag = unique("enc")
    meta = {"tag": tag, "a&b": "c=d", "k": "v w/x%y"}
    s = Sandbox.create(metadata=meta)
    kill_after.append(s)
    assert s.get_info().metadata == meta
    found = Sandbox.list(query=SandboxQuery(metadata={"a&b": "c=d", "k": "v w/x%y", "tag": tag})).next_items()
    assert ids(found) == [s.sandbox_id]
    assert Sandbox.list(query=SandboxQuery(metadata={"k": "v w", "tag": tag})).next_items() == []


def test_paging_newest_first_and_order(stack, three):
    tag, sbxs = three
    newest_first = list(reversed(ids(sbxs)))

    p = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1)
    first = p.next_items()
    assert ids(first) == [newest_first[0]], "page 1 with limit=1 holds the newest sandbox"
    assert p.has_next is True
    rest = all_pages(p)
    assert ids(first + rest) == newest_first
    assert p.has_next is False
    assert p.next_token is None

    p = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2)
    assert len(p.next_items()) == 2 and p.has_next
    assert len(p.next_items()) == 1 and not p.has_next

    # A page that holds exactly the rest has no token either.
    p = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=3)
    assert ids(p.next_items()) == newest_first
    assert p.has_next is False

    asc = all_pages(Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=1, order="asc"))
    assert ids(asc) == ids(sbxs)
    desc = all_pages(Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2, order="desc"))
    assert ids(desc) == newest_first

    # On the wire: X-Next-Token on every page but the last.
    q = {"metadata": urllib.parse.urlencode({"tag": tag}), "limit": "1"}
    seen, token, pages = [], None, 0
    while True:
        query = dict(q, **({"nextToken": token} if token else {}))
        status, body, headers = stack.request("GET", "/v2/sandboxes?" + urllib.parse.urlencode(query))
        assert status == 200, body
        assert isinstance(body, list) and len(body) == 1, body
        seen.append(body[0]["sandboxID"])
        for k in ("templateID", "clientID", "startedAt", "endAt", "envdVersion", "cpuCount", "memoryMB", "diskSizeMB", "state"):
            assert k in body[0], (k, body[0])
        assert "envdAccessToken" not in body[0], "lists carry no tokens"
        token = headers.get("x-next-token")
        pages += 1
        if pages == 3:
            assert token is None, "no X-Next-Token on the last page"
            break
        assert token, f"X-Next-Token missing on page {pages}"
    assert seen == newest_first


def test_list_rejects_bad_queries(stack):
    for q in ("state=dead", "limit=0", "limit=101", "order=sideways", "nextToken=%25%25garbage"):
        status, body, _ = stack.request("GET", f"/v2/sandboxes?{q}")
        assert status == 400, (q, status, body)
        assert_error_body(body, 400)
