"""The julia_kernel role without hosts: tarball URLs per architecture, checksum files, the
install step's plans (tests as data), the checksum resolver against a real HTTP server on
127.0.0.1, the role's knob checks, and the install commands run for real by bash on this
machine (download, verify, unpack, rename) against that server.

A real Julia is not exercised here: the tarballs are small stand-ins built by the tests."""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleet.inventory import files as inventory
from fleet.engine.compile import compile_plans
from fleet.errors import InputError, InputErrors
from fleet.engine.git import RefResolver
from roles.julia_kernel.julia import (ARCH_FACT, ChecksumResolver, JuliaInstall, Link, checksums_url, installed_fact,
                         link_fact, parse_checksums, run_resolver, tarball)
from fleet.engine.remote import Apply, Change
from fleet.engine.roles import RoleSet
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.engine.steps import Command, Directory, Verify, path_fact
from tests.fixtures import free_port

OFFICIAL = "https://julialang-s3.julialang.org/bin"


# --- tarball URLs and checksum files ------------------------------------------------------

@pytest.mark.parametrize("mirror,version,machine,url", [
    (OFFICIAL, "1.10.5", "x86_64",
     f"{OFFICIAL}/linux/x64/1.10/julia-1.10.5-linux-x86_64.tar.gz"),
    (OFFICIAL, "1.10.5", "aarch64",
     f"{OFFICIAL}/linux/aarch64/1.10/julia-1.10.5-linux-aarch64.tar.gz"),
    (OFFICIAL, "1.11.1", "arm64",
     f"{OFFICIAL}/linux/aarch64/1.11/julia-1.11.1-linux-aarch64.tar.gz"),
    ("http://mirror.lan/julia/", "1.11.0-rc1", "x86_64",
     "http://mirror.lan/julia/linux/x64/1.11/julia-1.11.0-rc1-linux-x86_64.tar.gz"),
])
def test_tarball_url_per_architecture(mirror, version, machine, url):
    assert tarball(mirror, version, machine) == (url, url.rsplit("/", 1)[1])


def test_unsupported_architecture_and_bad_version_are_refused():
    with pytest.raises(ValueError, match="no official Julia tarball for architecture 'riscv64'"):
        tarball(OFFICIAL, "1.10.5", "riscv64")
    with pytest.raises(ValueError, match="not a Julia release version"):
        tarball(OFFICIAL, "1.10", "x86_64")


def test_checksums_url():
    assert checksums_url(OFFICIAL + "/", "1.10.5") == f"{OFFICIAL}/checksums/julia-1.10.5.sha256"


CHECKSUM_FILE = (
    # `shasum -a 256 julia-x.y.z*` output, as the release process publishes it
    f"{'a' * 64}  julia-1.10.5-linux-x86_64.tar.gz\n"
    f"{'B' * 64}  julia-1.10.5-linux-aarch64.tar.gz\n"
    f"{'c' * 64} *julia-1.10.5-win64.zip\n"        # binary-mode marker
    "\n# a comment\nnot a checksum line\n"
    f"{'d' * 63}  julia-1.10.5-too-short.tar.gz\n"
)


def test_checksum_file_parsing():
    assert parse_checksums(CHECKSUM_FILE) == {
        "julia-1.10.5-linux-x86_64.tar.gz": "a" * 64,
        "julia-1.10.5-linux-aarch64.tar.gz": "b" * 64,   # lowercased
        "julia-1.10.5-win64.zip": "c" * 64,
    }
    assert parse_checksums("") == {}


# --- a real HTTP server -----------------------------------------------------------------

