"""Drift grouped across hosts: identical change sets share a block, hosts named compactly, the
hosts unlike any other last; the output stays one line per host when piped."""
import io
import os
from dataclasses import asdict

import pytest
from rich.console import Console

from fleet.engine.drift import compact, groups
from fleet.engine.report import Reporter
from fleet.engine.results import HostResult, RunResult, StepResult

CONFIG = "/etc/jupyter/jupyter_server_config.py"


@pytest.mark.parametrize("names, expected", [
    ([f"h{i:02d}" for i in range(1, 28)] + ["h30"], "h01..h27, h30"),
    (["h1", "h2"], "h1, h2"),
    (["h3", "h1", "h2", "h10"], "h1..h3, h10"),
    (["h9", "h10", "h11"], "h9..h11"),
    (["h09", "h10", "h11"], "h09..h11"),          # same width, consecutive
    (["h8", "h09", "h10"], "h8, h09, h10"),          # padding changes: not one run
    (["gpu-1", "gpu-2", "gpu-3", "cpu-1"], "cpu-1, gpu-1..gpu-3"),
    (["lab", "lab2", "lab3"], "lab, lab2, lab3"),
    ([], ""),
])
def test_compact_host_names(names, expected):
    assert compact(names) == expected


def step(message, diff=None, status="would change", digest=None, role="jupyter", name=None):
    return StepResult(role, name or message, status, message, diff, digest=digest)


def host(name, *steps, status="drift", handlers=(), error=None):
    return HostResult(name, status, steps=[step("venv ok", status="ok"), *steps], handlers=list(handlers), error=error)


EDIT_A = "--- a\n+++ b\n-c.ServerApp.shutdown_no_activity_timeout = 600\n"
EDIT_B = "--- a\n+++ b\n-c.ServerApp.open_browser = True\n"
UNIT = step("update /etc/systemd/system/jupyter.service", EDIT_A)
HIDDEN = "(secret content: diff hidden)"

CASES = {
    "three alike, one different": (
        [host("h1", step("update unit", EDIT_B)), *[host(f"h{i}", step("update unit", EDIT_A)) for i in (2, 3, 4)]],
        [["h2", "h3", "h4"], ["h1"]]),
    "secret diffs told apart by their digest": (
        [host("h1", step(f"update {CONFIG}", HIDDEN, digest="b" * 16)),
         *[host(f"h{i}", step(f"update {CONFIG}", HIDDEN, digest="a" * 16)) for i in (2, 3, 4)]],
        [["h2", "h3", "h4"], ["h1"]]),
    "same diff, different handler": (
        [host("h1", UNIT, handlers=["restart jupyter"]), host("h2", UNIT)],
        [["h1"], ["h2"]]),
    "clean hosts are in no group": (
        [HostResult("h1", "ok", steps=[step("x", status="ok")]), host("h2", UNIT), host("h3", UNIT)],
        [["h2", "h3"]]),
    "unreachable hosts grouped by status, not by error": (
        [HostResult("h1", "unreachable", error="10.0.0.1: timed out"),
         HostResult("h2", "unreachable", error="10.0.0.2: refused"), host("h3", UNIT)],
        [["h1", "h2"], ["h3"]]),
    "larger groups first, then by first host": (
        [host("b1", UNIT), host("a1", step("other", EDIT_B)), host("b2", UNIT)],
        [["b1", "b2"], ["a1"]]),
}


@pytest.mark.parametrize("case", CASES)
def test_groups(case):
    results, expected = CASES[case]
    found = groups({r.host: asdict(r) for r in results})
    assert [g["hosts"] for g in found] == expected
    assert [g["unique"] for g in found] == [len(e) == 1 for e in expected]


def test_group_carries_its_changes_and_diff_once():
    results = [host(f"h{i:02d}", UNIT, handlers=["restart jupyter"]) for i in range(1, 28)] + [host("h30", UNIT)]
    found = groups({r.host: asdict(r) for r in results})
    first = found[0]
    assert first["label"] == "h01..h27" and first["handlers"] == ["restart jupyter"]
    assert first["changes"] == [{"role": "jupyter", "name": UNIT.name, "status": "would change",
                                 "message": UNIT.message, "diff": EDIT_A}]
    assert RunResult({r.host: r for r in results}, check=True).to_json()["drift_groups"] == found


def run_output(results, width=80):
    out = io.StringIO()
    run = RunResult({r.host: r for r in results}, check=True)
    with Reporter(Console(file=out, width=width, color_system=None), show_diff=True, group=True) as reporter:
        reporter.start(len(results), "checking")
        for r in results:
            reporter.host_done(r)
        reporter.recap(run)
    return out.getvalue()


