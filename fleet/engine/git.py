"""The git checkout step. Branch tips are resolved once on the controller (`git ls-remote`),
so a no-op run costs each host nothing but a `rev-parse` in the shared probe.

Student work is never destroyed: a checkout with local changes, or with commits that the
wanted ref does not contain, is reported as kept and left alone.

Every git command on a host, the probe's included, runs as the checkout's owner (`user`):
git reads the checkout's own `.git/config`, whose settings can run commands (core.fsmonitor,
core.sshCommand, ...), so root never runs git in a checkout a student can write. A checkout
git refuses to read as that user (another owner) is reported, not forced with safe.directory.
"""
from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from fleet.engine.facts import Fact
from fleet.engine.steps import KEPT, Outcome, Step, check_path, read_as
from fleet.shell import q, redact_url, url_secrets

SHA = re.compile(r"^[0-9a-f]{40}$")


class RefResolver:
    """Caches `git ls-remote` answers for a run: one lookup per (url, ref), shared by every host."""

    def __init__(self, timeout: int = 30) -> None:
        self.timeout = timeout
        self._cache: dict[tuple[str, str], tuple[str | None, str | None, str]] = {}
        self._lock = threading.Lock()

    def resolve(self, url: str, ref: str) -> tuple[str | None, str | None, str]:
        """(sha, branch or None, error message)."""
        if SHA.match(ref):
            return ref, None, ""
        with self._lock:
            if (url, ref) not in self._cache:
                self._cache[(url, ref)] = self._ls_remote(url, ref)
            return self._cache[(url, ref)]

    def _ls_remote(self, url: str, ref: str) -> tuple[str | None, str | None, str]:
        try:
            out = subprocess.run(["git", "ls-remote", "--", url, ref, f"refs/tags/{ref}^{{}}"],
                                 capture_output=True, text=True, timeout=self.timeout,
                                 env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
        except subprocess.TimeoutExpired:
            return None, None, f"cannot reach repository {redact_url(url)}: no answer in {self.timeout} s"
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["git ls-remote failed"])[-1]
            return None, None, f"cannot reach repository {redact_url(url)}: {redact_url(reason)}"
        refs = {name: sha for sha, name in (line.split("\t") for line in out.stdout.splitlines() if "\t" in line)}
        if f"refs/heads/{ref}" in refs:
            return refs[f"refs/heads/{ref}"], ref, ""
        for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
            if name in refs:
                return refs[name], None, ""
        return None, None, f"ref {ref!r} not found in {redact_url(url)}"


def _parse_checkout(text: str) -> dict[str, Any] | None:
    """`git status --porcelain=v2 --branch` then `url=...`: head, origin url and tracked changes;
    `error` where git would not read the checkout."""
    if text.strip() == "ABSENT":
        return None
    info: dict[str, Any] = {"head": "", "url": "", "dirty": 0, "error": ""}
    for line in text.splitlines():
        if line.startswith("ERROR "):
            info["error"] = line[6:].strip()
        elif line.startswith("# branch.oid "):
            info["head"] = line.split()[2]
        elif line.startswith("url="):
            info["url"] = line[4:].strip()
        elif line.strip() and not line.startswith("#"):
            info["dirty"] += 1
    return info


@dataclass
class Git(Step):
    url: str
    dest: str
    ref: str = "main"
    user: str | None = None
    resolver: RefResolver | None = None
    critical: bool = False  # one unreachable repository must not stop the other steps
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.dest = check_path(self.dest, "dest")
        self.name = f"git {redact_url(self.url)} -> {self.dest}@{self.ref}"
        self.sha, self.branch, self.error = (self.resolver or RefResolver()).resolve(self.url, self.ref)

    def secrets(self) -> list[str]:
        return url_secrets(self.url)

    def paths(self) -> tuple[str, ...]:
        return (self.dest,)

    def facts(self, diff: bool = False) -> list[Fact]:
        d = q(self.dest)
        # Two git processes: status gives the head and the tracked changes, config the origin.
        status = f"git -C {d} status --porcelain=v2 --branch --untracked-files=no"
        # On failure (e.g. another owner's checkout) the second status only collects git's reason.
        cmd = (f"if [ -d {d}/.git ]; then if __o=$({status} 2>/dev/null); then printf '%s\\n' \"$__o\"; "
               f"else __e=$({status} 2>&1 >/dev/null); __e=${{__e#*fatal: }}; printf 'ERROR %s\\n' \"${{__e%%$'\\n'*}}\"; fi; "
               f"printf url=; git -C {d} config --get remote.origin.url; else echo ABSENT; fi")
        return [Fact(f"git@{self.runs_as or 'root'}:{self.dest}", read_as(self.runs_as, cmd), _parse_checkout)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        if self.error or self.sha is None:   # resolve() gives a sha or an error
            return Outcome(False, self.error, failed=True)
        have = facts[f"git@{self.runs_as or 'root'}:{self.dest}"]
        if have is not None and have.get("error"):
            return Outcome(False, f"refused: git will not read {self.dest} as {self.runs_as or 'root'} "
                                  f"({have['error']}); left alone", failed=True)
        checkout = (f"git checkout -q -B {q(self.branch)} {q(self.sha)}" if self.branch
                    else f"git checkout -q --detach {q(self.sha)}")
        if have is None:
            parent = self.dest.rsplit("/", 1)[0] or "/"
            clone = f"git clone -q --no-checkout {q(self.url)} {q(self.dest)} && cd {q(self.dest)} && {checkout}"
            # The parent is made as the course user too, so the clone belongs to the student.
            return Outcome(True, f"clone {redact_url(self.url)} at {self.ref} ({self.sha[:10]})",
                           [f"mkdir -p {q(parent)} && {clone}"])
        if have.get("url") != self.url:
            return Outcome(False, f"{self.dest} is a clone of {redact_url(repr(have.get('url')))}, not "
                                  f"{redact_url(self.url)}; left alone", failed=True)
        if have["head"] == self.sha:
            return Outcome(False, f"{self.dest} already at {self.ref} ({self.sha[:10]})")
        if have["dirty"]:
            return Outcome(False, f"kept: local changes in {self.dest} ({have['dirty']} files); not updated to {self.ref}")
        # Commits a student made on top of the course ref must survive: update only fast-forwards.
        update = (f"cd {q(self.dest)} && git fetch -q origin && "
                  f"if ! git merge-base --is-ancestor HEAD {q(self.sha)}; then "
                  f"echo 'kept: local commits in {self.dest} that {self.ref} does not contain'; exit {KEPT}; fi && {checkout}")
        return Outcome(True, f"update {self.dest} to {self.ref} ({self.sha[:10]})", [update])
