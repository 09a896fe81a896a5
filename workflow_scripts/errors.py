"""One error type for bad user input, and one way to list offenders.

A researcher who points loralens at a corpus should learn *which* files or config keys are
wrong and *what* is wrong with them, before any downstream job starts. Every check in the
package raises :class:`InputError` with a message built by :func:`describe_offenders`.
"""

from __future__ import annotations

from collections.abc import Iterable

#: How many offenders a message names before it only counts the rest.
MAX_LISTED = 20


class InputError(ValueError):
    """Bad user input (a config key, a corpus file, a manifest row). The message says what to fix."""


def describe_offenders(problem: str, offenders: Iterable[object], hint: str = "") -> str:
    """Return ``problem`` followed by the first :data:`MAX_LISTED` offenders and a count.

    >>> print(describe_offenders("2 files are missing", ["a.wav", "b.wav"]))
    2 files are missing:
      - a.wav
      - b.wav
    """
    items = [str(item) for item in offenders]
    lines = [f"{problem}:"]
    lines += [f"  - {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more ({len(items)} in all)")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def raise_if_any(problem: str, offenders: Iterable[object], hint: str = "") -> None:
    """Raise :class:`InputError` listing ``offenders`` if there are any."""
    items = list(offenders)
    if items:
        raise InputError(describe_offenders(problem.format(n=len(items)), items, hint))


class ProblemReport:
    """Collect every kind of problem a check finds, then raise them as one :class:`InputError`.

    A user with three problems should need one run, not three, to see them all. Each
    :meth:`add` with offenders becomes one section (a :func:`describe_offenders` listing);
    :meth:`note` adds a section that is shown only alongside a real problem.
    """

    def __init__(self, heading: str):
        self.heading = heading
        self.sections: list[str] = []
        self.notes: list[str] = []

    @staticmethod
    def _section(into: list[str], problem: str, offenders: Iterable[object], hint: str) -> None:
        items = list(offenders)
        if items:
            into.append(describe_offenders(problem.format(n=len(items)), items, hint))

    def add(self, problem: str, offenders: Iterable[object], hint: str = "") -> None:
        """Record a section if there are offenders; ``{n}`` in ``problem`` is their count."""
        self._section(self.sections, problem, offenders, hint)

    def note(self, problem: str, offenders: Iterable[object], hint: str = "") -> None:
        """Record context that is not a problem by itself (it never makes :meth:`raise_if_any` raise)."""
        self._section(self.notes, problem, offenders, hint)

    def raise_if_any(self) -> None:
        """Raise one :class:`InputError` with every section, numbered, if any problem was added."""
        if not self.sections:
            return
        count = len(self.sections)
        parts = [f"{self.heading}: {count} kind{'s' if count > 1 else ''} of problem, all listed here"]
        parts += [f"{i}. {section}" for i, section in enumerate(self.sections, start=1)]
        parts += [f"Also: {note}" for note in self.notes]
        raise InputError("\n\n".join(parts))
