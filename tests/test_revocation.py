"""Apps verify tokens (key set, introspection) and operators take them back (revoke, block),
from the admin and the command line; rotated-out keys stay verifiable; pruning keeps live rows."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from datetime import timedelta
from unittest import mock
from urllib.parse import urlencode

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.utils import timezone

from challenges import revocation, runtime
from challenges.identity import PrivateKey
from challenges.models import BlockedKey, ChallengeAttempt, IssuedToken, RevocationEvent, RevokedToken
from challenges.revocation import Blocklist, block_key, revoke_token
from challenges.tokens import key_id, mint_token
from tests.wsutil import challenge, connect, send, sign_frame

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "introspection-secret-for-the-tests-0123456789"


@pytest.fixture(autouse=True)
def introspection(settings):
    settings.INTROSPECTION_TOKEN = SECRET


async def introspect(token: str, *, bearer: str = SECRET, form: bool = False) -> tuple[int, dict]:
    client, headers = AsyncClient(), {"authorization": f"Bearer {bearer}"}
    if form:  # RFC 7662's own encoding
        body = urlencode({"token": token})
        response = await client.post(
            "/api/token/introspect", body, content_type="application/x-www-form-urlencoded", headers=headers
        )
    else:
        response = await client.post(
            "/api/token/introspect",
            json.dumps({"token": token}),
            content_type="application/json",
            headers=headers,
        )
    return response.status_code, json.loads(response.content)


async def get_token(user: PrivateKey) -> str:
    comm = await connect()
    reply = await send(comm, sign_frame(user, await challenge(comm, user)))
    await comm.disconnect()
    assert reply["type"] == "token", reply
    return str(reply["value"])


async def test_the_key_set_publishes_the_kid_every_token_carries(authority_signer, user_key):
    response = await AsyncClient().get("/.well-known/jwks.json")
    assert response["Access-Control-Allow-Origin"] == "*"
    [key] = json.loads(response.content)["keys"]
    assert key["kid"] == key_id(authority_signer.public)
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "Ed25519")
    token = await get_token(user_key)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["kid"] == key["kid"]


async def test_introspection_needs_the_bearer_token(user_key):
    token = await get_token(user_key)
    for bearer in ("", "wrong", SECRET + "x"):
        status, body = await introspect(token, bearer=bearer)
        assert (status, body) == (401, {"error": "invalid_client"})
    status, body = await introspect(token)
    assert status == 200
    assert body["active"] is True
    assert body["sub"] == str(user_key.public)
    assert (await introspect(token, form=True))[1]["active"] is True  # RFC 7662's form body


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"token=abc", "multipart/form-data"),  # no boundary
        ("&".join(f"f{i}=1" for i in range(1_500)).encode(), "application/x-www-form-urlencoded"),
    ],
    ids=["no-boundary", "too-many-fields"],
)
async def test_a_malformed_form_body_is_a_400_not_a_traceback(user_key, caplog, body, content_type):
    """Both were Django's HTML 400 and a logged traceback (TooManyFieldsSent at ERROR)."""
    response = await AsyncClient().post(
        "/api/token/introspect",
        body,
        content_type=content_type,
        headers={"authorization": f"Bearer {SECRET}"},
    )
    assert response.status_code == 400
    assert json.loads(response.content) == {
        "error": "invalid_request",
        "error_description": "the form body is malformed",
    }
    assert not [r for r in caplog.records if r.exc_info]


async def test_introspection_says_inactive_and_nothing_more(authority_signer, user_key):
    expired = mint_token(signer=authority_signer, subject=user_key.public, ttl=-60).token
    foreign = mint_token(signer=PrivateKey.generate(), subject=user_key.public, ttl=60).token
    for token in (expired, foreign, "garbage"):
        assert await introspect(token) == (200, {"active": False})


