"""docs/RELIABILITY.md's table is complete and true: every bad input gives exactly the documented
exit code and message, and leaves no output or temporary file behind."""

from pathlib import Path

import pytest
from reliability import CASES, DOC, Fixtures, make_fixtures, run_case, usage_line


def documented_rows() -> list[list[str]]:
    table = DOC.read_text().partition("<!-- table -->")[2]
    rows = [
        line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    return rows[1:]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return make_fixtures(tmp_path_factory.mktemp("reliability"))


def test_the_table_lists_every_case_and_at_least_forty() -> None:
    rows = documented_rows()
    assert len(rows) == len(CASES) >= 40
    for row, case in zip(rows, CASES, strict=True):
        assert row[3] == "`causal-sprites " + " ".join(case.args) + "`"


@pytest.mark.parametrize("number", range(len(CASES)))
def test_each_bad_input_gives_its_documented_answer(
    number: int, fixtures: Fixtures, tmp_path: Path
) -> None:
    case, row = CASES[number], documented_rows()[number]
    outcome = run_case(case, tmp_path, fixtures)
    assert str(outcome.code) == row[4]
    shown = outcome.message if outcome.code == 1 else usage_line(outcome.message)
    assert f"`{shown.replace('|', '/')}` |" == row[5]
    if outcome.code == 1:
        assert outcome.message.startswith("error: ") and "\n" not in outcome.message
    assert outcome.created == []  # no output, partial or temporary file
