"""Test role: every step kind once, so the engine is proven on real hosts."""
from fleet.engine.git import Git
from fleet.engine.steps import Apt, Command, Directory, File, Handler, Line, Pip, Service, User, Verify, reload_if_changed

UNIT = """[Unit]
Description=allsteps test service
[Service]
ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 8123 --directory /srv/allsteps
[Install]
WantedBy=multi-user.target
"""


def steps(v, ctx):
    return [
        Apt((v.allsteps_package,), cache_max_age=v.apt_cache_max_age),
        Apt(("python3-venv", "git"), cache_max_age=v.apt_cache_max_age),
        User("student"),
        Directory("/srv/allsteps", owner="student", group="student", mode="0755"),
        # The folder is the student's: what goes in it is written as the student (root would be refused).
        ctx.template("allsteps.conf.j2", "/srv/allsteps/allsteps.conf", notify=("restart allsteps",), user="student"),
        Line("/srv/allsteps/env", "COURSE=allsteps", regexp=r"^COURSE=", user="student"),
        Pip(v.allsteps_venv, v.allsteps_pip),
        File("/etc/systemd/system/allsteps.service", UNIT, notify=("restart allsteps",)),
        Service("allsteps"),
        Git(v.allsteps_repo, "/home/student/course", "main", user="student", resolver=ctx.resolver),
        Command("echo built > /srv/allsteps/built", creates="/srv/allsteps/built", user="student"),
        Handler("restart allsteps", f"{reload_if_changed('allsteps')} && systemctl restart allsteps", unit="allsteps"),
        Verify("allsteps serves its folder", "curl -fsS http://127.0.0.1:8123/allsteps.conf | grep -q message",
               every_run=True, wait_s=20),
    ]
