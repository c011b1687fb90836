"""Julia from the official release tarballs: where a version's tarball lives for an
architecture, the published checksum file (fetched once per run on the controller), and the
install step that downloads, verifies and unpacks it side by side under a prefix.

Official layout (julialang-s3.julialang.org/bin and its mirrors):
    {mirror}/linux/{x64|aarch64}/{MAJOR.MINOR}/julia-{V}-linux-{x86_64|aarch64}.tar.gz
    {mirror}/checksums/julia-{V}.sha256     lines "<sha256>  <file name>" (output of `shasum -a 256`)
"""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from typing import Any

from fleet.engine.facts import Fact
from fleet.engine.steps import Outcome, Step, check_path, path_fact
from fleet.shell import q

OFFICIAL_MIRROR = "https://julialang-s3.julialang.org/bin"
VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.]+)?$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# `uname -m` -> (folder in the mirror, architecture in the file name)
ARCHES = {"x86_64": ("x64", "x86_64"), "aarch64": ("aarch64", "aarch64"), "arm64": ("aarch64", "aarch64")}

ARCH_FACT = Fact("uname-m", "uname -m", lambda text: text.strip())


def major_minor(version: str) -> str:
    match = VERSION.match(version)
    if not match:
        raise ValueError(f"not a Julia release version like 1.10.5: {version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def tarball(mirror: str, version: str, machine: str) -> tuple[str, str]:
    """(url, file name) of the release tarball for a host whose `uname -m` is `machine`."""
    if machine not in ARCHES:
        raise ValueError(f"no official Julia tarball for architecture {machine!r} "
                         f"(supported: {', '.join(sorted(ARCHES))})")
    folder, arch = ARCHES[machine]
    name = f"julia-{version}-linux-{arch}.tar.gz"
    return f"{mirror.rstrip('/')}/linux/{folder}/{major_minor(version)}/{name}", name


def checksums_url(mirror: str, version: str) -> str:
    return f"{mirror.rstrip('/')}/checksums/julia-{version}.sha256"


def parse_checksums(text: str) -> dict[str, str]:
    """file name -> sha256, from `sha256sum`/`shasum -a 256` output (text or binary mode)."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and SHA256.match(parts[0].lower()):
            sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


class ChecksumResolver:
    """Fetches a version's published checksum file once per run, on the controller, so an
    unreachable mirror or an unpublished version fails at plan time, before any host changes."""

    def __init__(self, timeout: float = 30) -> None:
        self.timeout = timeout
        self._cache: dict[tuple[str, str], tuple[dict[str, str] | None, str]] = {}
        self._lock = threading.Lock()

    def sha256(self, mirror: str, version: str, filename: str) -> tuple[str | None, str]:
        """(sha256, "") or (None, error message naming the URL)."""
        url = checksums_url(mirror, version)
        with self._lock:
            if (mirror, version) not in self._cache:
                self._cache[(mirror, version)] = self._fetch(url)
            sums, error = self._cache[(mirror, version)]
        if error or sums is None:   # _fetch gives the sums or an error
            return None, error
        if filename not in sums:
            return None, (f"{filename} is not listed in {url} ({len(sums)} files listed); "
                          f"check julia_version and the mirror")
        return sums[filename], ""

    def _fetch(self, url: str) -> tuple[dict[str, str] | None, str]:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                text = answer.read(1024 * 1024).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return None, f"no published checksums at {url} (HTTP {exc.code} {exc.reason}): is the version released there?"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"cannot reach the Julia mirror: {url}: {reason}"
        sums = parse_checksums(text)
        if not sums:
            return None, f"{url} lists no sha256 checksums"
        return sums, ""


_RUN_RESOLVERS: "weakref.WeakKeyDictionary[Any, ChecksumResolver]" = weakref.WeakKeyDictionary()
_RUN_LOCK = threading.Lock()


def run_resolver(run_object: Any) -> ChecksumResolver:
    """The checksum resolver of this run, keyed on an object that lives exactly as long as the
    run (the engine's per-run git RefResolver, `ctx.resolver`)."""
    if run_object is None:
        return ChecksumResolver()
    with _RUN_LOCK:
        if run_object not in _RUN_RESOLVERS:
            _RUN_RESOLVERS[run_object] = ChecksumResolver()
        return _RUN_RESOLVERS[run_object]


def installed_fact(prefix: str) -> Fact:
    """Julia versions unpacked under prefix (folders julia-<version> holding bin/julia)."""
    def parse(text: str) -> list[str]:
        found = []
        for line in text.split():
            match = re.search(r"/julia-([^/]+)/bin/julia$", line)
            if match:
                found.append(match.group(1))
        return sorted(found)
    return Fact(f"julia-installed:{prefix}", f"ls -1d {q(prefix)}/julia-*/bin/julia 2>/dev/null; true", parse)


@dataclass
class JuliaInstall(Step):
    """One Julia release in {prefix}/julia-{version}: download, verify the sha256, unpack, rename."""

    version: str
    mirror: str = OFFICIAL_MIRROR
    prefix: str = "/opt"
    sha256: str = ""              # a pin; empty = the published checksum file
    resolver: ChecksumResolver | None = None
    retries: int = 3
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.prefix = check_path(self.prefix, "prefix")
        major_minor(self.version)
        self.sha256 = self.sha256.lower()
        self.home = f"{self.prefix.rstrip('/')}/julia-{self.version}"
        self.binary = f"{self.home}/bin/julia"
        self.name = f"julia {self.version} in {self.home}"
        self.resolver = self.resolver or ChecksumResolver()

    def paths(self) -> tuple[str, ...]:
        return (self.home,)   # unpacked beside it in {prefix}, then renamed into place

    def facts(self, diff: bool = False) -> list[Fact]:
        return [path_fact(self.binary), ARCH_FACT, installed_fact(self.prefix)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        if facts[path_fact(self.binary).key] is not None:
            return Outcome(False, f"julia {self.version} already installed")
        try:
            url, filename = tarball(self.mirror, self.version, facts[ARCH_FACT.key])
        except ValueError as exc:
            return Outcome(False, f"refused: {exc}; nothing installed", failed=True)
        expected = self.sha256
        if not expected:
            assert self.resolver is not None   # __post_init__ sets one
            found, error = self.resolver.sha256(self.mirror, self.version, filename)
            if error or found is None:   # the resolver gives a checksum or an error
                return Outcome(False, f"{error}; nothing installed", failed=True)
            expected = found
        others = [v for v in facts[installed_fact(self.prefix).key] if v != self.version]
        beside = f" beside {', '.join(others)}" if others else ""
        return Outcome(True, f"install julia {self.version}{beside} from {url}", self._commands(url, expected))

    def _commands(self, url: str, expected: str) -> list[str]:
        prefix, home, u = q(self.prefix), q(self.home), q(url)
        leftovers = f"{prefix}/.julia-{q(self.version)}.fleet-tmp."
        unpacked = f'"$tmp"/julia-{q(self.version)}'
        return [
            f"mkdir -p {prefix}",
            f"rm -rf -- {leftovers}*",  # an earlier run cut short
            # The temp folder sits beside the target: the final `mv` is a rename on one filesystem.
            f"tmp=$(mktemp -d {leftovers}XXXXXX)",
            "trap 'rm -rf -- \"$tmp\"' EXIT",
            f"if ! __retry {int(self.retries)} curl -fsSL --connect-timeout 15 --max-time 1800 -o \"$tmp/julia.tar.gz\" {u}; "
            f"then echo {q(f'cannot download {url}; nothing installed')}; exit 1; fi",
            f"if ! echo {q(expected)}\"  $tmp/julia.tar.gz\" | sha256sum -c --status; then "
            f"echo {q(f'checksum mismatch for {url}: expected {expected}, got ')}"
            f"\"$(sha256sum < \"$tmp/julia.tar.gz\" | cut -d' ' -f1)\"{q('; nothing installed')}; exit 1; fi",
            f"mkdir {unpacked}",
            f"tar -xzf \"$tmp/julia.tar.gz\" -C {unpacked} --strip-components=1 --no-same-owner",
            f"if [ ! -x {unpacked}/bin/julia ]; then echo {q(f'{url} holds no bin/julia; nothing installed')}; exit 1; fi",
            f"mv -T {unpacked} {home}",
            f"echo {q(f'julia {self.version} installed in {self.home}')}",
        ]


def link_fact(path: str) -> Fact:
    def parse(text: str) -> dict | None:
        kind, _, target = text.rstrip("\n").partition(" ")
        return None if kind == "ABSENT" else {"kind": kind, "target": target}
    p = q(path)
    return Fact(f"link:{path}", f"if [ -L {p} ]; then echo \"LINK $(readlink {p})\"; elif [ -e {p} ]; then "
                                f"echo \"OTHER $(stat -c %F {p})\"; else echo ABSENT; fi", parse)


@dataclass
class Link(Step):
    """A symbolic link, replaced atomically; a real file or folder in its place is left alone."""

    path: str
    target: str
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.path = check_path(self.path, "path")
        self.name = f"link {self.path} -> {self.target}"

    def paths(self) -> tuple[str, ...]:
        return (self.path, f"{self.path}.fleet-tmp")

    def facts(self, diff: bool = False) -> list[Fact]:
        return [link_fact(self.path)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        have = facts[link_fact(self.path).key]
        if have is not None and have["kind"] != "LINK":
            return Outcome(False, f"{self.path} exists and is a {have['target']}, not a link; left alone", failed=True)
        if have is not None and have["target"] == self.target:
            return Outcome(False, f"{self.path} already links to {self.target}")
        tmp = f"{self.path}.fleet-tmp"
        commands = [f"mkdir -p {q(self.path.rsplit('/', 1)[0] or '/')}",
                    f"ln -sfn {q(self.target)} {q(tmp)}", f"mv -Tf {q(tmp)} {q(self.path)}"]
        verb = "create" if have is None else f"move (was {have['target']})"
        return Outcome(True, f"{verb} link {self.path} -> {self.target}", commands)
