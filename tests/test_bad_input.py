"""Bad input through the real CLI: one clear message naming the file and the key, exit 1, and
not a single connection opened to any host (hosts point at a listener that counts them)."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import yaml

from tests.fixtures import fleet


@pytest.fixture()
def listener():
    """A TCP port standing in for every host's SSH: it counts connection attempts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                seen.append(1)
                conn.close()
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def inventory(tmp_path: Path, port: int, vars: dict | None = None, extra: str = "", hosts: dict | None = None) -> Path:
    data = {"vars": {"roles": ["jupyter"], **(vars or {})},
            "hosts": hosts or {"h1": {"address": "127.0.0.1", "port": port, "user": "ubuntu"},
                               "h2": {"address": "127.0.0.1", "port": port, "user": "ubuntu"}}}
    path = tmp_path / "course.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False) + extra)
    return path


CASES = [
    # (id, how to break the inputs, extra CLI args, expected fragments of the message)
    ("malformed yaml", lambda p: p.write_text(p.read_text() + "oops: [\n"), [], ["course.yml:", "invalid YAML"]),
    ("unknown top-level key", lambda p: p.write_text(p.read_text() + "hostz: {}\n"), [], ["course.yml:", "hostz: unknown key"]),
    ("wrong type", lambda p: _edit(p, lambda d: d["hosts"]["h1"].update(port="twenty-two")), [],
     ["course.yml:", "hosts.h1.port: expected an integer"]),
    ("wrong knob type", lambda p: _edit(p, lambda d: d["vars"].update(jupyter_port="eighty")), [],
     ["course.yml: vars: jupyter_port: expected a port number"]),
    ("missing required knob", lambda p: _edit(p, lambda d: d["vars"].update(jupyter_venv=None)), [],
     ["course.yml: vars: jupyter_venv: required knob is not set"]),
    ("unknown knob (typo)", lambda p: _edit(p, lambda d: d["vars"].update(jupyter_prot=8888)), [],
     ["course.yml: vars: jupyter_prot: unknown knob for role jupyter (did you mean jupyter_port?)"]),
    ("knob choice", lambda p: _edit(p, lambda d: d["vars"].update(jupyter_auth="none")), [],
     ["jupyter_auth: expected one of ['token', 'password']"]),
    ("unknown role", lambda p: _edit(p, lambda d: d["vars"].update(roles=["jupyter", "jupyterlab"])), [],
     ["course.yml: vars: roles: unknown role 'jupyterlab'"]),
    ("unknown host pattern", lambda p: None, ["--hosts", "h9"], ["--hosts: unknown host or group 'h9'"]),
    ("empty pattern match", lambda p: None, ["--hosts", "gpu-*"], ["--hosts: glob 'gpu-*' matches no host"]),
    ("duplicate host", lambda p: p.write_text(p.read_text().replace("  h2:", "  h1:")), [], ["duplicate key 'h1'"]),
    ("cyclic groups", lambda p: p.write_text(p.read_text() + "groups:\n  a: {children: [b]}\n  b: {children: [a]}\n"), [],
     ["course.yml:", "cycle through `children`"]),
    ("path outside", lambda p: _edit(p, lambda d: d["vars"].update(jupyter_notebook_dir="/home/ubuntu/../../etc")), [],
     ["jupyter_notebook_dir: expected an absolute path without '..'"]),
    ("subfolder escape", lambda p: _edit(p, lambda d: d["vars"].update(
        roles=["repos"], repos_list=[{"url": "git://x/y.git", "dest": "../../.ssh"}])), [],
     ["course.yml: vars: repos_list[0].dest: expected a folder inside"]),
    ("unreadable key file", lambda p: _edit(p, lambda d: d["hosts"]["h1"].update(key="/nonexistent/key.pem")), [],
     ["course.yml:", "hosts.h1.key: cannot read the SSH key file /nonexistent/key.pem"]),
    ("bad --set", lambda p: None, ["--set", "novalue"], ["--set: expected KEY=VALUE"]),
    ("bad --max-fail", lambda p: None, ["--max-fail", "many"], ["--max-fail: expected a number of hosts"]),
    ("fractional --max-fail", lambda p: None, ["--max-fail", "1.5"], ["--max-fail: expected a number of hosts", "'1.5'"]),
    ("doubled % in --max-fail", lambda p: None, ["--max-fail", "50%%"], ["--max-fail: expected a number of hosts", "'50%%'"]),
    ("--max-fail over 100%", lambda p: None, ["--max-fail", "150%"], ["--max-fail: expected a number of hosts", "'150%'"]),
    ("missing inventory", lambda p: p.unlink(), [], ["course.yml: cannot read file"]),
    ("course name escapes", lambda p: p.write_text("name: ../../x\n" + p.read_text()), [],
     ["course.yml:1: name: expected a course name"]),
    # The same hosts in Ansible's shape, with a port out of range at group level: a bad-input error, not
    # an unreachable host (exit 1, not 3).
    ("ansible port out of range", lambda p: _ansible(p, {"ansible_port": 70000}), [],
     ["course.yml:", "all.children.lab.vars.ansible_port: expected a port number (an integer in 1..65535), got 70000"]),
    ("ansible_connection local", lambda p: _ansible(p, {"ansible_connection": "local"}), [],
     ["course.yml:", "all.children.lab.vars.ansible_connection: ansible_connection: local is not supported"]),
    ("ansible_become false", lambda p: _ansible(p, {"ansible_become": False}), [],
     ["all.children.lab.vars.ansible_become: ansible_become: false is not supported"]),
    ("ini inventory", lambda p: p.write_text("[lab]\nh1 ansible_host=127.0.0.1\n"), [],
     ["course.yml: this is an INI inventory", "ansible-inventory -i"]),
]


