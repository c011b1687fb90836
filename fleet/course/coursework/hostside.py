"""The program that runs ON a course machine, as the course user (never root), to read or write
a student's work. Standard library only: its source is sent as `python3 -I -c PROGRAM`, and
its parameters (and, for a restore, the tar stream) arrive on stdin.

Why as the course user, with no link ever followed: the work folder is the student's, and a
student may plant links (to /etc/shadow, to another user's home). Read as that user, nothing
beyond what the student may read can be reached at all; walked with O_NOFOLLOW through
directory file descriptors, a link is reported and never opened, even when it is swapped in
mid-walk.

Modes (the first line of stdin is a JSON object with "mode"):
- fingerprint: a hash over (path, size, mtime) of every regular file, their count and bytes.
- collect: the same walk, then every file whose content hash the controller does not already
  have goes out as a tar stream (base64 lines), and a trailer lists every file (path, size,
  sha256, mtime) and what was skipped (links, FIFOs, sockets, devices, files over the limit).
- restore: a tar stream of regular files (base64 lines after the JSON line) is written under
  the user's home; a file on the host that is newer than the copy is kept unless "overwrite".

Output on stdout: MARK-BEGIN, base64 lines, then one line MARK-TRAILER <json>. Paths are
relative to the user's home; names that are not UTF-8 travel as surrogate escapes.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pwd
import stat
import sys
import tarfile

CHUNK = 57 * 1024          # bytes per base64 line (a multiple of 3: lines decode on their own)
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


HOME = None   # tests point this at a folder of their own; on a host, the user's home


def home() -> str:
    return HOME or pwd.getpwuid(os.getuid()).pw_dir


def under_home(root: str, base: str) -> str | None:
    """`root` relative to `base`, or None when it is not strictly inside it."""
    root, base = os.path.normpath(root), os.path.normpath(base)
    if not os.path.isabs(root) or root == base or os.path.commonpath([root, base]) != base:
        return None
    return os.path.relpath(root, base)


def open_dir(base_fd: int, rel: str, create: bool = False) -> int:
    """A directory fd for `rel` under base_fd, one component at a time, never through a link."""
    fd = os.dup(base_fd)
    for part in [p for p in rel.split("/") if p]:
        if part in (".", ".."):
            os.close(fd)
            raise OSError(f"refused path component {part!r}")
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                os.close(fd)
                raise
            os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            raise
        os.close(fd)
        fd = nxt
    return fd


def walk(base_fd: int, roots: list[str]) -> tuple[list[dict], list[dict]]:
    """Every regular file under the roots (relative paths), and what was skipped with why."""
    files: list[dict] = []
    skipped: list[dict] = []

    def take(name: str, dir_fd: int, path: str) -> None:
        """One entry, never followed: a folder is walked, a file listed, anything else skipped."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=dir_fd)
            except OSError as exc:
                skipped.append({"path": path, "why": f"unreadable folder ({exc.strerror})"})
                return
            try:
                visit(sub, path)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            files.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "mode": stat.S_IMODE(st.st_mode)})
        else:
            skipped.append({"path": path, "why": kind(st.st_mode, name, dir_fd)})

    def visit(dir_fd: int, rel: str) -> None:
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError as exc:
            skipped.append({"path": rel, "why": f"unreadable folder ({exc.strerror})"})
            return
        for name in names:
            try:
                take(name, dir_fd, f"{rel}/{name}")
            except OSError as exc:   # stat failed: the entry went, or is not ours to read
                skipped.append({"path": f"{rel}/{name}", "why": f"unreadable ({exc.strerror})"})

    for root in roots:
        # A knob's relative path is relative to the home folder.
        rel = under_home(root if os.path.isabs(root) else os.path.join(home(), root), home())
        if rel is None:
            skipped.append({"path": root, "why": "not inside the course user's home: not read"})
            continue
        parent, _, leaf = rel.rpartition("/")
        try:
            parent_fd = open_dir(base_fd, parent)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                skipped.append({"path": rel, "why": f"cannot open its folder ({exc})"})
            continue
        try:
            take(leaf, parent_fd, rel)
        except FileNotFoundError:
            pass   # a knob may name a folder a student never made
        except OSError as exc:
            skipped.append({"path": rel, "why": f"unreadable ({exc.strerror})"})
        finally:
            os.close(parent_fd)
    return files, skipped


