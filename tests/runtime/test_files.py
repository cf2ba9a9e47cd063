"""Files through the real SDK: read/write in every format and encoding, listing, info, dirs,
rename, remove, metadata, watches."""

import asyncio
import gzip
import hashlib
import io
import os
import uuid

import httpx
import pytest

from e2b import (
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    SandboxException,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry


def unique(prefix="f"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_write_and_read_text(runtime, sandbox):
    name = unique() + ".txt"
    info = sandbox.files.write(name, "hello world ✓")
    assert info.name == name
    assert info.path == f"{runtime.home}/{name}"
    assert info.type == FileType.FILE
    assert sandbox.files.read(name) == "hello world ✓"
    assert (runtime.home / name).read_text() == "hello world ✓"


def test_bytes_stream_and_file_objects(sandbox):
    data = os.urandom(300_000)
    name = unique()
    sandbox.files.write(name, data)
    assert bytes(sandbox.files.read(name, format="bytes")) == data
    with sandbox.files.read(name, format="stream") as stream:
        assert b"".join(stream) == data
    other = unique()
    sandbox.files.write(other, io.BytesIO(data))
    assert bytes(sandbox.files.read(other, format="bytes")) == data
    chunked = unique()
    sandbox.files.write(chunked, (data[i:i + 4096] for i in range(0, len(data), 4096)))
    assert hashlib.sha256(bytes(sandbox.files.read(chunked, format="bytes"))).digest() == hashlib.sha256(data).digest()


def test_octet_stream_and_gzip_uploads(sandbox):
    name = unique()
    sandbox.files.write(name, "plain octet", use_octet_stream=True)
    assert sandbox.files.read(name) == "plain octet"
    gz = unique()
    text = "compressible " * 10_000
    sandbox.files.write(gz, text, gzip=True)
    assert sandbox.files.read(gz) == text
    assert sandbox.files.read(gz, gzip=True) == text


def test_gzip_download_on_the_wire(runtime, sandbox):
    name = unique()
    sandbox.files.write(name, "z" * 100_000)
    with httpx.Client() as c:
        r = c.get(f"{runtime.url}/files", params={"path": name}, headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        assert r.content == b"z" * 100_000  # httpx inflated it
        raw = c.get(f"{runtime.url}/files", params={"path": name}, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in raw.headers
        assert raw.headers["content-length"] == "100000"


def test_range_requests(runtime, sandbox):
    name = unique()
    sandbox.files.write(name, "0123456789")
    with httpx.Client() as c:
        r = c.get(f"{runtime.url}/files", params={"path": name}, headers={"Range": "bytes=2-5"})
        assert r.status_code == 206
        assert r.content == b"2345"
        assert r.headers["content-range"] == "bytes 2-5/10"
        assert c.get(f"{runtime.url}/files", params={"path": name}, headers={"Range": "bytes=-3"}).content == b"789"
        bad = c.get(f"{runtime.url}/files", params={"path": name}, headers={"Range": "bytes=50-"})
        assert bad.status_code == 416
        assert bad.headers["content-range"] == "bytes */10"


def test_write_files_multipart(runtime, sandbox):
    d = unique("multi")
    infos = sandbox.files.write_files([
        WriteEntry(path=f"{d}/a.txt", data="A"),
        WriteEntry(path=f"{d}/nested/b.bin", data=b"\x00\x01"),
        WriteEntry(path=f"/tmp/{d}-abs.txt", data="abs"),
    ])
    assert [i.path for i in infos] == [f"{runtime.home}/{d}/a.txt", f"{runtime.home}/{d}/nested/b.bin", f"/tmp/{d}-abs.txt"]
    assert sandbox.files.read(f"{d}/nested/b.bin", format="bytes") == bytearray(b"\x00\x01")
    assert sandbox.files.read(f"/tmp/{d}-abs.txt") == "abs"
    sandbox.files.remove(f"/tmp/{d}-abs.txt")


def test_duplicate_paths_in_one_upload_are_refused(runtime):
    files = [("file", ("/tmp/dup.txt", b"1")), ("file", ("/tmp/dup.txt", b"2"))]
    r = httpx.post(f"{runtime.url}/files", files=files)
    assert r.status_code == 400
    assert "cannot upload multiple files to the same path" in r.json()["message"]


def test_read_errors(sandbox):
    with pytest.raises(FileNotFoundException) as e:
        sandbox.files.read("/no/such/file.txt")
    assert "path '/no/such/file.txt' does not exist" in str(e.value)
    with pytest.raises(InvalidArgumentException):
        sandbox.files.read("/tmp")


def test_list_with_depth(runtime, sandbox):
    root = unique("tree")
    for d in ["sub1/sub1_1", "sub1/sub1_2", "sub2/sub2_1"]:
        sandbox.files.make_dir(f"{root}/{d}")
    sandbox.files.write(f"{root}/file1.txt", "x")
    names = lambda entries: [e.path.removeprefix(f"{runtime.home}/{root}/") for e in entries]
    assert names(sandbox.files.list(root)) == ["file1.txt", "sub1", "sub2"]
    two = sandbox.files.list(root, depth=2)
    assert names(two) == ["file1.txt", "sub1", "sub1/sub1_1", "sub1/sub1_2", "sub2", "sub2/sub2_1"]
    assert names(sandbox.files.list(root, depth=5)) == names(two)
    assert [e.type for e in two] == [FileType.FILE] + [FileType.DIR] * 5
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(root, depth=0)
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(f"{root}/file1.txt")
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(f"{root}/missing")


def test_exists_info_and_entry_fields(runtime, sandbox):
    name = unique() + ".txt"
    assert sandbox.files.exists(name) is False
    sandbox.files.write(name, "test")
    assert sandbox.files.exists(name) is True
    info = sandbox.files.get_info(name)
    assert info.name == name
    assert info.path == f"{runtime.home}/{name}"
    assert info.type == FileType.FILE
    assert info.size == 4
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert info.owner == runtime.user
    assert info.modified_time.tzinfo is not None
    assert info.symlink_target is None
    d = unique("dir")
    sandbox.files.make_dir(d)
    dinfo = sandbox.files.get_info(d)
    assert (dinfo.type, dinfo.mode, dinfo.permissions) == (FileType.DIR, 0o755, "drwxr-xr-x")
    with pytest.raises(NotFoundException):
        sandbox.files.get_info(unique("missing"))


def test_symlink_info(runtime, sandbox):
    target = unique() + ".txt"
    link = unique("link")
    sandbox.files.write(target, "content")
    sandbox.commands.run(f"ln -s {target} {link}")
    info = sandbox.files.get_info(link)
    assert info.type == FileType.SYMLINK
    assert info.symlink_target == f"{runtime.home}/{target}"
    assert info.permissions.startswith("L")


def test_make_dir_rename_remove(runtime, sandbox):
    d = unique("mk")
    assert sandbox.files.make_dir(f"{d}/a/b") is True
    assert sandbox.files.make_dir(f"{d}/a/b") is False
    sandbox.files.write(f"{d}/a/b/f.txt", "move me")
    moved = sandbox.files.rename(f"{d}/a/b/f.txt", f"{d}/new/place.txt")
    assert moved.path == f"{runtime.home}/{d}/new/place.txt"
    assert sandbox.files.read(f"{d}/new/place.txt") == "move me"
    with pytest.raises(NotFoundException):
        sandbox.files.rename(f"{d}/nope", f"{d}/other")
    sandbox.files.remove(d)
    assert sandbox.files.exists(d) is False
    sandbox.files.remove(d)  # removing a missing path is not an error


def test_metadata(sandbox):
    name = unique() + ".txt"
    info = sandbox.files.write(name, "x", metadata={"Author": "me", "purpose": "test"})
    assert info.metadata == {"author": "me", "purpose": "test"}
    assert sandbox.files.get_info(name).metadata == {"author": "me", "purpose": "test"}
    renamed = sandbox.files.rename(name, name + ".moved")
    assert renamed.metadata == {"author": "me", "purpose": "test"}
    listed = [e for e in sandbox.files.list(".") if e.name == name + ".moved"]
    assert listed[0].metadata == {"author": "me", "purpose": "test"}
    over = sandbox.files.write(name + ".moved", "y")
    assert over.metadata is None
    assert sandbox.files.get_info(name + ".moved").metadata is None
    path = sandbox.files.get_info(name + ".moved").path
    sandbox.commands.run(f"python3 -c \"import os; os.setxattr('{path}', 'user.e2b.origin', b'shell')\"")
    assert sandbox.files.get_info(path).metadata == {"origin": "shell"}


def test_invalid_metadata_is_rejected_by_the_daemon(runtime):
    r = httpx.post(
        f"{runtime.url}/files",
        params={"path": "/tmp/bad-metadata.txt"},
        headers={"Content-Type": "application/octet-stream", "X-Metadata-Key": "x" * 5000},
        content=b"data",
    )
    assert r.status_code == 400
    assert r.json()["code"] == 400
    assert not os.path.exists("/tmp/bad-metadata.txt")


def test_sync_watch_sees_create_chmod_write(sandbox):
    d = unique("watch")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d)
    sandbox.files.write(f"{d}/w.txt", "watched")
    events = handle.get_new_events()
    assert [(e.name, e.type) for e in events] == [
        ("w.txt", FilesystemEventType.CREATE),
        ("w.txt", FilesystemEventType.CHMOD),
        ("w.txt", FilesystemEventType.WRITE),
    ]
    sandbox.files.remove(f"{d}/w.txt")
    assert ("w.txt", FilesystemEventType.REMOVE) in [(e.name, e.type) for e in handle.get_new_events()]
    handle.stop()


def test_recursive_watch_and_new_subdirectories(sandbox):
    d = unique("rwatch")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d, recursive=True)
    sandbox.files.make_dir(f"{d}/nested")
    sandbox.files.write(f"{d}/nested/f.txt", "x")
    events = [(e.name, e.type) for e in handle.get_new_events()]
    assert ("nested", FilesystemEventType.CREATE) in events
    assert ("nested/f.txt", FilesystemEventType.WRITE) in events
    handle.stop()


def test_watch_with_entry_info(sandbox):
    d = unique("ewatch")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d, include_entry=True)
    sandbox.files.write(f"{d}/e.txt", "12345")
    events = handle.get_new_events()
    last = [e for e in events if e.type == FilesystemEventType.WRITE][-1]
    assert last.entry is not None and last.entry.size == 5
    handle.stop()


def test_watch_errors(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(unique("nowhere"))
    name = unique() + ".txt"
    sandbox.files.write(name, "x")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir(name)


async def test_async_watch_stream(async_sandbox):
    d = unique("awatch")
    await async_sandbox.files.make_dir(d)
    seen = []
    got = asyncio.Event()

    def on_event(e):
        seen.append((e.name, e.type))
        if e.type == FilesystemEventType.WRITE:
            got.set()

    handle = await async_sandbox.files.watch_dir(d, on_event=on_event)
    await async_sandbox.files.write(f"{d}/async.txt", "hello")
    await asyncio.wait_for(got.wait(), timeout=5)
    await handle.stop()
    assert ("async.txt", FilesystemEventType.CREATE) in seen
    assert ("async.txt", FilesystemEventType.WRITE) in seen


async def test_async_commands_and_files(async_sandbox):
    r = await async_sandbox.commands.run("echo async")
    assert r.stdout == "async\n"
    name = unique()
    await async_sandbox.files.write(name, b"\x00async")
    assert await async_sandbox.files.read(name, format="bytes") == bytearray(b"\x00async")


def test_ten_megabytes_round_trip(sandbox):
    data = os.urandom(10 << 20)
    name = unique()
    sandbox.files.write(name, io.BytesIO(data))
    back = bytes(sandbox.files.read(name, format="bytes"))
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    sandbox.files.remove(name)


def test_gzip_request_body_is_inflated(runtime):
    r = httpx.post(
        f"{runtime.url}/files",
        params={"path": "/tmp/gz-upload.txt"},
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"},
        content=gzip.compress(b"inflated"),
    )
    assert r.status_code == 200, r.text
    assert open("/tmp/gz-upload.txt", "rb").read() == b"inflated"
    bad = httpx.post(
        f"{runtime.url}/files",
        params={"path": "/tmp/gz-upload.txt"},
        headers={"Content-Type": "application/octet-stream", "Content-Encoding": "br"},
        content=b"x",
    )
    assert bad.status_code == 400
    os.remove("/tmp/gz-upload.txt")


def test_recursive_watch_sees_files_written_into_directories_the_upload_creates(sandbox):
    d = unique("updirs")
    sandbox.files.make_dir(d)
    handle = sandbox.files.watch_dir(d, recursive=True)
    sandbox.files.write_files([WriteEntry(path=f"{d}/new/deeper/x.txt", data="x")])
    events = [(e.name, e.type) for e in handle.get_new_events()]
    assert ("new", FilesystemEventType.CREATE) in events
    assert ("new/deeper", FilesystemEventType.CREATE) in events
    assert ("new/deeper/x.txt", FilesystemEventType.CREATE) in events
    assert ("new/deeper/x.txt", FilesystemEventType.WRITE) in events
    handle.stop()
