"""The benchmark's own logic that needs no hosts: waiting for a quiet machine."""
import pytest

from bench import run as bench


class FakeMachine:
    """Busy cores per one-second window, replayed; the clock advances with each sleep."""

    def __init__(self, busy: list[float]):
        self.busy, self.now, self.cpu = list(busy), 0.0, 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.cpu += self.busy.pop(0) if self.busy else 0.0


@pytest.mark.parametrize("busy, waited", [
    ([0.0, 0.0, 0.0], 3),                        # quiet at once: three calm windows
    ([1.5, 1.2, 0.1, 0.1, 0.1], 5),              # busy hosts first, then calm
    ([0.1, 0.1, 0.9, 0.1, 0.1, 0.1], 6),         # a busy window restarts the count
    ([2.0] * 50, 10),                            # never quiet: gives up at the limit
])
def test_wait_until_quiet(monkeypatch, busy, waited):
    machine = FakeMachine(busy)
    monkeypatch.setattr(bench.time, "sleep", machine.sleep)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: machine.now)
    monkeypatch.setattr(bench, "machine_cpu_seconds", lambda: machine.cpu)
    assert bench.wait_until_quiet(busy_below=0.3, quiet_windows=3, limit_s=10) == waited


def test_slowest_steps_of_a_cold_run():
    report = {"steps": [
        {"name": "apt python3-venv, git", "seconds": 21.5},
        {"name": "pip notebook", "seconds": 140.25},
        {"name": "service jupyter", "seconds": None},          # planned but nothing ran
        {"name": "template config", "seconds": 0.01},
    ]}
    assert bench.slowest_steps(report, count=2) == [{"step": "pip notebook", "seconds": 140.25},
                                                    {"step": "apt python3-venv, git", "seconds": 21.5}]