def test_check_output_shows_each_change_set_once():
    long_path = "/home/student/notebooks/" + "very-long-folder-name/" * 5 + "settings.json"
    diff = f"--- {long_path}\n+++ {long_path}\n-old\n+new\n"
    results = [host(f"h{i}", step(f"update {long_path}", diff)) for i in (1, 2, 3)]
    results.append(host("h4", step("update other", EDIT_B), error="one " + "long error " * 20))
    text = run_output(results)
    lines = text.splitlines()
    assert "2 distinct change sets over 4 hosts:" in text
    assert sum(1 for line in lines if line == "3 hosts: h1..h3") == 1
    assert lines.index("unlike any other:") < lines.index("1 host: h4")
    # one diff, not three; the path is never folded at 80 columns
    assert sum(1 for line in lines if line == f"--- {long_path}") == 1
    assert any(line.endswith(f"update {long_path}") for line in lines)
    # the per-host summary: exactly one line each, however long
    host_lines = [line for line in lines if line.lstrip().startswith("drift h")]
    assert len(host_lines) == 4 and any(line.endswith("long error") for line in host_lines), host_lines


def test_apply_mode_keeps_per_host_details():
    out = io.StringIO()
    with Reporter(Console(file=out, width=80, color_system=None)) as reporter:
        reporter.start(1, "provisioning")
        reporter.host_done(host("h1", step("update unit", EDIT_A, status="changed"), status="changed"))
    assert "update unit" in out.getvalue()


def test_markup_in_names_and_messages_is_shown_as_text():
    text = run_output([host("h[1]", step("set [bold]x[/bold]", "-[red]\n"))])
    assert "h[1]" in text and "set [bold]x[/bold]" in text and "-[red]" in text


# ---------------------------------------------------------------- secret files: digests without content

def probe_locally(*facts):
    """The facts inside a real probe script, run by bash as a host runs it."""
    import subprocess

    from fleet.engine.remote import Probe

    probe = Probe(list(facts), [])
    out = subprocess.run(["bash", "-s"], input=probe.script(), capture_output=True, text=True, check=True).stdout
    parsed, _, _, errors = probe.parse(out)
    assert not errors, errors
    return [parsed[f.key] for f in facts]


TOKENS = {"h1": "a1" * 24, "h2": "b2" * 24, "h3": "c3$&*\\'\"" * 3}   # odd characters stay literal


def config(name: str, token: str, extra: str = "") -> str:
    return f"# managed for {name}\nc.ServerApp.port = 8888\nc.IdentityProvider.token = \"{token}\"\n{extra}\n"


def test_secret_files_drifted_alike_share_a_digest(tmp_path):
    from fleet.engine.drift import masked_diff_fact

    edits = {"h1": "c.ServerApp.open_browser = True", "h2": "c.x = 600", "h3": "c.x = 600"}
    digests = {}
    for name, token in TOKENS.items():
        path = tmp_path / name
        path.write_text(config(name, token, edits[name]))
        fact = masked_diff_fact(str(path), config(name, token).encode(), [token])
        assert token not in fact.command.split("__s=")[0]     # only where the host needs it to mask
        (digests[name],) = probe_locally(fact)
    assert digests["h2"] == digests["h3"] != digests["h1"]
    # a host whose token line itself was edited is told apart
    (tmp_path / "h3").write_text(config("h3", "d4" * 24, edits["h3"]))
    (changed,) = probe_locally(masked_diff_fact(str(tmp_path / "h3"), config("h3", TOKENS["h3"]).encode(),
                                                [TOKENS["h3"]]))
    assert changed != digests["h2"]
    (absent,) = probe_locally(masked_diff_fact(str(tmp_path / "missing"), b"x\n", ["x" * 8]))
    assert absent == "absent"


@pytest.mark.parametrize("tty, columns, expected", [(False, None, 160), (False, "100", 100), (False, "junk", 160),
                                                    (True, "100", None)])
def test_console_width_when_piped(monkeypatch, tty, columns, expected):
    import sys

    from fleet.engine.report import console_width

    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert console_width() == expected


def test_the_secret_digest_never_reads_through_a_link_or_waits_on_a_fifo(tmp_path):
    from fleet.engine.drift import masked_diff_fact

    token = TOKENS["h1"]
    wanted = config("h1", token)
    target = tmp_path / "elsewhere"
    target.write_text(config("h1", token, "c.x = 1"))        # readable, and different from the wanted file
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")                               # nobody writes: a blocking read would hang
    (link,) = probe_locally(masked_diff_fact(str(tmp_path / "link"), wanted.encode(), [token]))
    (fifo,) = probe_locally(masked_diff_fact(str(tmp_path / "fifo"), wanted.encode(), [token]))
    (real,) = probe_locally(masked_diff_fact(str(target), wanted.encode(), [token]))
    assert link == "link" and fifo == "not-a-file" and real not in ("link", "not-a-file", "absent")