class Mirror:
    """A folder served over HTTP on 127.0.0.1 with the official layout; counts requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bin"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, version: str, machine: str = "x86_64", *, wrong_sum: bool = False,
                listed: bool = True, checksums: bool = True) -> str:
        """A stand-in tarball julia-V/bin/julia plus the version's checksum file; returns its sha256."""
        url, name = tarball("http://x/bin", version, machine)
        data = stand_in_tarball(version)
        path = self.root / "bin" / url.split("/bin/", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = hashlib.sha256(data + (b"tampered" if wrong_sum else b"")).hexdigest()
        if checksums:
            sums = self.root / "bin" / "checksums" / f"julia-{version}.sha256"
            sums.parent.mkdir(parents=True, exist_ok=True)
            # One file per version lists every file of the release (the source tarball too).
            lines = sums.read_text().splitlines() if sums.exists() else [f"{'0' * 64}  julia-{version}.tar.gz"]
            lines = [line for line in lines if not line.endswith("  " + name)]
            sums.write_text("\n".join(lines + ([f"{digest}  {name}"] if listed else [])) + "\n")
        return digest

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def stand_in_tarball(version: str) -> bytes:
    script = f"#!/bin/sh\necho 'julia version {version}'\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder in (f"julia-{version}", f"julia-{version}/bin"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo(f"julia-{version}/bin/julia")
        info.size, info.mode, info.uid, info.uname = len(script), 0o755, 4242, "builder"
        tar.addfile(info, io.BytesIO(script))
    return buffer.getvalue()


@pytest.fixture
def mirror(tmp_path):
    server = Mirror(tmp_path / "www")
    yield server
    server.close()


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}/bin"   # nothing listens there


# --- the resolver -----------------------------------------------------------------------

def test_resolver_reads_the_published_sum_once_per_mirror_and_version(mirror):
    digest = mirror.publish("1.10.5")
    mirror.publish("1.10.5", "aarch64")
    resolver = ChecksumResolver()
    assert resolver.sha256(mirror.url, "1.10.5", "julia-1.10.5-linux-x86_64.tar.gz") == (digest, "")
    assert resolver.sha256(mirror.url, "1.10.5", "julia-1.10.5-linux-aarch64.tar.gz")[0]
    assert resolver.sha256(mirror.url, "1.10.5", "julia-1.10.5-linux-x86_64.tar.gz") == (digest, "")
    assert mirror.requests == ["/bin/checksums/julia-1.10.5.sha256"]


@pytest.mark.parametrize("case", ["unreachable", "no checksum file", "file not listed", "empty file"])
def test_resolver_errors_name_the_url(mirror, case):
    resolver = ChecksumResolver(timeout=5)
    name = "julia-1.12.0-linux-x86_64.tar.gz"
    if case == "unreachable":
        base = closed_url()
        sha, error = resolver.sha256(base, "1.12.0", name)
        assert error.startswith(f"cannot reach the Julia mirror: {base}/checksums/julia-1.12.0.sha256: ")
        assert "refused" in error.lower()
    elif case == "no checksum file":
        sha, error = resolver.sha256(mirror.url, "1.12.0", name)
        assert error.startswith(f"no published checksums at {mirror.url}/checksums/julia-1.12.0.sha256 (HTTP 404")
    elif case == "file not listed":
        mirror.publish("1.12.0", listed=False)
        sha, error = resolver.sha256(mirror.url, "1.12.0", name)
        assert error.startswith(f"{name} is not listed in {mirror.url}/checksums/julia-1.12.0.sha256")
    else:
        (mirror.root / "bin" / "checksums").mkdir(parents=True)
        (mirror.root / "bin" / "checksums" / "julia-1.12.0.sha256").write_text("<html>oops</html>\n")
        sha, error = resolver.sha256(mirror.url, "1.12.0", name)
        assert error == f"{mirror.url}/checksums/julia-1.12.0.sha256 lists no sha256 checksums"
    assert sha is None


def test_one_resolver_per_run():
    run_a, run_b = RefResolver(), RefResolver()
    assert run_resolver(run_a) is run_resolver(run_a)
    assert run_resolver(run_a) is not run_resolver(run_b)


# --- the install step's plans (tests as data) ---------------------------------------------

def install_facts(step, *, have=None, machine="x86_64", installed=()):
    return {path_fact(step.binary).key: have, ARCH_FACT.key: machine, installed_fact(step.prefix).key: list(installed)}


