"""Speculative probes, on the controller: which command lines are remembered and speculated, that
an early answer is used only for the same script and only once, and what is stored. On real
hosts (the answer used, drift still seen, an edited inventory probed afresh):
tests/engine/test_engine_hosts.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet.engine import speculation
from fleet.engine.remote import Probe
from fleet.engine.speculation import STORE, Speculation, _Early, run_key
from fleet.transport.base import ConnectOptions

HOST = SimpleNamespace(name="h1", address="10.0.0.1", user="ubuntu", port=22, key=None, sudo_password=None)


def options(**changes) -> ConnectOptions:
    return ConnectOptions(known_hosts=Path("/tmp/kh"), **changes)


@pytest.mark.parametrize("a,b,same", [
    (["invoke", "provision", "--json", "r1.json"], ["invoke", "provision", "--json", "r2.json"], True),
    (["invoke", "provision", "--json=r1.json"], ["invoke", "provision"], True),
    (["invoke", "provision", "--hosts", "h1"], ["invoke", "provision", "--hosts", "h2"], False),
    (["invoke", "provision"], ["invoke", "check"], False),
])
def test_the_run_key_is_the_command_line_less_its_report(a, b, same):
    assert (run_key(a, "/p", {}) == run_key(b, "/p", {})) is same


def test_the_settings_that_choose_the_inventory_are_part_of_the_key():
    argv = ["invoke", "provision"]
    assert run_key(argv, "/p", {"FLEET_INVENTORY": "a.yml"}) != run_key(argv, "/p", {"FLEET_INVENTORY": "b.yml"})
    assert run_key(argv, "/p", {}) != run_key(argv, "/q", {})


def started(template: str, answer=(0, "out")) -> Speculation:
    spec = Speculation("k", Path("/nonexistent"))
    early = _Early(template, "abc123")
    early.answer = answer
    early.done.set()
    spec.started["h1"] = early
    return spec


def test_an_early_answer_is_used_for_the_same_script_only_and_once():
    probe = Probe([], [])
    script = probe.script()
    template = script.partition("\n")[2]
    spec = started(template)
    sent = spec.started["h1"].sent
    assert spec.claim(HOST, options(), script) == ("abc123", 0, "out", 0, sent)
    assert spec.claim(HOST, options(), script) is None          # a second task of the command probes anew
    other = started(template + "echo changed\n")
    assert other.claim(HOST, options(), script) is None


def test_a_failed_early_probe_leaves_the_run_to_probe():
    script = Probe([], []).script()
    assert started(script.partition("\n")[2], answer=None).claim(HOST, options(), script) is None


@pytest.mark.parametrize("host,opts,remembered", [
    (HOST, options(), True),
    (HOST, options(strict_host_keys=False), False),
    (HOST, options(sudo_password="pw"), False),
    (SimpleNamespace(**{**vars(HOST), "sudo_password": "pw"}), options(), False),
])
def test_what_is_remembered_and_stored(tmp_path, host, opts, remembered):
    inventory = tmp_path / "course.yml"
    inventory.write_text("hosts: {}\n")
    spec = Speculation("k", tmp_path)
    spec.claim(host, opts, Probe([], []).script())
    spec.save(str(inventory), ok_hosts=["h1"])
    store = json.loads((tmp_path / STORE).read_text())
    assert ("h1" in store.get("k", {}).get("hosts", {})) is remembered
    assert os.stat(tmp_path / STORE).st_mode & 0o777 == 0o600
    assert "pw" not in (tmp_path / STORE).read_text()


def test_hosts_that_did_not_answer_and_aws_inventories_are_not_stored(tmp_path):
    spec = Speculation("k", tmp_path)
    spec.claim(HOST, options(), Probe([], []).script())
    spec.save("course.yml", ok_hosts=[])
    assert json.loads((tmp_path / STORE).read_text()) == {}
    spec.save("aws:course", ok_hosts=["h1"])
    assert json.loads((tmp_path / STORE).read_text()) == {}


@pytest.mark.parametrize("argv,env", [
    (["invoke", "facts"], {}),
    (["invoke", "provision", "--insecure-host-keys"], {}),
    (["invoke", "provision", "--sudo-password"], {}),
    (["invoke", "check", "-u"], {}),
    (["invoke", "provision", "-n"], {}),
    (["invoke", "provision"], {"FLEET_SSH_PERSIST": "0"}),
])
def test_other_commands_and_settings_are_never_speculated(argv, env, monkeypatch):
    monkeypatch.setattr(speculation, "current", None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    speculation.start(argv)
    assert speculation.current is None


def test_importing_it_loads_nothing_of_the_engine():
    code = ("import sys, fleet.engine.speculation; "
            "print(sorted(m for m in sys.modules if m.startswith(('fleet', 'jinja2', 'jsonschema', 'paramiko', 'rich'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fleet', 'fleet.engine', 'fleet.engine.speculation']"
