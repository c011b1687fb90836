"""What ships must be valid: every example inventory compiles for every host (vars, specs,
templates, role steps) without contacting anything, and every role's defaults match its spec."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.inventory import files as inventory_mod
from fleet.engine.compile import compile_plans
from fleet.engine.git import RefResolver
from fleet.engine.roles import PROJECT, RoleSet
from fleet.engine.secrets import CourseSecrets, Masker

INVENTORIES = sorted((PROJECT / "inventory").glob("*.yml"))


class OfflineResolver(RefResolver):
    """Examples name public repositories; this test must not reach them."""

    def resolve(self, url, ref):
        return "0" * 40, ref, ""


@pytest.mark.parametrize("path", [p for p in INVENTORIES if p.name not in ("local.yml", "demo.yml")], ids=lambda p: p.name)
def test_example_inventory_compiles(path: Path, tmp_path, monkeypatch):
    inv = inventory_mod.load(path)
    monkeypatch.chdir(tmp_path)  # key paths are relative to where the command runs: make them exist
    for host in inv.hosts.values():
        if host.key:
            (tmp_path / host.key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / host.key).write_text("not a real key")
    masker = Masker()
    plans = compile_plans(inv, list(inv.hosts), roleset=RoleSet(), overrides={"julia_sha256": "a" * 64},
                          only_roles=None, secrets=CourseSecrets(tmp_path, inv.name, masker), masker=masker,
                          resolver=OfflineResolver())
    assert set(plans) == set(inv.hosts)
    for plan in plans.values():
        assert plan.steps, f"{path.name}: {plan.host.name} has no steps"


def test_demo_inventory_is_valid(tmp_path, monkeypatch):
    """inventory/demo.yml as `invoke demo` uses it (fleet/testhosts/demo.py): its vars, the local
    course's repos_list and booted hosts, written as the demo writes them; every host compiles."""
    from fleet.testhosts.inventories import write_inventory
    from fleet.testhosts.hosts import TestHost

    demo = yaml.safe_load((PROJECT / "inventory" / "demo.yml").read_text())
    assert demo["vars"]["roles"] == ["jupyter", "repos", "clusters"]     # what README says the demo shows
    demo["vars"]["repos_list"] = [{"url": "git://10.211.255.254:9418/course.git", "dest": "course", "ref": "main"}]
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    hosts = [TestHost(f"fleet-h{i}", i, f"10.211.{i}.2", key=key) for i in (1, 2)]
    path = write_inventory(hosts, tmp_path / "local.yml", vars=demo["vars"])
    inv = inventory_mod.load(path)
    monkeypatch.chdir(tmp_path)
    masker = Masker()
    plans = compile_plans(inv, list(inv.hosts), roleset=RoleSet(), overrides={}, only_roles=None,
                          secrets=CourseSecrets(tmp_path, "demo", masker), masker=masker, resolver=OfflineResolver())
    assert set(plans) == {h.name for h in hosts}
    for plan in plans.values():
        names = [step.name for _, step in plan.steps]
        assert any(n.startswith("git git://10.211.255.254:9418/course.git -> ") for n in names), names
        assert any("ipcluster_config.py" in n for n in names), names


@pytest.mark.parametrize("role", sorted(RoleSet().roles))
def test_role_defaults_match_spec_and_are_commented(role):
    r = RoleSet().roles[role]
    assert set(r.defaults) == set(r.spec), f"roles/{role}: defaults.yml and spec.yml list different knobs"
    for line in (r.path / "defaults.yml").read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            assert "#" in line, f"roles/{role}/defaults.yml: knob without a comment: {line}"
            assert line.startswith(r.prefix), f"roles/{role}: knob {line.split(':')[0]} lacks the prefix {r.prefix}"