BINARY = {"kind": "regular file", "mode": "0755", "owner": "root", "group": "root", "sha256": "f" * 64, "content": None}
PLAN_CASES = [
    # (id, version, facts, changed, failed, message, command fragments)
    ("absent", "1.10.5", dict(), True, False, "install julia 1.10.5 from {mirror}/linux/x64/1.10/julia-1.10.5-linux-x86_64.tar.gz",
     ["curl -fsSL", "sha256sum -c --status", "mv -T \"$tmp\"/julia-1.10.5 /opt/julia-1.10.5"]),
    ("absent on arm", "1.10.5", dict(machine="aarch64"), True, False,
     "install julia 1.10.5 from {mirror}/linux/aarch64/1.10/julia-1.10.5-linux-aarch64.tar.gz", ["linux-aarch64.tar.gz"]),
    ("already installed", "1.10.5", dict(have=BINARY, installed=["1.10.5"]), False, False,
     "julia 1.10.5 already installed", []),
    ("other version installed: side by side", "1.11.1", dict(installed=["1.10.5"]), True, False,
     "install julia 1.11.1 beside 1.10.5 from", ["mv -T \"$tmp\"/julia-1.11.1 /opt/julia-1.11.1"]),
    ("unsupported architecture", "1.10.5", dict(machine="ppc64le"), False, True,
     "refused: no official Julia tarball for architecture 'ppc64le'", []),
]


@pytest.mark.parametrize("case,version,facts,changed,failed,message,fragments", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_install_plan(mirror, case, version, facts, changed, failed, message, fragments):
    mirror.publish(version, "aarch64" if facts.get("machine") == "aarch64" else "x86_64")
    step = JuliaInstall(version, mirror=mirror.url, prefix="/opt", resolver=ChecksumResolver())
    assert {f.key for f in step.facts()} == set(install_facts(step, **facts))
    outcome = step.plan(install_facts(step, **facts))
    assert (outcome.changed, outcome.failed) == (changed, failed)
    assert message.format(mirror=mirror.url) in outcome.message
    script = "\n".join(outcome.commands)
    for fragment in fragments:
        assert fragment in script
    if not changed:
        assert outcome.commands == [] and mirror.requests == []   # a no-op never asks the mirror


def test_pinned_sum_needs_no_checksum_file(mirror):
    step = JuliaInstall("1.10.5", mirror=mirror.url, sha256="AB" * 32, resolver=ChecksumResolver())
    outcome = step.plan(install_facts(step))
    assert outcome.changed and "ab" * 32 in "\n".join(outcome.commands)
    assert mirror.requests == []


@pytest.mark.parametrize("reachable", [True, False])
def test_install_plan_fails_when_the_sum_cannot_be_resolved(mirror, reachable):
    base = mirror.url if reachable else closed_url()
    step = JuliaInstall("1.12.0", mirror=base, resolver=ChecksumResolver(timeout=5))
    outcome = step.plan(install_facts(step))
    assert outcome.failed and not outcome.changed and outcome.commands == []
    assert f"{base}/checksums/julia-1.12.0.sha256" in outcome.message
    assert outcome.message.endswith("nothing installed")


LINK_CASES = [
    ("absent", None, True, False, "create link /usr/local/bin/julia -> /opt/julia-1.10.5/bin/julia"),
    ("right", {"kind": "LINK", "target": "/opt/julia-1.10.5/bin/julia"}, False, False, "already links to"),
    ("other version", {"kind": "LINK", "target": "/opt/julia-1.9.4/bin/julia"}, True, False,
     "move (was /opt/julia-1.9.4/bin/julia) link"),
    ("a real file", {"kind": "OTHER", "target": "regular file"}, False, True, "is a regular file, not a link; left alone"),
]


@pytest.mark.parametrize("case,have,changed,failed,message", LINK_CASES, ids=[c[0] for c in LINK_CASES])
def test_link_plan(case, have, changed, failed, message):
    step = Link("/usr/local/bin/julia", "/opt/julia-1.10.5/bin/julia")
    outcome = step.plan({link_fact(step.path).key: have})
    assert (outcome.changed, outcome.failed) == (changed, failed)
    assert message in outcome.message
    if changed:
        assert outcome.commands[-1] == "mv -Tf /usr/local/bin/julia.fleet-tmp /usr/local/bin/julia"


def run_fact(fact):
    out = subprocess.run(["bash", "-c", fact.command], capture_output=True, text=True, check=True).stdout
    return fact.parse(out)


def test_facts_read_this_machine(tmp_path):
    (tmp_path / "julia-1.10.5" / "bin").mkdir(parents=True)
    (tmp_path / "julia-1.10.5" / "bin" / "julia").write_text("")
    (tmp_path / ".julia-1.11.1.fleet-tmp.abc" / "bin").mkdir(parents=True)   # a temp is not a version
    assert run_fact(installed_fact(str(tmp_path))) == ["1.10.5"]
    assert run_fact(installed_fact(str(tmp_path / "none"))) == []
    assert run_fact(ARCH_FACT) == subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip()
    link = tmp_path / "julia"
    assert run_fact(link_fact(str(link))) is None
    link.symlink_to("/opt/julia-1.10.5/bin/julia")
    assert run_fact(link_fact(str(link))) == {"kind": "LINK", "target": "/opt/julia-1.10.5/bin/julia"}
    assert run_fact(link_fact(str(tmp_path)))["kind"] == "OTHER"


# --- the install commands, run for real by bash ----------------------------------------------

def apply_for_real(step, facts) -> tuple[dict, str]:
    """Plan, then run the engine's real apply script (set -e, __retry, abort on failure) locally."""
    outcome = step.plan(facts)
    assert outcome.changed, outcome.message
    apply = Apply([Change(0, step, outcome)], [], set(), [])
    script = apply.script().replace("mkdir -p /var/lib/jupyter-fleet/pending", "true")
    out = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=120).stdout
    return apply.parse(out), out


