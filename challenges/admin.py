"""Read-only audit in the Django admin: newest first, filter, search, never a secret."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .errors import CLIENT_CODES, Code
from .models import SUCCESS, ChallengeAttempt, IssuedToken


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Audit rows are append-only: no add, no change, no delete from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OutcomeFilter(admin.SimpleListFilter):
    """Outcomes from the code enumeration (the column itself has no choices)."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        codes = sorted(str(code) for code in Code if code not in CLIENT_CODES)
        return [(SUCCESS, SUCCESS)] + [(code, code) for code in codes]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(outcome=value) if value else queryset


@admin.register(ChallengeAttempt)
class ChallengeAttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "outcome",
        "public_key",
        "client_ip",
        "origin",
        "transport",
        "worker",
        "upstream",
        "latency_ms",
    )
    list_filter = (OutcomeFilter, "created_at", "transport", "upstream")
    search_fields = ("public_key", "challenge_id", "token__jti", "client_ip")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False


@admin.register(IssuedToken)
class IssuedTokenAdmin(ReadOnlyAdmin):
    list_display = ("issued_at", "jti", "public_key", "audience", "expires_at")
    list_filter = ("issued_at", "expires_at")
    search_fields = ("public_key", "jti", "token_sha256")
    date_hierarchy = "issued_at"
    ordering = ("-issued_at", "-id")
    show_full_result_count = False
