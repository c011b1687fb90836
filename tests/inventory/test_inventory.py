"""Inventory loading and validation, host patterns, precedence and provenance: tests as data."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleet.inventory import files as inventory

from fleet.inventory import patterns
from fleet.errors import InputError
from fleet.inventory.variables import inventory_layers, merge, parse_set, render

NATIVE = """
name: lab
vars: {course_user: ubuntu, level: all}
groups:
  gpu:
    hosts: [gpu-1, gpu-2]
    vars: {level: gpu}
  a100:
    hosts: [gpu-2]
    vars: {level: a100}
  everyone:
    children: [gpu, cpu]
    vars: {level: everyone}
  cpu:
    hosts: [cpu-1]
hosts:
  gpu-1: {address: 10.0.0.1, user: ubuntu, port: 2222, key: ~/.ssh/lab.pem}
  gpu-2: {address: 10.0.0.2, vars: {level: host}}
  cpu-1:
"""

ANSIBLE = """
all:
  vars: {level: all}
  hosts:
    solo: {ansible_host: 10.0.0.9, ansible_user: admin, ansible_port: 2200, ansible_ssh_private_key_file: /k, color: red}
  children:
    gpu:
      vars: {level: gpu}
      hosts:
        gpu-1: {ansible_host: 10.0.0.1}
      children:
        a100:
          hosts:
            gpu-2: {ansible_host: 10.0.0.2}
          vars: {level: a100}