async def test_a_revoked_token_and_a_blocked_keys_tokens_are_inactive_at_once(user_key):
    first, second = await get_token(user_key), await get_token(user_key)
    other = PrivateKey.generate()
    third = await get_token(other)
    jti = (await introspect(first))[1]["jti"]
    await database_sync_to_async(revoke_token)(jti=jti, actor="test", reason="leaked")
    assert (await introspect(first))[1] == {"active": False}
    assert (await introspect(second))[1]["active"] is True
    await database_sync_to_async(block_key)(public_key=str(user_key.public), actor="test")
    assert (await introspect(second))[1] == {"active": False}
    assert (await introspect(third))[1]["active"] is True  # another key is untouched
    verify = await AsyncClient().post(
        "/api/token/verify", json.dumps({"token": second}), content_type="application/json"
    )
    assert json.loads(verify.content)["code"] == "key_blocked"


async def test_a_blocked_key_cannot_start_a_flow_and_unblocking_lets_it(user_key):
    rt = await runtime.get()
    await database_sync_to_async(block_key)(public_key=str(user_key.public), actor="test")
    await rt.blocklist.refresh()  # what every worker's poll does within a second
    comm = await connect()
    frame = await send(comm, {"type": "token", "pub": str(user_key.public)})
    assert (frame["type"], frame["code"]) == ("error", "key_blocked")
    await database_sync_to_async(call_command)(
        "tokens", "unblock", str(user_key.public), stdout=io.StringIO()
    )
    await rt.blocklist.refresh()
    assert (await send(comm, {"type": "token", "pub": str(user_key.public)}))["type"] == "challenge"
    await comm.disconnect()


async def test_a_key_blocked_while_its_challenge_is_pending_gets_no_token(user_key):
    rt = await runtime.get()
    comm = await connect()
    value = await challenge(comm, user_key)
    await database_sync_to_async(block_key)(public_key=str(user_key.public), actor="test")
    await rt.blocklist.refresh()
    frame = await send(comm, sign_frame(user_key, value))
    assert (frame["type"], frame["code"]) == ("error", "key_blocked")
    await comm.disconnect()
    row = await ChallengeAttempt.objects.filter(public_key=str(user_key.public)).aget()
    assert (row.outcome, row.answered_at is not None) == ("key_blocked", True)
    assert not await IssuedToken.objects.filter(public_key=str(user_key.public)).aexists()


async def test_a_rotated_out_keys_tokens_stay_active_until_they_expire(settings, authority_signer, user_key):
    old_token = await get_token(user_key)
    new = PrivateKey.generate()
    settings.AUTHORITY_PRIVATE_KEY = str(new)
    settings.AUTHORITY_PREVIOUS_KEYS = [str(authority_signer.public)]
    await runtime.stop()  # a new process, with the rotated configuration
    keys = json.loads((await AsyncClient().get("/.well-known/jwks.json")).content)["keys"]
    assert [k["kid"] for k in keys] == [key_id(new.public), key_id(authority_signer.public)]
    assert (await introspect(old_token))[1]["active"] is True
    assert (await introspect(await get_token(user_key)))[1]["iss"] == str(new.public)
    expired_old = mint_token(signer=authority_signer, subject=user_key.public, ttl=-60).token
    assert (await introspect(expired_old))[1] == {"active": False}
    settings.AUTHORITY_PREVIOUS_KEYS = []
    await runtime.stop()
    assert (await introspect(old_token))[1] == {"active": False}  # dropped from the list: no longer ours


def issued(jti: str, key: PrivateKey) -> IssuedToken:
    attempt = ChallengeAttempt.objects.create(
        created_at=timezone.now(), finished_at=timezone.now(), outcome="success", public_key=str(key.public)
    )
    return IssuedToken.objects.create(
        attempt=attempt,
        jti=jti,
        token_sha256=hashlib.sha256(jti.encode()).hexdigest(),
        public_key=str(key.public),
        issued_at=timezone.now(),
    )