def test_install_commands_download_verify_and_unpack(mirror, tmp_path):
    mirror.publish("1.10.5")
    prefix = tmp_path / "opt"
    step = JuliaInstall("1.10.5", mirror=mirror.url, prefix=str(prefix), resolver=ChecksumResolver())
    facts = install_facts(step, machine=run_fact(ARCH_FACT) if run_fact(ARCH_FACT) in ("x86_64", "aarch64") else "x86_64")
    if facts[ARCH_FACT.key] == "aarch64":
        mirror.publish("1.10.5", "aarch64")
    result, out = apply_for_real(step, facts)
    assert result["steps"] == {0: 0}, out
    julia = prefix / "julia-1.10.5" / "bin" / "julia"
    assert subprocess.run([str(julia)], capture_output=True, text=True).stdout == "julia version 1.10.5\n"
    assert sorted(p.name for p in prefix.iterdir()) == ["julia-1.10.5"]          # no temp left
    assert julia.stat().st_uid == 0 or julia.stat().st_uid == subprocess.os.getuid()  # not the tarball's 4242
    tarballs = [r for r in mirror.requests if r.endswith(".tar.gz")]
    assert len(tarballs) == 1


@pytest.mark.parametrize("case", ["checksum mismatch", "unreachable mirror"])
def test_failed_install_leaves_nothing(mirror, tmp_path, case):
    prefix = tmp_path / "opt"
    (prefix / "julia-1.10.5" / "bin").mkdir(parents=True)   # an earlier version stays untouched
    if case == "checksum mismatch":
        published = mirror.publish("1.12.0", wrong_sum=True)
        base, pin = mirror.url, ""
    else:
        base, pin = closed_url(), "0" * 64   # pinned, so the plan does not need the mirror
    step = JuliaInstall("1.12.0", mirror=base, prefix=str(prefix), sha256=pin, resolver=ChecksumResolver(),
                        retries=1)
    result, out = apply_for_real(step, install_facts(step))
    assert result["steps"][0] != 0 and result["aborted"]
    last = result["steps_output"][0].strip().splitlines()[-1]
    url = tarball(base, "1.12.0", "x86_64")[0]
    if case == "checksum mismatch":
        # The sums of what was published and served, not of a tarball rebuilt now (its mtimes differ).
        served = mirror.root / "bin" / url.split("/bin/", 1)[1]
        expected, actual = published, hashlib.sha256(served.read_bytes()).hexdigest()
        assert last == f"checksum mismatch for {url}: expected {expected}, got {actual}; nothing installed"
    else:
        assert last == f"cannot download {url}; nothing installed"
    assert sorted(p.name for p in prefix.iterdir()) == ["julia-1.10.5"]