"""


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_native_inventory_loads_hosts_groups_and_connection(tmp_path):
    inv = inventory.load(write(tmp_path, NATIVE))
    assert inv.name == "lab"
    assert list(inv.hosts) == ["gpu-1", "gpu-2", "cpu-1"]
    g1 = inv.hosts["gpu-1"]
    assert (g1.address, g1.user, g1.port, g1.key) == ("10.0.0.1", "ubuntu", 2222, "~/.ssh/lab.pem")
    # Not given: left to ~/.ssh/config as Fabric reads it.
    assert (inv.hosts["cpu-1"].address, inv.hosts["cpu-1"].user, inv.hosts["cpu-1"].port) == ("cpu-1", None, None)
    assert inv.group_hosts("everyone") == ["gpu-1", "gpu-2", "cpu-1"]
    # Parents before children (then by name), so a child group's vars win over its parent's.
    assert inv.hosts["gpu-2"].groups == ["a100", "everyone", "gpu"]


def test_ansible_inventory_shape(tmp_path):
    inv = inventory.load(write(tmp_path, ANSIBLE))
    solo = inv.hosts["solo"]
    assert (solo.address, solo.user, solo.port, solo.key) == ("10.0.0.9", "admin", 2200, "/k")
    assert solo.vars == {"color": "red"}
    assert inv.group_hosts("gpu") == ["gpu-1", "gpu-2"]
    assert inv.hosts["gpu-2"].groups == ["gpu", "a100"]


@pytest.mark.parametrize("host,level,source", [
    ("cpu-1", "everyone", "groups.everyone.vars"),
    ("gpu-1", "gpu", "groups.gpu.vars"),
    ("gpu-2", "host", "hosts.gpu-2.vars"),
])
def test_precedence_and_provenance(tmp_path, host, level, source):
    inv = inventory.load(write(tmp_path, NATIVE))
    merged = merge([("roles/x/defaults.yml", {"level": "default", "only_default": 1})] + inventory_layers(inv, inv.hosts[host]))
    assert merged["level"].value == level
    assert merged["level"].source.endswith(source)
    assert merged["only_default"].source == "roles/x/defaults.yml"


def test_child_group_beats_parent_and_set_beats_host(tmp_path):
    inv = inventory.load(write(tmp_path, NATIVE))
    layers = inventory_layers(inv, inv.hosts["gpu-2"])
    # Groups at one depth apply by name; a child (gpu) applies after its parent (everyone).
    assert [source.rsplit(": ", 1)[1] for source, _ in layers] == [
        "vars", "groups.a100.vars", "groups.everyone.vars", "groups.gpu.vars", "hosts.gpu-2.vars"]
    assert merge(layers[:-1])["level"].value == "gpu"
    merged = merge(layers + [("--set", parse_set(["level=cli", "port=8890"]))])
    assert merged["level"] == merged["level"].__class__("cli", "--set")
    assert merged["port"].value == 8890  # --set values are YAML: an integer stays an integer


def test_jinja_values_refer_to_other_variables():
    merged = merge([("d", {"user": "ubuntu", "home": "/home/{{ user }}", "nb": "{{ home }}/notebooks", "n": "{{ 2 * 4 }}"})])
    values = render(merged)
    assert values["nb"].value == "/home/ubuntu/notebooks"
    assert values["n"].value == 8


def test_variable_loop_is_an_input_error():
    with pytest.raises(InputError, match="loop: a -> b -> a"):
        render(merge([("d", {"a": "{{ b }}", "b": "{{ a }}"})]))


BAD_INVENTORIES = [
    ("yaml syntax", "hosts:\n  h1: {address: [\n", "inv.yml:3", "invalid YAML"),
    ("unknown top-level key", "hosts: {h1: }\nhostz: {}\n", "inv.yml:2", "hostz: unknown key"),
    ("unknown host key", "hosts:\n  h1: {adress: x}\n", "inv.yml:2", "hosts.h1.adress: unknown key"),
    ("wrong type port", "hosts:\n  h1: {port: ssh}\n", "inv.yml:2", "hosts.h1.port: expected an integer, got str 'ssh'"),
    ("wrong type vars", "vars: [1, 2]\nhosts: {h1: }\n", "inv.yml:1", "vars: expected a mapping"),
    ("unknown group child", "hosts: {h1: }\ngroups:\n  a: {children: [b]}\n", "inv.yml:3", "unknown group 'b'"),
    ("unknown host in group", "hosts: {h1: }\ngroups:\n  a: {hosts: [h9]}\n", "inv.yml:3", "unknown host 'h9'"),
    ("duplicate host", "hosts:\n  h1: {address: a}\n  h1: {address: b}\n", "inv.yml:3", "duplicate key 'h1'"),
    ("cycle", "hosts: {h1: }\ngroups:\n  a: {children: [b]}\n  b: {children: [a]}\n", "inv.yml", "cycle through `children`: a -> b -> a"),
    ("empty file", "", "inv.yml", "the inventory is empty"),
    ("not a mapping", "- h1\n", "inv.yml", "expected a mapping at the top level"),
    ("reserved group", "hosts: {h1: }\ngroups:\n  all: {hosts: [h1]}\n", "inv.yml:3", "reserved group name"),
    ("ansible unknown key", "all:\n  hostz: {}\n", "inv.yml:2", "all.hostz: unknown key"),
    ("bad host name", "hosts:\n  'h 1': {}\n", "inv.yml", "does not match"),
    # The course name becomes a file name (.fleet/secrets/<name>.key) and goes into generated config.
    ("course name escapes", "hosts: {h1: }\nname: ../../etc/cron.d/x\n", "inv.yml:2: name", "expected a course name"),
    ("course name with a slash", "name: a/b\nhosts: {h1: }\n", "inv.yml:1: name", "got 'a/b'"),
    ("course name dot", "name: .\nhosts: {h1: }\n", "inv.yml:1: name", "got '.'"),
    ("course name dotdot", "name: ..\nhosts: {h1: }\n", "inv.yml:1: name", "got '..'"),
    ("course name hidden", "name: .key\nhosts: {h1: }\n", "inv.yml:1: name", "got '.key'"),
    ("course name newline", "name: \"lab\\nimport os\"\nhosts: {h1: }\n", "inv.yml:1: name", "got 'lab\\nimport os'"),
    ("course name space", "name: my course\nhosts: {h1: }\n", "inv.yml:1: name", "got 'my course'"),
    ("course name too long", f"name: {'a' * 65}\nhosts: {{h1: }}\n", "inv.yml:1: name", "at most 64"),
]


@pytest.mark.parametrize("case,text,where,message", BAD_INVENTORIES, ids=[c[0] for c in BAD_INVENTORIES])
def test_bad_inventory_names_file_line_and_key(tmp_path, case, text, where, message):
    with pytest.raises(InputError) as info:
        inventory.load(write(tmp_path, text))
    assert where in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["aws-lab", "ds_2026.fall", "L1", "a" * 64])
def test_good_course_names(tmp_path, name):
    assert inventory.load(write(tmp_path, f"name: {name}\nhosts: {{h1: }}\n")).name == name


def test_an_ansible_inventory_is_named_after_its_file_which_must_make_a_course_name(tmp_path):
    assert inventory.load(write(tmp_path, ANSIBLE, name="deep-learning.yml")).name == "deep-learning"
    with pytest.raises(InputError, match=r"my course\.yml: name \(the file's name\): expected a course name"):
        inventory.load(write(tmp_path, ANSIBLE, name="my course.yml"))


def test_an_inventory_from_ec2_tags_has_its_name_checked_too():
    with pytest.raises(InputError, match=r"aws:\.\./x: name: expected a course name"):
        inventory.from_data({"name": "../x", "hosts": {"h1": {"address": "10.0.0.1"}}}, "aws:../x")


def test_missing_inventory_file(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        inventory.load(tmp_path / "nope.yml")


PATTERNS = [
    ("all", ["gpu-1", "gpu-2", "cpu-1"]),
    ("gpu", ["gpu-1", "gpu-2"]),
    ("gpu-*", ["gpu-1", "gpu-2"]),
    ("cpu-1,gpu-1", ["gpu-1", "cpu-1"]),
    ("everyone,!gpu-2", ["gpu-1", "cpu-1"]),
    ("!cpu-1", ["gpu-1", "gpu-2"]),
    ("gpu,&a100", ["gpu-2"]),
    ("g*,!a1*", ["gpu-1"]),
    ("@failed", ["cpu-1"]),
    ("@failed,gpu-1", ["gpu-1", "cpu-1"]),
]


@pytest.mark.parametrize("pattern,expected", PATTERNS)
def test_host_patterns(tmp_path, pattern, expected):
    inv = inventory.load(write(tmp_path, NATIVE))
    assert patterns.select(inv, pattern, failed=["cpu-1"]) == expected


@pytest.mark.parametrize("pattern,message", [
    ("", "empty host pattern"),
    ("nosuch", "unknown host or group 'nosuch'"),
    ("zz-*", "glob 'zz-*' matches no host"),
    ("gpu,!gpu", "matches no host"),
    ("@failed", "no previous run"),
])
def test_bad_patterns(tmp_path, pattern, message):
    inv = inventory.load(write(tmp_path, NATIVE))
    with pytest.raises(InputError) as info:
        patterns.select(inv, pattern, failed=None)
    assert message in str(info.value)
    assert str(info.value).startswith("--hosts: ")


NATIVE_CONNECTION = """
user: ubuntu
key: ~/.ssh/course.pem
vars: {ansible_port: 2200}
groups:
  lab:
    port: 2222
    user: admin
    hosts: ["lab[1:3]"]
  special:
    vars: {ansible_user: special}
    hosts: [lab3]