def test_the_command_line_revokes_blocks_and_unblocks_and_records_who(user_key):
    issued("jti-1", user_key)
    out = io.StringIO()
    call_command("tokens", "revoke", "jti-1", "--reason", "leaked", stdout=out)
    call_command("tokens", "revoke", "jti-1", stdout=out)
    call_command("tokens", "block", str(user_key.public), stdout=out)
    call_command("tokens", "unblock", str(user_key.public), stdout=out)
    call_command("tokens", "unblock", str(user_key.public), stdout=out)
    assert out.getvalue().splitlines() == [
        "revoked token jti-1",
        "that token was already revoked",
        f"blocked key {user_key.public}",
        f"unblocked key {user_key.public}",
        "that key was not blocked",
    ]
    events = list(RevocationEvent.objects.order_by("id").values_list("action", "target", "reason"))
    assert events == [
        ("revoke", "jti-1", "leaked"),
        ("block", str(user_key.public), ""),
        ("unblock", str(user_key.public), ""),
    ]
    assert all(actor.startswith("cli:") for actor in RevocationEvent.objects.values_list("actor", flat=True))
    assert RevokedToken.objects.get().jti == "jti-1"
    assert not BlockedKey.objects.exists()
    with pytest.raises(Exception, match="not a public key"):
        call_command("tokens", "block", "bbaa-not-a-key")


@pytest.mark.parametrize("jti", ["jti-2", "", "jti-1" + "x" * 64])
def test_revoking_a_jti_no_token_has_revokes_nothing_and_says_so(user_key, jti):
    """A typo would have been recorded as a revocation while the real token stayed active
    (and a jti past 64 characters was cut to a real one's)."""
    issued("jti-1" + "x" * 59, user_key)  # 64 characters: what the longest cut to
    with pytest.raises(CommandError, match=r"no issued token has the jti .*: nothing was revoked"):
        call_command("tokens", "revoke", jti, stdout=io.StringIO())
    assert not RevokedToken.objects.exists()
    assert not RevocationEvent.objects.exists()


def test_a_token_issued_elsewhere_is_revoked_when_the_operator_says_so():
    """A runauthority with a database of its own issued it: no row here records it."""
    out = io.StringIO()
    call_command("tokens", "revoke", "jti-elsewhere", "--issued-elsewhere", stdout=out)
    assert out.getvalue() == "revoked token jti-elsewhere\n"
    assert RevokedToken.objects.get().jti == "jti-elsewhere"
    for jti in ("", "x" * 65):  # still no empty jti, and none cut to 64 characters
        with pytest.raises(CommandError, match="nothing was revoked"):
            call_command("tokens", "revoke", jti, "--issued-elsewhere", stdout=io.StringIO())
    assert RevokedToken.objects.count() == 1


def test_the_admin_revokes_what_is_left_when_a_selected_token_was_pruned(admin_client, user_key):
    kept, pruned = issued("jti-kept", user_key), issued("jti-pruned", user_key)
    changelist = "/admin/challenges/issuedtoken/"
    selected = [kept.pk, pruned.pk]
    real_revoke = revocation.revoke_token

    def pruned_meanwhile(**kwargs):  # pruneaudit deletes it between the page and the action
        if kwargs["jti"] == "jti-pruned":
            IssuedToken.objects.filter(jti="jti-pruned").delete()
        return real_revoke(**kwargs)

    with mock.patch("challenges.admin.revoke_token", pruned_meanwhile):
        response = admin_client.post(
            changelist, {"action": "revoke_tokens", "_selected_action": selected}, follow=True
        )
    assert response.status_code == 200
    assert "Revoked 1 token(s); 0 were revoked already; 1 were pruned meanwhile" in response.content.decode()
    assert list(RevokedToken.objects.values_list("jti", flat=True)) == ["jti-kept"]