def _ansible(path: Path, group_vars: dict) -> None:
    """The inventory rewritten in Ansible's shape: hosts in group `lab`, whose vars are given."""
    data = yaml.safe_load(path.read_text())
    hosts = {name: {"ansible_host": h["address"], "ansible_port": h["port"], "ansible_user": h["user"]}
             for name, h in data["hosts"].items()}
    path.write_text(yaml.safe_dump({"all": {"vars": data["vars"], "children": {
        "lab": {"vars": group_vars, "hosts": hosts}}}}, sort_keys=False))


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("case,breaker,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_connection(tmp_path, listener, case, breaker, args, fragments):
    port, seen = listener
    path = inventory(tmp_path, port)
    breaker(path)
    run = fleet("provision", *args, state=tmp_path / "state", inventory=path)
    assert run.rc == 1, run.output
    for fragment in fragments:
        assert fragment in run.output, run.output
    assert "Traceback" not in run.output
    assert seen == [], "a connection was opened despite bad input"
    assert run.report == {}  # nothing ran, so no report


def test_template_with_an_undefined_variable_names_template_and_line(tmp_path, listener):
    port, seen = listener
    role = tmp_path / "roles" / "broken"
    (role / "templates").mkdir(parents=True)
    (role / "__init__.py").write_text("def steps(v, ctx):\n    return [ctx.template('broken.conf.j2', '/etc/broken.conf')]\n")
    (role / "templates" / "broken.conf.j2").write_text("ok = 1\nport = {{ broken_port }}\n")
    path = inventory(tmp_path, port, vars={"roles": ["broken"]})
    run = fleet("provision", state=tmp_path / "state", inventory=path, env={"FLEET_ROLES_PATH": str(tmp_path / "roles")})
    assert run.rc == 1, run.output
    assert "broken.conf.j2:2: cannot render: 'broken_port' is undefined" in run.output
    assert seen == []


def test_errors_for_several_hosts_are_reported_together(tmp_path, listener):
    port, _ = listener
    path = inventory(tmp_path, port, hosts={"h1": {"address": "127.0.0.1", "port": port, "vars": {"jupyter_port": 0}},
                                            "h2": {"address": "127.0.0.1", "port": port, "vars": {"jupyter_ip": 5}}})
    run = fleet("provision", state=tmp_path / "state", inventory=path)
    assert run.rc == 1
    assert "hosts.h1.vars: jupyter_port: expected a port number" in run.output
    assert "hosts.h2.vars: jupyter_ip: expected a string" in run.output


def test_vars_shows_values_and_their_sources_with_secrets_masked(tmp_path):
    path = inventory(tmp_path, 22, vars={"jupyter_port": 8890})
    run = fleet("vars", "--host", "h1", "--set", "jupyter_lab_version=4.6.5", state=tmp_path / "state", inventory=path)
    assert run.rc == 0, run.output
    lines = {line.split("│")[0].strip(): line for line in run.output.splitlines() if "│" in line}
    assert "8890" in lines["jupyter_port"] and "course.yml: vars" in lines["jupyter_port"]
    assert "4.6.5" in lines["jupyter_lab_version"] and "--set" in lines["jupyter_lab_version"]
    assert "roles/jupyter/defaults.yml" in lines["jupyter_venv"]
    assert "********" in lines["jupyter_token"]
    token_file = next((tmp_path / "state" / "secrets").glob("*.key"))
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
