import pytest

from workflow_scripts.errors import InputError, describe_offenders, raise_if_any


def test_lists_first_twenty_and_counts_the_rest():
    message = describe_offenders("25 files are bad", [f"f{i}.wav" for i in range(25)])
    lines = message.splitlines()
    assert lines[0] == "25 files are bad:"
    assert lines[1:21] == [f"  - f{i}.wav" for i in range(20)]
    assert lines[21] == "  ... and 5 more (25 in all)"


def test_raise_if_any_counts_and_is_silent_without_offenders():
    raise_if_any("{n} bad", [])
    with pytest.raises(InputError, match=r"^3 bad:\n  - a\n  - b\n  - c\nfix them$"):
        raise_if_any("{n} bad", ["a", "b", "c"], hint="fix them")


def test_problem_report_raises_every_section_at_once():
    from workflow_scripts.errors import ProblemReport

    report = ProblemReport("datasets.toy")
    report.add("{n} ids are duplicated", ["u1", "u1"])
    report.add("{n} labels are unknown", [])  # no offenders: no section
    report.note("{n} clips would be skipped", ["c.wav"])
    report.add("{n} clips are corrupt", [f"c{i}.wav" for i in range(22)], hint="fix the clips")
    with pytest.raises(InputError) as error:
        report.raise_if_any()
    sections = str(error.value).split("\n\n")
    assert sections[0] == "datasets.toy: 2 kinds of problem, all listed here"
    assert sections[1] == "1. 2 ids are duplicated:\n  - u1\n  - u1"
    assert sections[2].startswith("2. 22 clips are corrupt:\n  - c0.wav")
    assert "  ... and 2 more (22 in all)\nfix the clips" in sections[2]
    assert sections[3] == "Also: 1 clips would be skipped:\n  - c.wav"


def test_problem_report_with_only_notes_does_not_raise():
    from workflow_scripts.errors import ProblemReport

    report = ProblemReport("datasets.toy")
    report.note("{n} clips would be skipped", ["c.wav"])
    report.raise_if_any()