hosts:
  lab[1:3]:
  lab2: {port: 22}
  other: {address: 10.0.0.9}
"""


def test_native_connection_settings_resolve_like_variables(tmp_path):
    """all < group (parents first, siblings by name) < host, in the native shape as in Ansible's."""
    inv = inventory.load(write(tmp_path, NATIVE_CONNECTION))
    got = {name: (h.address, h.user, h.port, h.key) for name, h in inv.hosts.items()}
    assert got == {
        "lab1": ("lab1", "admin", 2222, "~/.ssh/course.pem"),
        "lab2": ("lab2", "admin", 22, "~/.ssh/course.pem"),
        "lab3": ("lab3", "special", 2222, "~/.ssh/course.pem"),
        "other": ("10.0.0.9", "ubuntu", 2200, "~/.ssh/course.pem"),
    }
    assert inv.hosts["lab1"].origins["user"].source.endswith("inv.yml:8 groups.lab.user")
    assert inv.hosts["lab3"].origins["user"].source.endswith("inv.yml:11 groups.special.vars.ansible_user")
    assert inv.hosts["other"].origins["port"].source.endswith("inv.yml:4 vars.ansible_port")
    assert inv.hosts["lab2"].vars == {}  # connection settings are not role variables


def test_become_password_is_the_hosts_sudo_password_and_masked(tmp_path):
    from fleet.engine.secrets import Masker

    inv = inventory.load(write(tmp_path, "all:\n  vars: {ansible_become_password: pw-all-1}\n"
                                         "  hosts:\n    h1:\n    h2: {ansible_sudo_pass: pw-host-2}\n"))
    assert (inv.hosts["h1"].sudo_password, inv.hosts["h2"].sudo_password) == ("pw-all-1", "pw-host-2")
    assert "pw-" not in repr(inv.hosts["h1"])
    from fleet.app import _connection_rows
    from rich.console import Console
    from rich.table import Table

    table, masker = Table(), Masker()
    table.add_column("name"), table.add_column("value"), table.add_column("from")
    _connection_rows(table, inv.hosts["h2"], masker)
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "connection: sudo_password" in text and "pw-host-2" not in text and "********" in text


