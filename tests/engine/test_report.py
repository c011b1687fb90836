"""What a person reads after each host: changed steps, and how long the slow ones took."""
import io
import json

from rich.console import Console

from fleet.engine.report import Reporter
from fleet.engine.results import HostResult, StepResult


def test_changed_steps_show_the_time_of_slow_ones():
    out = io.StringIO()
    result = HostResult("h1", "changed", steps=[
        StepResult("jupyter", "pip", "changed", "install notebook==7.2.0", seconds=83.21),
        StepResult("jupyter", "config", "changed", "update /etc/jupyter/jupyter_server_config.py", seconds=0.02),
        StepResult("jupyter", "service", "ok", "jupyter already enabled and running"),
    ], seconds=85.0)
    with Reporter(Console(file=out, width=200, color_system=None)) as reporter:
        reporter.start(1, "provisioning")
        reporter.host_done(result)
    lines = out.getvalue().splitlines()
    assert any(line.endswith("install notebook==7.2.0 (83.2 s)") for line in lines), lines
    assert any(line.endswith("update /etc/jupyter/jupyter_server_config.py") for line in lines), lines
    assert not any("already enabled" in line for line in lines)   # unchanged steps only with --verbose


def test_the_json_report_is_private_and_a_planted_link_cannot_redirect_it(tmp_path):
    from fleet.engine.report import write_json
    from fleet.engine.results import RunResult

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / ".report.json.tmp").symlink_to(victim)     # the old fixed temp name
    write_json(RunResult({}), tmp_path / "report.json")
    assert victim.read_text() == "keep me\n"
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "report.json").read_text())["hosts"] == {}
