"""The runner's --max-fail parser: one parser for every form, tests as data."""
from __future__ import annotations

import pytest

from fleet.errors import InputError
from fleet.runner import parse_max_fail

GOOD = [
    # (text, hosts in the run, failures allowed)
    ("0", 10, 0), ("3", 10, 3), (" 3 ", 10, 3), ("20%", 10, 2), ("25%", 10, 2), ("12.5%", 8, 1),
    ("0%", 10, 0), ("100%", 10, 10), ("50 %", 4, 2),
]
BAD = ["1.5", "50%%", "%", "-1", "-5%", "150%", "many", "", "3 hosts", "1e3", "nan%", "inf%", "0x10", "½"]


@pytest.mark.parametrize("text,total,allowed", GOOD)
def test_counts_and_percentages(text, total, allowed):
    assert parse_max_fail(text).allowed(total) == allowed


@pytest.mark.parametrize("text", BAD)
def test_anything_else_is_bad_input(text):
    with pytest.raises(InputError, match=r"--max-fail: expected a number of hosts \(3\) or a percentage \(20%\) of at most 100%, got"):
        parse_max_fail(text)
