"""What is secret is decided once (fleet.engine.compile.mask_secrets), for a run's output and for
`invoke vars` alike: a knob a role's spec marks `secret` (whatever its name), and any value whose
name says token, password or secret."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fleet import app
from fleet.engine.compile import mask_secrets
from fleet.engine.secrets import Masker

ROLESET = SimpleNamespace(roles={"r": SimpleNamespace(spec={"r_seed": {"secret": True}, "r_port": {}})})


@pytest.mark.parametrize("name,value,masked", [
    ("r_seed", "s33d-value-1", True),             # the spec says so; the name does not
    ("course_api_token", "tok-value-2", True),    # no spec describes it; the name says so
    ("db_password", "pw-value-3", True),
    ("r_port", "8888", False),
    ("motd", "welcome", False),
])
def test_one_rule_for_secrets(name, value, masked):
    masker = Masker()
    mask_secrets(masker, ROLESET, {name: value})
    assert (value not in masker(f"value: {value}")) is masked


def test_invoke_vars_uses_the_same_rule(monkeypatch, tmp_path):
    inventory = tmp_path / "c.yml"
    inventory.write_text("name: c\nvars: {roles: [jupyter], course_user: student}\n"
                         "hosts: {h1: {address: 10.0.0.1, user: ubuntu}}\n")
    monkeypatch.setenv("FLEET_STATE_DIR", str(tmp_path / "state"))
    seen = {}
    monkeypatch.setattr(app, "mask_secrets", lambda masker, roleset, values: seen.update(values))
    app.show_vars("h1", inventory=str(inventory))
    assert "jupyter_token" in seen and seen["roles"] == ["jupyter"]
