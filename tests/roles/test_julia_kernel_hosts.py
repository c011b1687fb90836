"""The julia_kernel role on a real Debian 12 host, with the jupyter role and the real CLI.

A REAL JULIA IS NOT EXERCISED HERE. Julia binaries cannot be downloaded on our machines, so
the test builds small stand-in release tarballs (julia-V/bin/julia is a bash script that
answers `--version` and, for the role's IJulia `-e` call, writes the kernelspec and an
IJulia folder the way IJulia's installkernel does, and counts its calls) and serves them,
with their checksum files in the official layout, from `python3 -m http.server` on the
controller alias address. Everything else is real: the host, ssh, the probe and apply
scripts, curl, sha256sum, tar, the atomic rename, the /usr/local/bin/julia link, the
Jupyter venv from the jupyter role and its `jupyter kernelspec list`.

Covered: first install, a no-op second run (no second download, no IJulia rebuild), a
version switch installed side by side, a checksum mismatch and an unreachable mirror that
fail the host and install nothing.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.testhosts import hosts as testhosts
from tests.fixtures import changed_steps, fleet, free_port, sh, stop, wait_port
from tests.skips import require

pytestmark = pytest.mark.hosts

ARCH = {"x86_64": ("x64", "x86_64"), "aarch64": ("aarch64", "aarch64")}

# The stand-in `bin/julia`: just what the role calls, nothing more.
STAND_IN = r"""#!/bin/bash
# Stand-in for julia VERSION (tests only): no real Julia, no real IJulia.
set -eu
version=VERSION
binary=$(readlink -f "$0")
case "${1:-}" in
  --version) echo "julia version $version" ;;
  -e)
    case "$2" in
      *'Pkg.add("IJulia")'*'installkernel("Julia", env=Dict("JULIA_DEPOT_PATH"=>'*) ;;
      *) echo "stand-in julia: unexpected code: $2" >&2; exit 2 ;;
    esac
    depot=$(printf %s "$2" | sed -n 's/.*"JULIA_DEPOT_PATH"=>"\([^"]*\)".*/\1/p')
    kernel="$JUPYTER_DATA_DIR/kernels/julia-${version%.*}"
    mkdir -p "$JULIA_DEPOT_PATH/packages/IJulia" "$kernel"
    python3 - "$kernel/kernel.json" "$binary" "$version" "$depot" <<'PY'
import json, sys
path, binary, version, depot = sys.argv[1:]
spec = {"argv": [binary, "-i", "--color=yes", "-e", "import IJulia; IJulia.run_kernel()", "{connection_file}"],
        "display_name": "Julia " + version.rsplit(".", 1)[0], "language": "julia",
        "env": {"JULIA_DEPOT_PATH": depot}, "interrupt_mode": "signal"}
open(path, "w").write(json.dumps(spec, indent=1))
PY
    echo "$version JUPYTER=${JUPYTER:-unset}" >> "$JULIA_DEPOT_PATH/stand-in-ijulia-installs"
    ;;
  *) echo "stand-in julia: unexpected arguments: $*" >&2; exit 2 ;;