def kind(mode: int, name: str, dir_fd: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return f"link to {target}: not followed"
    for test, what in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return f"{what}: not collected"
    return "not a regular file: not collected"


def fingerprint(files: list[dict]) -> str:
    """Cheap: names, sizes and times only. Any edit, new or deleted file changes it."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        digest.update(f["path"].encode("utf-8", "surrogateescape") + b"\0"
                      + f"{f['size']} {f['mtime_ns']}\n".encode())
    return digest.hexdigest()


class Base64Lines(io.RawIOBase):
    """A write-only file that prints what it is given as base64 lines on `out`."""

    def __init__(self, out) -> None:
        self.out, self.buffer = out, b""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += bytes(data)
        while len(self.buffer) >= CHUNK:
            self.out.write(base64.b64encode(self.buffer[:CHUNK]) + b"\n")
            self.buffer = self.buffer[CHUNK:]
        return len(data)

    def flush_all(self) -> None:
        if self.buffer:
            self.out.write(base64.b64encode(self.buffer) + b"\n")
            self.buffer = b""


def read_file(base_fd: int, rel: str, limit: int) -> tuple[bytes, os.stat_result]:
    """A regular file's content, opened without following any link and without blocking on a
    FIFO swapped in after the walk; at most `limit` bytes."""
    parent, _, leaf = rel.rpartition("/")
    dir_fd = open_dir(base_fd, parent)
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("no longer a regular file")
        if st.st_size > limit:
            raise OverflowError(st.st_size)
        chunks, total = [], 0
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise OverflowError(total)
            chunks.append(data)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def collect(params: dict, out) -> dict:
    base_fd = os.open(home(), os.O_RDONLY | os.O_DIRECTORY)
    files, skipped = walk(base_fd, params["roots"])
    limit = int(params["max_bytes"])
    result: dict = {"fingerprint": fingerprint(files), "bytes": sum(f["size"] for f in files)}
    too_big = [f for f in files if f["size"] > limit]
    for f in too_big:
        skipped.append({"path": f["path"], "why": f"{f['size']} bytes, over collect_max_mb: not collected"})
    files = [f for f in files if f["size"] <= limit]
    total = sum(f["size"] for f in files)
    if total > limit:
        return result | {"error": f"the work is {total} bytes, over collect_max_mb ({limit} bytes): nothing collected",
                         "skipped": skipped}
    known = params.get("known") or {}
    sink = Base64Lines(out)
    manifest, sent = [], 0
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for f in files:
            try:
                data, st = read_file(base_fd, f["path"], limit - sent)
            except OverflowError:
                skipped.append({"path": f["path"], "why": "grew past collect_max_mb while read: not collected"})
                continue
            except OSError as exc:
                skipped.append({"path": f["path"], "why": f"unreadable ({exc.strerror or exc})"})
                continue
            entry = {"path": f["path"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "mtime_ns": st.st_mtime_ns, "mode": stat.S_IMODE(st.st_mode)}
            entry["sent"] = known.get(f["path"]) != entry["sha256"]
            if entry["sent"]:
                info = tarfile.TarInfo(f["path"])
                info.size, info.mtime, info.mode = len(data), st.st_mtime_ns / 1e9, entry["mode"]
                tar.addfile(info, io.BytesIO(data))
                sent += len(data)
            manifest.append(entry)
    sink.flush_all()
    return result | {"files": manifest, "skipped": skipped}


def restore(params: dict, stream) -> dict:
    """Write the stream's regular files under home; keep newer host files unless overwrite."""
    base_fd = os.open(home(), os.O_RDONLY | os.O_DIRECTORY)
    done: dict = {"restored": [], "unchanged": [], "kept": []}
    raw = base64.b64decode(b"".join(line.strip() for line in stream))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for member in tar:
            name = member.name
            parts = name.split("/")
            if not member.isreg() or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                done["kept"].append({"path": name, "why": "refused: not a plain relative file"})
                continue
            extracted = tar.extractfile(member)
            assert extracted is not None   # a regular file (checked above) has content
            data = extracted.read()
            parent, _, leaf = name.rpartition("/")
            try:
                dir_fd = open_dir(base_fd, parent, create=True)
            except OSError as exc:
                done["kept"].append({"path": name, "why": f"its folder cannot be used ({exc})"})
                continue
            try:
                why = write_one(dir_fd, leaf, data, member, bool(params.get("overwrite")))
            finally:
                os.close(dir_fd)
            if why is None:
                done["restored"].append(name)
            elif why == "unchanged":
                done["unchanged"].append(name)
            else:
                done["kept"].append({"path": name, "why": why})
    return done


def write_one(dir_fd: int, leaf: str, data: bytes, member: tarfile.TarInfo, overwrite: bool) -> str | None:
    """None when written; else why the host's copy was kept ("unchanged" when identical)."""
    try:
        st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            return "something else has that name on the host: kept"
        fd = os.open(leaf, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW, dir_fd=dir_fd)
        try:
            same = hashlib.sha256(b"".join(iter(lambda: os.read(fd, 1 << 20), b""))).digest() == \
                hashlib.sha256(data).digest()
        finally:
            os.close(fd)
        if same:
            return "unchanged"
        if st.st_mtime > member.mtime and not overwrite:
            return "newer on the host: kept (restore --overwrite replaces it)"
    tmp = f".fleet-restore.{os.getpid()}.{leaf}"[:255]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, member.mode & 0o777 or 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    os.rename(tmp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return None


def main() -> None:
    stdin = sys.stdin.buffer
    params = json.loads(stdin.readline())
    mark = params["mark"]
    out = sys.stdout.buffer
    out.write(f"{mark}-BEGIN\n".encode())
    try:
        if params["mode"] == "fingerprint":
            files, skipped = walk(os.open(home(), os.O_RDONLY | os.O_DIRECTORY), params["roots"])
            result = {"fingerprint": fingerprint(files), "files": len(files),
                      "bytes": sum(f["size"] for f in files), "skipped": len(skipped)}
        elif params["mode"] == "collect":
            result = collect(params, out)
        else:
            result = restore(params, stdin)
    except Exception as exc:   # reported to the controller as this host's error
        result = {"error": f"{exc.__class__.__name__}: {exc}"}
    out.write(f"\n{mark}-TRAILER ".encode() + json.dumps(result).encode() + b"\n")
    out.flush()


if __name__ == "__main__":
    main()
