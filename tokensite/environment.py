"""How the settings read the environment: ``.env`` and the process's variables, where an
empty variable (``NAME=``, as ``.env.example`` lists them) is the same as no variable.

:func:`read` loads ``.env`` (it fills what the environment leaves unset, an empty
variable included) and returns the django-environ reader the settings use, which sees
only non-empty variables: each setting's default applies to an empty one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import environ


class NonEmpty(Mapping[str, str]):
    """The process's environment without its empty variables."""

    def __getitem__(self, name: str) -> str:
        value = os.environ[name]
        if value == "":
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name, value in os.environ.items() if value != "")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read(dotenv: Path) -> environ.Env:
    """Load ``dotenv`` if it exists, and the reader of the non-empty variables."""
    if dotenv.is_file():  # (else django-environ logs so, before LOGGING is set up)
        empty = [name for name, value in os.environ.items() if value == ""]
        for name in empty:  # so that .env fills them
            del os.environ[name]
        environ.Env.read_env(dotenv, overwrite=False)
        for name in empty:
            os.environ.setdefault(name, "")
    env = environ.Env()
    env.ENVIRON = NonEmpty()
    return env