esac
"""


def stand_in_tarball(version: str) -> bytes:
    script = STAND_IN.replace("VERSION", version).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for folder in (f"julia-{version}", f"julia-{version}/bin", f"julia-{version}/share"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.uid = tarfile.DIRTYPE, 0o755, 1234
            tar.addfile(info)
        info = tarfile.TarInfo(f"julia-{version}/bin/julia")
        info.size, info.mode, info.uid = len(script), 0o755, 1234
        tar.addfile(info, io.BytesIO(script))
    return buffer.getvalue()


class Mirror:
    """`python3 -m http.server` on the controller alias, serving the official layout."""

    def __init__(self, root: Path, machine: str) -> None:
        self.root, self.machine = root, machine
        self.log = root.parent / "http.log"
        self.port = free_port(testhosts.CONTROLLER_ALIAS)
        self.url = f"http://{testhosts.CONTROLLER_ALIAS}:{self.port}/bin"
        self.proc = subprocess.Popen(["python3", "-m", "http.server", "--bind", testhosts.CONTROLLER_ALIAS,
                                      "--directory", str(root), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        wait_port(testhosts.CONTROLLER_ALIAS, self.port)

    def tarball_url(self, version: str) -> str:
        folder, arch = ARCH[self.machine]
        return f"{self.url}/linux/{folder}/{version.rsplit('.', 1)[0]}/julia-{version}-linux-{arch}.tar.gz"

    def publish(self, version: str, wrong_sum: bool = False) -> tuple[str, str]:
        """Serve a stand-in tarball and the version's checksum file; (published sum, real sum)."""
        data = stand_in_tarball(version)
        url = self.tarball_url(version)
        path = self.root / url.split("/", 3)[3]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        real = hashlib.sha256(data).hexdigest()
        published = hashlib.sha256(b"not the tarball").hexdigest() if wrong_sum else real
        sums = self.root / "bin" / "checksums" / f"julia-{version}.sha256"
        sums.parent.mkdir(parents=True, exist_ok=True)
        sums.write_text(f"{'0' * 64}  julia-{version}.tar.gz\n{published}  {url.rsplit('/', 1)[1]}\n")
        return published, real

    def gets(self, suffix: str) -> int:
        """Successful GETs whose path ends with suffix, read off the server's own log."""
        return len(re.findall(rf'"GET \S*{re.escape(suffix)} HTTP/1\.[01]" 200', self.log.read_text()))

    def close(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def lab(hosts_factory, tmp_path_factory):
    testhosts.controller_setup()
    (host,) = hosts_factory(1)
    machine = sh(host, "uname -m").stdout.strip()
    require(machine in ARCH, f"no official Julia tarball layout for {machine}")
    state = tmp_path_factory.mktemp("julia")
    mirror = Mirror(state / "www", machine)
    try:
        for version in ("1.10.5", "1.11.1"):
            mirror.publish(version)
        inventory = state / "julia.yml"
        testhosts.write_inventory([host], inventory, vars={"roles": ["jupyter", "julia_kernel"],
                                                           "julia_mirror": mirror.url})
        first = fleet("provision", state=state, inventory=inventory)
        yield host, state, inventory, mirror, first
    finally:
        mirror.close()
        testhosts.teardown([host])


def installs(host) -> list[str]:
    out = sh(host, "cat /opt/julia-depot/stand-in-ijulia-installs 2>/dev/null || true").stdout
    return out.splitlines()


def kernelspecs(host) -> dict:
    out = sh(host, "runuser -u student -- /opt/jupyter/bin/jupyter kernelspec list --json").stdout
    return json.loads(out)["kernelspecs"]


def step(report: dict, host, name_start: str) -> dict:
    return next(s for s in report["hosts"][host.name]["steps"] if s["name"].startswith(name_start))


def test_first_run_installs_julia_and_the_kernel(lab):
    host, _, _, mirror, first = lab
    assert first.rc == 0, first.output
    result = first.report["hosts"][host.name]
    assert step(first.report, host, "julia 1.10.5 in /opt/julia-1.10.5")["status"] == "changed"
    verify = next(v for v in result["verifies"] if "julia-1.10 kernelspec" in v["name"])
    assert verify["ok"], verify["output"]
    assert "julia version 1.10.5" in verify["output"]
    # Checked on the host itself, not through the tool.
    assert sh(host, "test -x /opt/julia-1.10.5/bin/julia && stat -c %U /opt/julia-1.10.5/bin/julia").stdout.strip() == "root"
    assert sh(host, "readlink /usr/local/bin/julia").stdout.strip() == "/opt/julia-1.10.5/bin/julia"
    assert sh(host, "runuser -u student -- julia --version").stdout.strip() == "julia version 1.10.5"
    spec = kernelspecs(host)["julia-1.10"]
    assert spec["resource_dir"] == "/usr/local/share/jupyter/kernels/julia-1.10"
    assert spec["spec"]["argv"][0] == "/opt/julia-1.10.5/bin/julia"
    assert spec["spec"]["env"] == {"JULIA_DEPOT_PATH": "/opt/julia-depot"}
    assert installs(host) == ["1.10.5 JUPYTER=/opt/jupyter/bin/jupyter"]
    # The shared depot is readable by every user.
    sh(host, "runuser -u student -- ls /opt/julia-depot/packages/IJulia")
    assert sh(host, "ls -A /opt | grep fleet-tmp || true").stdout == ""
    assert mirror.gets("julia-1.10.5-linux-" + ARCH[mirror.machine][1] + ".tar.gz") == 1


def test_second_run_changes_nothing_and_downloads_nothing(lab):
    host, state, inventory, mirror, _ = lab
    checksum_reads = mirror.gets("julia-1.10.5.sha256")
    again = fleet("provision", state=state, inventory=inventory)
    assert again.rc == 0, again.output
    assert changed_steps(again.report, host.name) == []
    assert step(again.report, host, "julia 1.10.5")["message"] == "julia 1.10.5 already installed"
    assert installs(host) == ["1.10.5 JUPYTER=/opt/jupyter/bin/jupyter"]          # IJulia not rebuilt
    assert mirror.gets("julia-1.10.5-linux-" + ARCH[mirror.machine][1] + ".tar.gz") == 1  # not downloaded again
    assert mirror.gets("julia-1.10.5.sha256") == checksum_reads                   # a no-op never asks the mirror


def test_another_version_goes_side_by_side_and_the_link_moves(lab):
    host, state, inventory, mirror, _ = lab
    run = fleet("provision", "--set", "julia_version=1.11.1", state=state, inventory=inventory)
    assert run.rc == 0, run.output
    assert "beside 1.10.5" in step(run.report, host, "julia 1.11.1")["message"]
    assert sh(host, "ls -d /opt/julia-[0-9]*").stdout.split() == ["/opt/julia-1.10.5", "/opt/julia-1.11.1"]
    assert sh(host, "readlink /usr/local/bin/julia").stdout.strip() == "/opt/julia-1.11.1/bin/julia"
    assert sh(host, "julia --version").stdout.strip() == "julia version 1.11.1"
    specs = kernelspecs(host)
    assert specs["julia-1.11"]["spec"]["argv"][0] == "/opt/julia-1.11.1/bin/julia"
    assert specs["julia-1.10"]["spec"]["argv"][0] == "/opt/julia-1.10.5/bin/julia"   # the older kernel still works
    assert [line.split()[0] for line in installs(host)] == ["1.10.5", "1.11.1"]
    again = fleet("provision", "--set", "julia_version=1.11.1", state=state, inventory=inventory)
    assert again.rc == 0 and changed_steps(again.report, host.name) == [], again.output


def _untouched(host) -> None:
    assert sh(host, "ls -A /opt | grep -e julia-1.12 -e fleet-tmp || true").stdout == ""
    assert sh(host, "ls -d /opt/julia-[0-9]*").stdout.split() == ["/opt/julia-1.10.5", "/opt/julia-1.11.1"]
    assert sh(host, "readlink /usr/local/bin/julia").stdout.strip() == "/opt/julia-1.11.1/bin/julia"
    assert sh(host, "/opt/julia-1.11.1/bin/julia --version").stdout.strip() == "julia version 1.11.1"
    assert "julia-1.12" not in kernelspecs(host)


def test_checksum_mismatch_fails_the_host_and_installs_nothing(lab):
    host, state, inventory, mirror, _ = lab
    published, real = mirror.publish("1.12.0", wrong_sum=True)
    run = fleet("provision", "--set", "julia_version=1.12.0", state=state, inventory=inventory)
    assert run.rc == 2, run.output
    assert run.report["hosts"][host.name]["status"] == "failed"
    install = step(run.report, host, "julia 1.12.0")
    assert install["status"] == "failed"
    assert (f"checksum mismatch for {mirror.tarball_url('1.12.0')}: expected {published}, got {real}; "
            "nothing installed") in install["message"]
    # The install step is critical: the role's later changes (link, IJulia) are not run.
    later = {s["name"]: s["status"] for s in run.report["hosts"][host.name]["steps"] if s["role"] == "julia_kernel"}
    assert later.pop(install["name"]) == "failed"
    assert later.pop("link /usr/local/bin/julia -> /opt/julia-1.12.0/bin/julia") == "skipped"
    assert later.pop("IJulia and the julia-1.12 kernelspec in /usr/local/share/jupyter") == "skipped"
    assert set(later.values()) == {"ok"}    # the depot folder: already right, nothing to run
    _untouched(host)


def test_unreachable_mirror_fails_with_a_clear_message_and_installs_nothing(lab):
    host, state, inventory, _, _ = lab
    closed = f"http://{testhosts.CONTROLLER_ALIAS}:{free_port(testhosts.CONTROLLER_ALIAS)}/bin"
    # Without a pin the checksum file is read on the controller: the plan fails, no host command runs.
    run = fleet("provision", "--set", "julia_version=1.12.1", "--set", f"julia_mirror={closed}",
                state=state, inventory=inventory)
    assert run.rc == 2, run.output
    message = step(run.report, host, "julia 1.12.1")["message"]
    assert message.startswith(f"cannot reach the Julia mirror: {closed}/checksums/julia-1.12.1.sha256: ")
    assert message.endswith("nothing installed")
    _untouched(host)
    # With a pinned sum the host itself downloads: curl fails after its retries, nothing is left.
    run = fleet("provision", "--set", "julia_version=1.12.1", "--set", f"julia_mirror={closed}",
                "--set", f"julia_sha256={'ab' * 32}", state=state, inventory=inventory)
    assert run.rc == 2, run.output
    install = step(run.report, host, "julia 1.12.1")
    assert install["status"] == "failed"
    assert f"cannot download {closed}/linux/" in install["message"] and "nothing installed" in install["message"]
    _untouched(host)
