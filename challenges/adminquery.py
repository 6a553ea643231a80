"""The admin lists' query strings, checked before their rows are read: a filter whose values
no database takes is an invalid lookup (Django's ``?e=1`` redirect on a list, 400 on its
"Export CSV"), never a 500.

Django's changelist refuses a value its field cannot parse (``created_at__gte=garbage``),
but not what fails later, when the query is compiled or run, and differently per database:

* a NUL character anywhere (PostgreSQL refuses it in text: ``outcome=%00``);
* an address lookup's value that is no address (``client_ip=not-ip``: PostgreSQL's
  ``inet``; SQLite compares the text and finds nothing, or miscounts a ``range``);
* a regular expression (``__regex``, ``__iregex``): each database has its own dialect and
  its own error, and no list offers one;
* a time with no UTC time (``created_at__lt=9999-12-31T23:59-14:00``: SQLite's adapter
  fails, PostgreSQL takes it; refused on both), or a date drill-down past the year 9999
  (``created_at__year=9999``).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet, FieldDoesNotExist, FullResultSet, ValidationError
from django.db import models
from django.http import HttpRequest
from django.utils import timezone

from .clients import storable_ip

#: The lookups whose value is compared as the field's type (an address, a time; the others,
#: such as ``contains``, compare its text).
_COMPARED_LOOKUPS = frozenset({"exact", "iexact", "in", "range", "gt", "gte", "lt", "lte"})
_REGEX_LOOKUPS = frozenset({"regex", "iregex"})


class CheckedChangeList(ChangeList):
    """A changelist that raises :class:`IncorrectLookupParameters` for what its database
    would refuse, before it reads a row."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        for key, values in request.GET.lists():
            if any("\x00" in value for value in [key, *values]):
                raise IncorrectLookupParameters(f"{key[:40]!r}: no database takes a NUL character")
        for key, values in self.get_filters_params().items():
            check_lookup(self.model, key, values if isinstance(values, list) else [values])
        try:
            queryset = super().get_queryset(request, exclude_parameters)
        except (ValueError, OverflowError) as error:  # a date drill-down past the year 9999
            raise IncorrectLookupParameters(error) from error
        try:
            queryset.query.get_compiler(queryset.db).as_sql()  # every value adapted, none run
        except (EmptyResultSet, FullResultSet):
            pass
        except (ValueError, OverflowError, TypeError) as error:
            raise IncorrectLookupParameters(error) from error
        return queryset


def check_lookup(model: type[models.Model], key: str, values: list[str]) -> None:
    """Raise :class:`IncorrectLookupParameters` if the lookup ``key`` (``field__lookup``, maybe
    across relations) with ``values`` would fail in the database rather than select rows."""
    parts = key.split("__")
    field: Any = None
    opts = model._meta
    while parts:
        try:
            field = opts.get_field(parts[0])
        except FieldDoesNotExist:
            break
        parts.pop(0)
        if not field.is_relation or field.related_model is None:
            break
        opts = field.related_model._meta
    lookup = parts[-1] if parts else "exact"
    if lookup in _REGEX_LOOKUPS:
        raise IncorrectLookupParameters(f"{key[:40]!r}: the lists take no regular expression")
    if parts[:-1] or lookup not in _COMPARED_LOOKUPS:  # a transform (created_at__date__gte), isnull, ...
        return
    many = lookup in ("in", "range")
    items = [item for value in values for item in (value.split(",") if many else [value])]
    if isinstance(field, models.GenericIPAddressField) and not all(storable_ip(i) for i in items):
        raise IncorrectLookupParameters(f"{key[:40]!r}: not an IP address")
    if isinstance(field, models.DateTimeField) and not all(_in_utc(field, i) for i in items):
        raise IncorrectLookupParameters(f"{key[:40]!r}: not a time in UTC's years 1 to 9999")


def _in_utc(field: Any, text: str) -> bool:
    """False for a time that has no UTC time (0001-01-01T00:00+14:00): SQLite's adapter fails
    on it, PostgreSQL takes it; refused on both."""
    try:
        when = field.to_python(text)
        if when is not None and timezone.is_aware(when):
            when.astimezone(UTC)
    except ValidationError:
        return True  # Django's own check refuses it, as any unparsable value
    except OverflowError:
        return False
    return True
