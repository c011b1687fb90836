"""The root guard, run on the host before a root step changes the paths it declares.

Sent in the apply script and run as `python3 -I -c SOURCE PATH...` (isolated: no user site,
no PYTHON* variables, no current folder on sys.path). For each path it walks the *literal* path
from / one component at a time with lstat on descriptors (openat with O_NOFOLLOW, never a path
resolved in one go), so every folder and every link met on the way is itself checked:

- each must belong to root, and a folder must be writable by root alone (group root aside).
  A sticky folder every user can write to (/tmp) may be on the way, but what is inside it must
  be root's: a folder a user created there is refused like any other of theirs;
- a link on the way is followed (its target walked the same way, from / or from the folder
  it sits in) only when root owns it;
- a folder on the way that does not exist yet is made here, by root, relative to the checked
  folder it goes in (mkdirat; mode 0755). If a user makes it first, the mkdir fails and the
  folder is checked, and refused, as theirs;
- the folder the write happens in must not be writable by others at all, sticky or not (a name
  in /tmp itself can be taken by any user between this check and the write);
- the last component may be missing or anything but a link root does not own; a root link
  there has its target's folders checked too (never made: a Link step re-points dangling links).

Why the step's own path-based commands cannot then be redirected: after the walk every
component of the path is root's and only root can rename, remove or replace it (in a sticky
folder the owner of an entry, root, is the only one besides the folder's owner who may move
it), so the names the step's commands resolve are the ones checked. Each refusal is printed as
`refused: PATH: COMPONENT ...` and the helper exits 1.
"""
from __future__ import annotations

import os
import pwd
import stat
import sys

MAX_LINKS = 40
SEARCH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    pass


def _who(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _shared(st: os.stat_result) -> bool:
    """Writable by someone other than root (a group other than root's, or everyone)."""
    return bool(st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0))


def _check(st: os.stat_result, where: str, on_the_way: bool) -> None:
    if st.st_uid != 0:
        raise Refused(f"{where} belongs to {_who(st.st_uid)}, and root does not write inside another user's "
                      "folders or through their links")
    if stat.S_ISDIR(st.st_mode) and _shared(st):
        mode = f"mode {stat.S_IMODE(st.st_mode):o}"
        if not st.st_mode & stat.S_ISVTX:
            raise Refused(f"{where} is writable by users other than root ({mode})")
        if not on_the_way:
            raise Refused(f"{where} is a folder every user can make names in (sticky, {mode}): root does not "
                          "write directly in it")


def _join(base: str, name: str) -> str:
    return (base.rstrip("/") + "/" + name) if name else base


def walk(path: str, create: bool = True) -> None:
    """Check (and make, with `create`) the folders of `path`, then its last component."""
    if not path.startswith("/"):
        raise Refused("not an absolute path")
    parts = [p for p in path.split("/") if p]
    last = parts.pop() if parts else ""
    root = os.open("/", SEARCH)
    _check(os.fstat(root), "/", True)
    stack: list[tuple[int, str]] = [(root, "/")]
    links = 0
    pending = list(parts)
    while pending:
        name = pending.pop(0)
        fd, here = stack[-1]
        if name == ".":
            continue
        if name == "..":
            if len(stack) > 1:
                os.close(stack.pop()[0])
            continue
        where = _join(here, name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                if _shared(os.fstat(fd)):
                    raise Refused(f"{where} does not exist, in a folder other users can write to") from None
                return                      # under a checked folder only root can make it
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass                        # someone was faster: checked below like anything found
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            _check(st, where, True)
            links += 1
            if links > MAX_LINKS:
                raise Refused(f"{where}: too many links")
            target = os.readlink(name, dir_fd=fd)
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop()[0])
            pending = [p for p in target.split("/") if p] + pending
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{where} is not a folder")
        _check(st, where, True)
        child = os.open(name, SEARCH, dir_fd=fd)
        opened = os.fstat(child)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(child)
            raise Refused(f"{where} changed while it was checked")
        _check(opened, where, True)
        stack.append((child, where))
    fd, here = stack[-1]
    _check(os.fstat(fd), here, False)   # the folder the write happens in: root's alone
    if last:
        try:
            found: os.stat_result | None = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            found = None
        if found is not None and stat.S_ISLNK(found.st_mode):
            _check(found, _join(here, last), True)
            target = os.readlink(last, dir_fd=fd)
            walk(target if target.startswith("/") else _join(here, target), create=False)
    for fd, _ in stack:
        os.close(fd)


def main(paths: list[str]) -> int:
    for path in paths:
        try:
            walk(path)
        except Refused as exc:
            print(f"refused: {path}: {exc}")
            return 1
        except OSError as exc:
            print(f"refused: {path}: {exc.strerror} ({exc.filename or path})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
