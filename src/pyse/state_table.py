"""Explicit state machines: a table ``{(state, event): next state}`` and one
transition function, so that what may happen to a worker slot or to a
supervisor is written in one place, and anything else is a loud error
naming the state and the event (h11's way)."""
from __future__ import annotations

import enum
from typing import Mapping, TypeVar

State = TypeVar("State", bound=enum.Enum)


class TransitionError(RuntimeError):
    """An event the table does not allow in the current state: a bug."""


def next_state(table: Mapping[tuple[State, str], State], state: State, event: str,
               who: str) -> State:
    try:
        return table[(state, event)]
    except KeyError:
        raise TransitionError(f"{who}: event {event!r} is not allowed in state "
                              f"{state.value!r}") from None
