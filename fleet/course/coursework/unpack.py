"""The controller's side of a collect: the host's tar stream is untrusted input. Each member is
checked by Python's own 'data' extraction filter and by ours (a plain relative name, no '..',
a regular file and nothing else, named in the host's manifest with that size and hash, the
student's size limit), and written by us through folders we just made, never through a link:
nothing can land outside the fresh folder it is unpacked into."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def name_problem(name: object) -> str | None:
    """Why a path from the host may not be used as a relative path under our folder, or None."""
    if not isinstance(name, str) or not name:
        return "an empty or missing name"
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        return "a NUL byte in the name"
    if name.startswith("/"):
        return "an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'..', '.' or an empty part in the path"
    if len(raw) > 4000 or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        return "a name too long"
    return None


def shown(name: object) -> str:
    """A name as the report prints it: newlines and bytes that are not UTF-8 made visible."""
    return repr(name)[1:-1] if isinstance(name, str) else repr(name)


def open_parent(root_fd: int, rel: str) -> int:
    """The folder fd for rel's parent under root_fd, made as needed, never through a link."""
    fd = os.dup(root_fd)
    for part in rel.split("/")[:-1]:
        try:
            os.mkdir(part, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def write_file(root_fd: int, rel: str, data: bytes, mtime_ns: int, mode: int) -> None:
    parent = open_parent(root_fd, rel)
    try:
        fd = os.open(rel.rsplit("/", 1)[-1], FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, (mode & 0o755) | 0o600)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def link_file(root_fd: int, rel: str, source: Path) -> None:
    """An unchanged file: a hard link to the previous collect's copy (no second copy on disk)."""
    parent = open_parent(root_fd, rel)
    try:
        os.link(source, rel.rsplit("/", 1)[-1], dst_dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)


def unpack(payload: bytes, manifest: list[dict], dest: Path, max_bytes: int,
           previous: Path | None = None) -> list[str]:
    """Write the stream's files (and link the unchanged ones from `previous`) under `dest`, a
    fresh empty folder. Returns what was refused; empty when all is well."""
    problems: list[str] = []
    expected: dict[str, dict] = {}
    for entry in manifest:
        why = name_problem(entry.get("path")) if isinstance(entry, dict) else "a manifest entry that is not an object"
        if why:
            problems.append(f"manifest: {shown(entry.get('path') if isinstance(entry, dict) else entry)}: {why}")
        elif entry["path"] in expected:
            problems.append(f"manifest: {shown(entry['path'])}: listed twice")
        else:
            expected[entry["path"]] = entry
    if problems:
        return problems
    root_fd = os.open(dest, DIR_FLAGS)
    try:
        written = stream_members(payload, expected, dest, root_fd, max_bytes, problems)
        for path, entry in expected.items():
            if entry.get("sent") and path not in written and not problems:
                problems.append(f"{shown(path)}: in the manifest but not in the stream")
            if not entry.get("sent") and not problems:
                source = (previous / path) if previous else None
                if source is None or not source.is_file() or source.is_symlink() or source.stat().st_size != entry.get("size"):
                    problems.append(f"{shown(path)}: unchanged, but the previous collect has no copy of it")
                    continue
                link_file(root_fd, path, source)
    finally:
        os.close(root_fd)
    return problems


def stream_members(payload: bytes, expected: dict[str, dict], dest: Path, root_fd: int, max_bytes: int,
                   problems: list[str]) -> set[str]:
    written: set[str] = set()
    total = 0
    try:
        tar = tarfile.open(fileobj=io.BytesIO(payload), mode="r:", encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as exc:
        if payload:
            problems.append(f"the stream is not a tar archive ({exc})")
        return written
    with tar:
        try:
            for member in tar:
                name = member.name
                why = name_problem(name) or member_problem(member, expected.get(name))
                if why is None:
                    try:
                        tarfile.data_filter(member, str(dest))
                    except tarfile.FilterError as exc:
                        why = f"refused by the data filter ({exc.__class__.__name__})"
                if why is None and name in written:
                    why = "sent twice"
                if why is None and total + member.size > max_bytes:
                    why = f"over the student's limit of {max_bytes} bytes (collect_max_mb): collect stopped"
                if why:
                    problems.append(f"{shown(name)}: {why}")
                    if "collect stopped" in why:
                        break
                    continue
                extracted = tar.extractfile(member)
                assert extracted is not None   # a regular file (checked above) has content
                data = extracted.read()
                total += len(data)
                if hashlib.sha256(data).hexdigest() != expected[name].get("sha256"):
                    problems.append(f"{shown(name)}: its content does not match the manifest's hash")
                    continue
                try:
                    write_file(root_fd, name, data, int(expected[name].get("mtime_ns") or 0), member.mode)
                except OSError as exc:
                    problems.append(f"{shown(name)}: not written ({exc.strerror or exc})")
                    continue
                written.add(name)
        except tarfile.TarError as exc:
            problems.append(f"the stream is damaged ({exc})")
    return written


def member_problem(member: tarfile.TarInfo, entry: dict | None) -> str | None:
    if member.issym() or member.islnk():
        return f"a {'symbolic' if member.issym() else 'hard'} link (to {shown(member.linkname)}): refused"
    if member.isfifo():
        return "a FIFO: refused"
    if member.ischr() or member.isblk():
        return "a device file: refused"
    if not member.isreg():
        return "not a regular file: refused"
    if entry is None or not entry.get("sent"):
        return "not announced in the host's manifest: refused"
    if member.size != entry.get("size"):
        return f"its size ({member.size}) is not the manifest's ({entry.get('size')})"
    return None