# --- the role: steps and knob checks ---------------------------------------------------------

def compile_role(tmp_path, vars=None, overrides=None):
    inv = inventory.from_data({"name": "lab", "vars": {"roles": ["julia_kernel"], **(vars or {})},
                               "hosts": {"h1": {"address": "10.0.0.1"}}}, str(tmp_path / "lab.yml"))
    masker = Masker()
    plans = compile_plans(inv, ["h1"], roleset=RoleSet(), overrides=overrides or {}, only_roles=None,
                          secrets=CourseSecrets(tmp_path, "lab", masker), masker=masker)
    return plans["h1"]


def test_role_steps(tmp_path):
    plan = compile_role(tmp_path, overrides={"julia_version": "1.11.1"})
    steps = [s for _, s in plan.steps]
    assert [type(s) for s in steps] == [JuliaInstall, Link, Directory, Command]
    install, link, depot, ijulia = steps
    assert (install.home, install.mirror, install.sha256) == ("/opt/julia-1.11.1", OFFICIAL, "")
    assert (link.path, link.target) == ("/usr/local/bin/julia", "/opt/julia-1.11.1/bin/julia")
    assert (depot.path, depot.mode) == ("/opt/julia-depot", "0755")
    assert ("JULIA_DEPOT_PATH=/opt/julia-depot JUPYTER_DATA_DIR=/usr/local/share/jupyter "
            "JUPYTER=/opt/jupyter/bin/jupyter /opt/julia-1.11.1/bin/julia -e") in ijulia.command
    assert 'installkernel("Julia", env=Dict("JULIA_DEPOT_PATH"=>"/opt/julia-depot"))' in ijulia.command
    assert "/usr/local/share/jupyter/kernels/julia-1.11/kernel.json /opt/julia-1.11.1/bin/julia" in ijulia.unless
    assert ijulia.creates is None
    (_, verify), = plan.verifies
    assert isinstance(verify, Verify) and not verify.every_run and verify.user == "student"
    assert "kernelspec list --json" in verify.script and "'julia version 1.11.1'" in verify.script


def test_one_checksum_fetch_for_every_host_of_a_run(mirror, tmp_path):
    digest = mirror.publish("1.10.5")
    inv = inventory.from_data({"name": "lab", "vars": {"roles": ["julia_kernel"], "julia_mirror": mirror.url},
                               "hosts": {f"h{i}": {"address": f"10.0.0.{i}"} for i in range(1, 6)}},
                              str(tmp_path / "lab.yml"))
    masker = Masker()
    plans = compile_plans(inv, list(inv.hosts), roleset=RoleSet(), overrides={}, only_roles=None,
                          secrets=CourseSecrets(tmp_path, "lab", masker), masker=masker, resolver=RefResolver())
    for plan in plans.values():
        step = plan.steps[0][1]
        assert digest in "\n".join(step.plan(install_facts(step)).commands)
    assert mirror.requests == ["/bin/checksums/julia-1.10.5.sha256"]


@pytest.mark.parametrize("knob,value,message", [
    ("julia_version", "1.10", "expected a Julia release like 1.10.5"),
    ("julia_version", "latest", "expected a Julia release like 1.10.5"),
    ("julia_mirror", "ftp://mirror/bin", "expected an http(s) URL"),
    ("julia_sha256", "abc", "expected 64 hex digits"),
    ("julia_prefix", "opt", "expected an absolute path"),
    ("julia_verison", "1.10.5", "unknown knob for role julia_kernel (did you mean julia_version?)"),
])
def test_bad_knobs_name_the_file_and_key(tmp_path, knob, value, message):
    with pytest.raises((InputError, InputErrors)) as caught:
        compile_role(tmp_path, vars={knob: value})
    text = str(caught.value)
    assert message in text and knob in text and "lab.yml" in text
