"""The root guard (fleet.engine.rootguard) against a student on a real host, through `invoke
provision` and a site role whose root steps write where a student can reach:

- a link inside a student-owned folder pointing into /etc, re-pointed in a loop (to /etc, to a
  folder of the student's, removed and made again) during every run: each run is refused, naming
  the path, and the loop is shown to have swapped during each run;
- a folder a student creates under a sticky folder (/tmp/new, and /tmp/new/sub as a link into
  /etc) before the run: refused, naming the path; once the student's folder is gone the guard
  makes /tmp/new/sub itself, as root's, and the write lands there.

Every run: nothing outside the student's territory (/etc, /srv, /tmp, /usr/local, /root) changes
owner, mode or content, except the one file the last run was allowed to write."""
from __future__ import annotations

import shlex
import textwrap
import time

import pytest

from fleet.testhosts.inventories import write_inventory
from tests.fixtures import fleet, sh

pytestmark = pytest.mark.hosts

STUDENT = "student"
ROLE = '''
from fleet.engine.steps import Directory, File, User


def steps(v, ctx):
    items = [
        User("student"),
        # The course hands the student a folder outside their home (root makes it, then it is theirs).
        Directory("/srv/shared", owner="student", group="student", mode="0755"),
        # A role that forgot to declare the student: root writing through the student's folder.
        File("/srv/shared/data/motd.conf", "managed by root\\n"),
        # Root writing under a sticky folder.
        File("/tmp/new/sub/guard.conf", "managed by root\\n"),
    ]
    for step in items[2:]:
        step.critical = False          # each attack is judged on its own
    return items
'''
# owner, group, mode and content hash of everything outside the student's territory
SNAPSHOT = ("find /etc /srv /tmp /usr/local /root -xdev \\( -path /srv/shared -o -path /tmp/new \\) -prune -o "
            "-printf '%p %u %g %m %y\\n' | sort; "
            "find /etc /srv /tmp /usr/local /root -xdev \\( -path /srv/shared -o -path /tmp/new \\) -prune -o "
            "-type f -print0 | sort -z | xargs -0 sha256sum")
SWAPS = "/srv/shared/swaps"
LOOP = textwrap.dedent(f"""\
    cd /srv/shared
    echo $$ > loop.pid
    n=0
    while :; do
      ln -sfn /etc data.new && mv -Tf data.new data
      ln -sfn /srv/shared/mine data.new && mv -Tf data.new data
      rm -f data; mkdir -p data; rmdir data
      n=$((n + 1)); echo $n > {SWAPS}
    done
""")


@pytest.fixture(scope="module")
def host(hosts_factory, tmp_path_factory):
    [h] = hosts_factory(1)
    roles = tmp_path_factory.mktemp("roles")
    site = roles / "guardtest"
    site.mkdir()
    (site / "__init__.py").write_text(ROLE)
    (site / "defaults.yml").write_text("guardtest_level: 1   # unused\n")
    (site / "spec.yml").write_text("guardtest_level: {type: int}\n")
    state = tmp_path_factory.mktemp("state")
    inventory = write_inventory([h], state / "guard.yml", vars={"roles": ["guardtest"], "course_user": STUDENT})
    yield {"host": h, "state": state, "inventory": inventory, "env": {"FLEET_ROLES_PATH": str(roles)}}


def provision(host):
    return fleet("provision", state=host["state"], inventory=host["inventory"], env=host["env"], timeout=300)


def step(run, name: str) -> dict:
    [found] = [s for s in next(iter(run.report["hosts"].values()))["steps"] if s["name"] == name]
    return found


def snapshot(h) -> str:
    return sh(h, SNAPSHOT).stdout


def as_student(h, command: str, check: bool = True):
    return sh(h, f"runuser -u {STUDENT} -- bash -c {shlex.quote(command)}", check=check)


def swaps(h) -> int:
    out = sh(h, f"cat {SWAPS} 2>/dev/null || echo 0").stdout.strip()
    return int(out or 0)


def test_a_link_in_a_students_folder_re_pointed_during_runs_is_refused_every_time(host):
    h = host["host"]
    first = provision(host)          # makes the student and their folder; both attacked writes refused
    assert step(first, "directory /srv/shared")["status"] == "changed", first.output
    as_student(h, "mkdir -p /srv/shared/mine")
    sh(h, "rm -f /etc/motd.conf")
    before = snapshot(h)
    sh(h, f"runuser -u {STUDENT} -- setsid bash -c {shlex.quote(LOOP)} >/dev/null 2>&1 &")
    deadline = time.monotonic() + 10
    while swaps(h) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        for _ in range(3):
            start = swaps(h)
            run = provision(host)
            during = swaps(h) - start
            assert during > 0, "the loop did not swap the link during the run: the run proves nothing"
            result = step(run, "file /srv/shared/data/motd.conf")
            assert result["status"] == "failed", run.output
            assert "refused: /srv/shared/data/motd.conf: /srv/shared belongs to student" in result["output"], result
            assert sh(h, "test -e /etc/motd.conf", check=False).returncode == 1
            assert as_student(h, "test -e /srv/shared/mine/motd.conf", check=False).returncode == 1
    finally:
        sh(h, "kill $(cat /srv/shared/loop.pid)", check=False)     # the loop we started, by its pid
    assert snapshot(h) == before


def test_a_folder_a_student_made_in_a_sticky_folder_is_refused_then_made_by_the_guard(host):
    h = host["host"]
    provision(host)
    sh(h, "rm -rf /tmp/new")                  # earlier runs made it, as root: the student is first now
    as_student(h, "mkdir /tmp/new && ln -s /etc /tmp/new/sub")
    before = snapshot(h)
    run = provision(host)
    result = step(run, "file /tmp/new/sub/guard.conf")
    assert result["status"] == "failed", run.output
    assert "refused: /tmp/new/sub/guard.conf: /tmp/new belongs to student" in result["output"], result
    assert sh(h, "test -e /etc/guard.conf", check=False).returncode == 1
    assert snapshot(h) == before
    # the student's folder gone, the guard makes the folders itself, root's alone, and the write lands there
    as_student(h, "rm -rf /tmp/new")
    run = provision(host)
    assert step(run, "file /tmp/new/sub/guard.conf")["status"] == "changed", run.output
    assert sh(h, "stat -c '%U %a' /tmp/new /tmp/new/sub /tmp/new/sub/guard.conf").stdout.split("\n")[:3] == \
        ["root 755", "root 755", "root 644"]
    assert sh(h, "test -e /etc/guard.conf", check=False).returncode == 1
