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