def test_admin_actions_revoke_and_block_and_name_the_operator(
    admin_client, admin_user, authority_signer, user_key
):
    minted = mint_token(signer=authority_signer, subject=user_key.public, ttl=60)
    attempt = ChallengeAttempt.objects.create(
        created_at=timezone.now(),
        finished_at=timezone.now(),
        outcome="success",
        public_key=str(user_key.public),
    )
    token = IssuedToken.objects.create(
        attempt=attempt, jti=minted.jti, token_sha256=minted.sha256, public_key=str(user_key.public),
        issued_at=timezone.now(), expires_at=minted.expires_at,
    )  # fmt: skip
    changelist = "/admin/challenges/issuedtoken/"
    admin_client.post(changelist, {"action": "revoke_tokens", "_selected_action": [token.pk]})
    admin_client.post(changelist, {"action": "block_keys", "_selected_action": [token.pk]})
    assert RevokedToken.objects.get().jti == minted.jti
    assert BlockedKey.objects.get().public_key == str(user_key.public)
    actors = set(RevocationEvent.objects.values_list("actor", flat=True))
    assert actors == {f"admin:{admin_user.get_username()}"}
    blocked = BlockedKey.objects.get()
    admin_client.post(
        "/admin/challenges/blockedkey/", {"action": "unblock", "_selected_action": [blocked.pk]}
    )
    assert not BlockedKey.objects.exists()


def test_pruneaudit_deletes_old_rows_in_batches_but_never_a_live_tokens(authority_signer, user_key):
    now = timezone.now()
    old = now - timedelta(days=40)

    def row(outcome: str, *, expires: object = None, with_token: bool = False) -> ChallengeAttempt:
        attempt = ChallengeAttempt.objects.create(created_at=old, finished_at=old, outcome=outcome)
        if with_token:
            minted = mint_token(signer=authority_signer, subject=user_key.public, ttl=60)
            IssuedToken.objects.create(
                attempt=attempt, jti=minted.jti, token_sha256=minted.sha256, public_key=str(user_key.public),
                issued_at=old, expires_at=expires,
            )  # fmt: skip
        return attempt

    for _ in range(25):
        row("invalid_json")
    dead = row("success", expires=old + timedelta(days=1), with_token=True)
    live = row("success", expires=now + timedelta(days=1), with_token=True)
    forever = row("success", expires=None, with_token=True)  # a relayed Hub token has no expiry
    recent = ChallengeAttempt.objects.create(created_at=now, finished_at=now, outcome="invalid_json")
    out, err = io.StringIO(), io.StringIO()
    call_command("pruneaudit", "--older-than", "30", "--batch-size", "10", stdout=out, stderr=err)
    assert out.getvalue().strip().startswith("deleted 26 audit rows")
    assert "100%" in err.getvalue()
    assert "26/26" in err.getvalue()
    left = set(ChallengeAttempt.objects.values_list("id", flat=True))
    assert left == {live.id, forever.id, recent.id}
    assert not IssuedToken.objects.filter(attempt_id=dead.id).exists()


async def test_stopping_the_blocklist_lets_a_reload_in_progress_finish_first():
    """Cancelled mid-query, a reload's thread would go on with its query and its connection
    after the stop returned; past the stop's timeout it is cancelled all the same."""
    versions = iter(range(1, 1000))
    loads: list[str] = []
    in_progress, release = asyncio.Event(), asyncio.Event()

    async def version() -> int:
        return next(versions)

    async def load() -> frozenset[str]:
        loads.append("started")
        if len(loads) == 2:  # the poller's first reload: held until released
            in_progress.set()
            await release.wait()
        return frozenset({f"key{len(loads)}"})

    blocklist = Blocklist(version=version, load=load, every=0.001)
    await blocklist.start()
    await asyncio.wait_for(in_progress.wait(), 5)
    stopping = asyncio.create_task(blocklist.stop())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 5)
    assert "key2" in blocklist
    assert len(loads) == 2  # nothing after the stop

    stuck_in_load = asyncio.Event()

    async def never() -> frozenset[str]:
        stuck_in_load.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    stuck = Blocklist(version=version, load=never, every=0.001)
    stuck._task = asyncio.create_task(stuck._run())
    task = stuck._task
    await asyncio.wait_for(stuck_in_load.wait(), 5)
    await asyncio.wait_for(stuck.stop(timeout=0.05), 5)
    assert task.cancelled()
