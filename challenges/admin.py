"""The audit in the Django admin, read-only (newest first, filter, search, never a secret),
and revocation: revoke tokens or block keys from the lists, each action recorded with
the operator who did it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .errors import CLIENT_CODES, Code
from .models import SUCCESS, BlockedKey, ChallengeAttempt, IssuedToken, RevocationEvent, RevokedToken
from .revocation import block_key, revoke_token, unblock_key


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


class RevocationActions:
    """Who may take tokens back: users allowed to add revoked tokens / blocked keys."""

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.add_revokedtoken"))

    def has_block_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.add_blockedkey"))

    @admin.action(description="Block the keys of the selected rows", permissions=["block"])
    def block_keys(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        keys = {key for key in queryset.values_list("public_key", flat=True) if key}
        done = sum(block_key(public_key=key, actor=_actor(request), reason="admin") for key in keys)
        messages.info(request, f"blocked {done} key(s); {len(keys) - done} were blocked already")


@admin.register(ChallengeAttempt)
class ChallengeAttemptAdmin(RevocationActions, ReadOnlyAdmin):
    actions = ["block_keys"]
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
class IssuedTokenAdmin(RevocationActions, ReadOnlyAdmin):
    actions = ["revoke_tokens", "block_keys"]

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        jtis = list(queryset.values_list("jti", flat=True))
        done = sum(revoke_token(jti=jti, actor=_actor(request), reason="admin") for jti in jtis)
        messages.info(request, f"revoked {done} token(s); {len(jtis) - done} were revoked already")

    list_display = ("issued_at", "jti", "public_key", "audience", "expires_at")
    list_filter = ("issued_at", "expires_at")
    search_fields = ("public_key", "jti", "token_sha256")
    date_hierarchy = "issued_at"
    ordering = ("-issued_at", "-id")
    show_full_result_count = False


@admin.register(BlockedKey)
class BlockedKeyAdmin(ReadOnlyAdmin):
    """Blocks are added from the audit lists; lifted here (recorded, never deleted silently)."""

    list_display = ("blocked_at", "public_key", "actor", "reason")
    search_fields = ("public_key", "actor")
    actions = ["unblock"]

    def has_unblock_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("challenges.delete_blockedkey"))

    @admin.action(description="Unblock the selected keys", permissions=["unblock"])
    def unblock(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        keys = list(queryset.values_list("public_key", flat=True))
        done = sum(unblock_key(public_key=key, actor=_actor(request), reason="admin") for key in keys)
        messages.info(request, f"unblocked {done} key(s)")


@admin.register(RevokedToken)
class RevokedTokenAdmin(ReadOnlyAdmin):
    list_display = ("revoked_at", "jti", "actor", "reason")
    search_fields = ("jti", "actor")


@admin.register(RevocationEvent)
class RevocationEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "target", "actor", "reason")
    list_filter = ("action",)
    search_fields = ("target", "actor")


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"