def test_unused_ansible_keys_are_listed_once_with_where(tmp_path):
    inv = inventory.load(write(tmp_path, "all:\n  vars: {ansible_python_interpreter: /usr/bin/python3}\n"
                                         "  hosts:\n    h1:\n    h2: {ansible_python_interpreter: /bin/py}\n"))
    assert inv.unused == {"ansible_python_interpreter": f"{tmp_path}/inv.yml:2 all.vars.ansible_python_interpreter"}
    assert "ansible_python_interpreter" not in inv.hosts["h1"].vars


@pytest.mark.parametrize("text,message", [
    ("[gpu]\nlab1 ansible_user=ubuntu\n", "this is an INI inventory"),
    ("lab1 ansible_host=10.0.0.1\nlab2 ansible_host=10.0.0.2\n", "this is an INI inventory"),
], ids=["sections", "host lines"])
def test_ini_inventory_is_recognised_by_its_content(tmp_path, text, message):
    with pytest.raises(InputError) as info:
        inventory.load(write(tmp_path, text, name="hosts"))
    assert message in str(info.value)
    assert f"ansible-inventory -i {tmp_path}/hosts --list -y > inventory.yml" in str(info.value)


PORTS = [
    ("native host", "hosts:\n  h1: {port: 70000}\n", "inv.yml:2: hosts.h1.port"),
    ("native group", "hosts: {h1: }\ngroups:\n  g:\n    port: 0\n    hosts: [h1]\n", "inv.yml:4: groups.g.port"),
    ("native all", "port: 65536\nhosts: {h1: }\n", "inv.yml:1: port"),
    ("native vars", "vars: {ansible_ssh_port: -1}\nhosts: {h1: }\n", "inv.yml:1: vars.ansible_ssh_port"),
    ("ansible host", "all:\n  hosts:\n    h1: {ansible_port: 99999}\n", "inv.yml:3: all.hosts.h1.ansible_port"),
    ("ansible all", "all:\n  vars:\n    ansible_port: true\n  hosts: {h1: }\n", "inv.yml:3: all.vars.ansible_port"),
    ("host:port key", "all:\n  hosts:\n    h1:99999:\n", "inv.yml:3: all.hosts.h1:99999"),
]


@pytest.mark.parametrize("case,text,where", PORTS, ids=[c[0] for c in PORTS])
def test_every_port_is_checked_at_every_level(tmp_path, case, text, where):
    with pytest.raises(InputError) as info:
        inventory.load(write(tmp_path, text))
    assert where in str(info.value)
    assert "expected a port number (an integer in 1..65535)" in str(info.value)


def test_group_vars_file_errors_name_the_file(tmp_path):
    write(tmp_path, "all:\n  children:\n    gpu:\n      hosts: {g1: }\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "gpu.yml").write_text("a: 1\nansible_port: 0\n")
    with pytest.raises(InputError, match=r"group_vars/gpu.yml:2: ansible_port: expected a port number"):
        inventory.load(tmp_path / "inv.yml")
    (tmp_path / "group_vars" / "gpu.yml").write_text("- not a mapping\n")
    with pytest.raises(InputError, match=r"group_vars/gpu.yml: expected a mapping of variables"):
        inventory.load(tmp_path / "inv.yml")
    (tmp_path / "group_vars" / "gpu.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n3031\n")
    with pytest.raises(InputError, match="an Ansible Vault file is not read"):
        inventory.load(tmp_path / "inv.yml")


@pytest.mark.parametrize("pattern,message", [
    ("lab[1:]", "has no end"),
    ("lab[1:3", "no closing ']'"),
    ("lab[3:1]", "the begin comes after the end"),
    ("lab[01:100]", "the same width"),
    ("lab[1:5:0]", "the step must be"),
    ("lab[a:3]", "expected numbers"),
])
def test_bad_host_ranges(tmp_path, pattern, message):
    with pytest.raises(InputError) as info:
        inventory.load(write(tmp_path, f"all:\n  hosts:\n    '{pattern}':\n"))
    assert message in str(info.value) and "inv.yml:3" in str(info.value)


def test_native_setting_given_twice_at_one_level(tmp_path):
    with pytest.raises(InputError, match="user is given twice at this level"):
        inventory.load(write(tmp_path, "hosts:\n  h1: {vars: {ansible_user: a}, user: b}\n"))
