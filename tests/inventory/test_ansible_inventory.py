"""Ansible inventories as people write them, read by Fleet and by `ansible-inventory --list`
(ansible-core, the oracle): hosts, groups and each host's variables must agree, host by host.

Each folder under tests/data/inventories is a case: `inventory.yml` (or the file its case.yml
names) with any group_vars/ and host_vars/ beside it. No expected value is written here: where
Fleet deliberately differs (it refuses what Ansible accepts), case.yml says `refuses:` with the
message and `why:`, and the test checks both that Ansible accepts the file and that Fleet refuses it.
"""
from __future__ import annotations

import json
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet.inventory import files as inventory
from fleet.errors import InputError
from fleet.inventory.variables import inventory_layers, merge
from tests.skips import require

CORPUS = Path(__file__).parents[1] / "data" / "inventories"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def case_info(name: str) -> dict:
    path = CORPUS / name / "case.yml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def ansible_inventory(*args: str, cwd: Path, plugin: str) -> str:
    tool = shutil.which("ansible-inventory")
    require(tool is not None, "ansible-inventory (ansible-core, a test dependency) is not installed")
    env = dict(os.environ, ANSIBLE_HOME=str(cwd / ".ansible"), ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
               ANSIBLE_INVENTORY_ENABLED=plugin, ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    # cwd is an empty folder, so no ansible.cfg or playbook-level group_vars is picked up.
    proc = subprocess.run([tool, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ansible_view(data: dict) -> dict:
    """Ansible's --list JSON as hosts, groups (direct hosts and children) and hostvars."""
    groups = {name: {"hosts": spec.get("hosts", []), "children": spec.get("children", [])}
              for name, spec in data.items() if name != "_meta"}
    for spec in list(groups.values()):
        for child in spec["children"]:
            groups.setdefault(child, {"hosts": [], "children": []})  # empty groups appear only as children
    hosts = {h for spec in groups.values() for h in spec["hosts"]}
    hostvars = {h: data["_meta"]["hostvars"].get(h, {}) for h in hosts}
    return {"hosts": hosts, "groups": groups, "hostvars": hostvars}


def fleet_view(inv: inventory.Inventory) -> dict:
    """The same view from Fleet: `all` and `ungrouped` rebuilt as Ansible shows them."""
    groups = {name: {"hosts": g.hosts, "children": g.children} for name, g in inv.groups.items()}
    parents = {c for g in inv.groups.values() for c in g.children}
    ungrouped = [h for h, host in inv.hosts.items() if not host.groups]
    groups["ungrouped"] = {"hosts": ungrouped, "children": []}
    groups["all"] = {"hosts": [], "children": ["ungrouped"] + [g for g in inv.groups if g not in parents]}
    hostvars = {}
    for name, host in inv.hosts.items():
        values = {k: v.value for k, v in merge(inventory_layers(inv, host)).items()}
        values.update({k: s.value for k, s in host.settings.items()})  # ansible_* keys, resolved alike
        hostvars[name] = values
    connection = {name: {field: getattr(host, field) for field in OPTIONS} for name, host in inv.hosts.items()}
    return {"hosts": set(inv.hosts), "groups": groups, "hostvars": hostvars, "connection": connection}


def inventory_file(name: str) -> Path:
    return CORPUS / name / case_info(name).get("inventory", "inventory.yml")


@pytest.mark.parametrize("name", CASES)
def test_corpus_agrees_with_ansible_inventory(name, tmp_path, monkeypatch):
    for variable in ("ANSIBLE_REMOTE_USER", "ANSIBLE_REMOTE_PORT", "ANSIBLE_PRIVATE_KEY_FILE", "ANSIBLE_BECOME_PASS"):
        monkeypatch.delenv(variable, raising=False)  # the plugins' other sources: the test compares variables
    info, path = case_info(name), inventory_file(name)
    plugin = "ini" if info.get("convert") else "yaml"
    theirs = ansible_view(json.loads(ansible_inventory("-i", str(path), "--list", cwd=tmp_path, plugin=plugin)))
    assert theirs["hosts"], "Ansible read no host: the case would prove nothing"
    if "refuses" in info:
        assert info.get("why"), "a deliberate difference says why"
        with pytest.raises(InputError) as refused:
            inventory.load(path)
        assert info["refuses"] in str(refused.value)
        assert str(path) in str(refused.value)
        if not info.get("convert"):
            return
        # The message's own command converts it; Fleet then reads what Ansible read.
        command = str(refused.value).split("`")[1]
        assert command == f"ansible-inventory -i {path} --list -y > inventory.yml"
        converted = tmp_path / "inventory.yml"
        converted.write_text(ansible_inventory("-i", str(path), "--list", "-y", cwd=tmp_path, plugin=plugin))
        path = converted
    ours = fleet_view(inventory.load(path))
    assert ours["hosts"] == theirs["hosts"]
    assert set(ours["groups"]) == set(theirs["groups"])
    for group, spec in theirs["groups"].items():
        assert ours["groups"][group]["hosts"] == spec["hosts"], f"hosts of group {group}"
        if group == "all":
            # Ansible also keeps a group given at the top and nested elsewhere as all's child;
            # Fleet has no `all` group to hold it (it holds every host either way).
            nested = {c for name, g in ours["groups"].items() if name != "all" for c in g["children"]}
            assert set(ours["groups"]["all"]["children"]) <= set(spec["children"])
            assert set(spec["children"]) - set(ours["groups"]["all"]["children"]) <= nested
            continue
        assert sorted(ours["groups"][group]["children"]) == sorted(spec["children"]), f"children of group {group}"
    for host in sorted(theirs["hosts"]):
        assert ours["hostvars"][host] == theirs["hostvars"][host], f"variables of host {host}"
        # How the host is reached: Ansible's own option resolution over its variables.
        assert ours["connection"][host] == ansible_connection(host, theirs["hostvars"][host]), f"connection of {host}"


OPTIONS = {"address": ("connection", "ssh", "host"), "user": ("connection", "ssh", "remote_user"),
           "port": ("connection", "ssh", "port"), "key": ("connection", "ssh", "private_key_file"),
           "sudo_password": ("become", "sudo", "become_pass")}


def ansible_connection(host: str, hostvars: dict) -> dict:
    """What Ansible's ssh connection and sudo become plugins take from these variables."""
    require(importlib.util.find_spec("ansible") is not None, "ansible (ansible-core, a test dependency) is not installed")
    from ansible import constants
    from ansible.plugins.loader import become_loader, connection_loader

    connection_loader.get("ssh", class_only=True)  # loading a plugin registers its options
    become_loader.get("sudo", class_only=True)
    variables = dict(hostvars, inventory_hostname=host)
    return {name: constants.config.get_config_value(option, plugin_type=kind, plugin_name=plugin, variables=variables)
            for name, (kind, plugin, option) in OPTIONS.items()}


def test_the_corpus_covers_what_the_issue_lists():
    """At least 20 cases, each feature in at least one (a guard against the corpus shrinking)."""
    assert len(CASES) >= 20
    texts = {name: "".join(p.read_text(errors="replace") for p in (CORPUS / name).rglob("*") if p.is_file())
             for name in CASES}
    def some(predicate) -> bool:
        return any(predicate(name, text) for name, text in texts.items())
    assert some(lambda n, t: "[01:" in t) and some(lambda n, t: ":2]" in t) and some(lambda n, t: "[a:" in t)
    assert some(lambda n, t: (CORPUS / n / "group_vars").is_dir())
    assert some(lambda n, t: (CORPUS / n / "host_vars").is_dir())
    assert some(lambda n, t: any(p.is_dir() for p in (CORPUS / n).glob("*_vars/*")))
    assert sum("refuses" in case_info(n) for n in CASES) >= 5
