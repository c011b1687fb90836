"""A repository URL with credentials (https://user:password@host/...) never shows its userinfo:
not in step names, messages, git's own errors, `invoke vars`, or a run's output and report."""
from __future__ import annotations

import json

import pytest
import yaml

from fleet.engine.git import Git, RefResolver
from fleet.engine.secrets import Masker
from fleet.shell import redact_url, url_secrets
from tests.fixtures import fleet

PASSWORD = "hunter22-secret"
# Port 1 on loopback: git's real ls-remote fails at once, and its error names the URL.
URL = f"http://student:{PASSWORD}@127.0.0.1:1/course.git"


@pytest.mark.parametrize("text,shown", [
    (URL, "http://***@127.0.0.1:1/course.git"),
    (f"fatal: unable to access '{URL}/': Failed", "fatal: unable to access 'http://***@127.0.0.1:1/course.git/': Failed"),
    ("git://srv/course.git and ssh://git@srv/x", "git://srv/course.git and ssh://***@srv/x"),
    ("no url here: user@host", "no url here: user@host"),
])
def test_redact_url(text, shown):
    assert redact_url(text) == shown


def test_git_step_never_names_the_password():
    step = Git(URL, "/home/u/course", "main", user="u", resolver=RefResolver(timeout=10))
    assert PASSWORD not in step.name and "***@127.0.0.1" in step.name
    assert step.error and PASSWORD not in step.error           # git ls-remote's own error, for real
    assert set(url_secrets(URL)) == {f"student:{PASSWORD}", PASSWORD} == set(step.secrets())
    outcome = step.plan({})
    assert outcome.failed and PASSWORD not in outcome.message
    masker = Masker()
    for value in step.secrets():
        masker.add(value)
    assert PASSWORD not in masker(f"remote: {PASSWORD} rejected")   # e.g. a server echoing it bare


def test_vars_and_a_run_never_show_the_password(tmp_path):
    inventory = tmp_path / "course.yml"
    inventory.write_text(yaml.safe_dump({
        "vars": {"roles": ["repos"], "repos_list": [{"url": URL, "dest": "course"}]},
        "hosts": {"h1": {"address": "127.0.0.1", "port": 1, "user": "ubuntu"}},
    }))
    shown = fleet("vars", "--host", "h1", state=tmp_path, inventory=inventory)
    assert shown.rc == 0, shown.output
    assert "***@127.0.0.1" in shown.output and PASSWORD not in shown.output
    run = fleet("provision", state=tmp_path, inventory=inventory)   # the host is unreachable: exit 3
    assert run.rc == 3, run.output
    assert PASSWORD not in run.output and PASSWORD not in json.dumps(run.report)
