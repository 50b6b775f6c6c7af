"""The command line's battery of broken inputs and settings (tests/python/cli_battery.py; issue 16).

Each case: non-zero exit, one ``amedl:`` line that says what is wrong, no
traceback, no file changed, added or removed; the median case under 3 s.
The table is printed with ``pytest -s`` and written to ``$AMEDL_BATTERY_TABLE`` when set.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cli_battery  # noqa: E402

CASES = cli_battery.cases()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workspace = cli_battery.make_workspace(tmp_path_factory.mktemp("battery") / "workspace")
    out = {r.case.name: r for r in cli_battery.run_battery(workspace)}
    table = cli_battery.table(list(out.values()))
    print("\n" + table)
    if os.environ.get("AMEDL_BATTERY_TABLE"):
        Path(os.environ["AMEDL_BATTERY_TABLE"]).write_text(table + "\n")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_a_clear_error_that_changes_nothing(results, case):
    r = results[case.name]
    assert not r.problems(), f"{case.name}: {'; '.join(r.problems())}\nstderr:\n{r.stderr[-3000:]}"


def test_errors_that_need_no_training_answer_fast(results):
    median = statistics.median(r.seconds for r in results.values())
    assert median < cli_battery.MEDIAN_LIMIT_S, f"median {median:.2f} s over {len(results)} cases"
