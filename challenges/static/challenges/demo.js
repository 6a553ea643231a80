// The demo page at "/": one identity per browser, one token exchange shown step by step.
import { Ed25519Identity, getToken } from "./token-client.js";

const STORAGE_KEY = "token-provider.identity";
const $ = (id) => document.getElementById(id);
const app = $("app");
const challengeTimeout = Number(app.dataset.challengeTimeout) || 60;

let identity = null;
let countdown = null;
let running = false;

// -- identity -------------------------------------------------------------------

async function loadIdentity() {
  const stored = localStorage.getItem(STORAGE_KEY);
  if (stored) {
    try {
      return { identity: await Ed25519Identity.fromString(stored), origin: "loaded" };
    } catch (error) {
      console.warn("the stored identity is unreadable; making a new one", error);
    }
  }
  return newIdentity();
}

async function newIdentity() {
  const fresh = await Ed25519Identity.generate();
  localStorage.setItem(STORAGE_KEY, fresh.toString());
  return { identity: fresh, origin: "new" };
}

function showIdentity(loaded) {
  identity = loaded.identity;
  $("public-key").textContent = identity.public.toString();
  const badge = $("identity-origin");
  badge.textContent = loaded.origin === "new" ? "new in this browser" : "loaded from this browser";
  badge.dataset.state = loaded.origin;
  setBusy(false);
}

// -- the exchange ------------------------------------------------------------------

function setBusy(busy) {
  running = busy;
  for (const id of ["get-token", "forget", "try-no-answer", "try-bad-key"]) $(id).disabled = busy || !identity;
}

function setStatus(state, label) {
  const badge = $("flow-status");
  badge.dataset.state = state;
  badge.textContent = label;
}

function resetFlow() {
  clearInterval(countdown);
  countdown = null;
  for (const li of document.querySelectorAll("#steps li")) li.removeAttribute("data-state");
  for (const el of document.querySelectorAll("#steps .when")) el.textContent = "";
  for (const id of ["challenge-text", "token", "copy-token", "error", "token-panel"]) $(id).hidden = true;
  $("signature").textContent = "The 64-byte Ed25519 signature goes back with the challenge id.";
  $("step-connected").innerHTML = 'Opens <code>/ws/token</code> and sends <code>{"type":"token","pub":…}</code>.';
}

function markStep(step, state, started) {
  const li = document.querySelector(`#steps li[data-step="${step}"]`);
  li.dataset.state = state;
  if (started !== undefined) li.querySelector(".when").textContent = `+${Math.round(performance.now() - started)} ms`;
  const next = li.nextElementSibling;
  if (state === "done" && next) next.dataset.state = "active";
}

function showChallenge(event, pub) {
  const pre = $("challenge-text");
  pre.replaceChildren();
  const lines = event.text === null ? [`(raw ${event.bytes.length}-byte challenge)`] : event.text.split("\n");
  lines.forEach((line, i) => {
    const span = document.createElement("span");
    span.textContent = line;
    const ok = line === `audience: ${location.origin}` || line === `key: ${pub}`;
    if (!event.refused && ok) span.className = "checked";
    pre.append(...(i ? ["\n", span] : [span]));
  });
  pre.hidden = false;
}

function hex(bytes, limit = 12) {
  const shown = Array.from(bytes.slice(0, limit), (b) => b.toString(16).padStart(2, "0")).join("");
  return bytes.length > limit ? `${shown}…` : shown;
}

async function run(signer) {
  if (running) return;
  resetFlow();
  setBusy(true);
  setStatus("working", "working…");
  const started = performance.now();
  let current = "connected";
  document.querySelector('#steps li[data-step="connected"]').dataset.state = "active";
  const pub = String(signer.public);
  try {
    const token = await getToken({
      identity: signer,
      timeoutMs: (challengeTimeout + 15) * 1000,
      onProgress(event) {
        if (event.step === "connected") {
          $("step-connected").textContent = `${event.url}, sent the public key.`;
        } else if (event.step === "challenge") {
          showChallenge(event, pub);
          if (!event.refused) $("signature").textContent = "Waiting for the identity to sign…";
        } else if (event.step === "signed") {
          $("signature").textContent = `signature ${hex(event.signature)} (64 bytes), sent with the challenge id.`;
        } else if (event.step === "token") {
          $("token").textContent = event.token;
          $("token").hidden = $("copy-token").hidden = false;
        }
        if (!event.refused) markStep(event.step, "done", started);
        current = document.querySelector('#steps li[data-state="active"]')?.dataset.step ?? current;
      },
    });
    await showToken(token);
  } catch (error) {
    markStep(current, "failed", started);
    $("error-code").textContent = error.code ?? "error";
    $("error-message").textContent = error.message;
    $("error").hidden = false;
    setStatus("error", "failed");
  } finally {
    setBusy(false);
  }
}

// -- the token ------------------------------------------------------------------------

function decodeSegment(segment) {
  const b64 = segment.replace(/-/g, "+").replace(/_/g, "/");
  const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

async function showToken(token) {
  const [header, claims] = token.split(".").slice(0, 2).map(decodeSegment);
  $("jwt-header").textContent = JSON.stringify(header, null, 2);
  $("jwt-claims").textContent = JSON.stringify(claims, null, 2);
  showClaimFacts(claims);
  $("token-panel").hidden = false;
  startCountdown(claims.exp);
  $("verify-again").onclick = () => verify(token);
  await verify(token);
}

function showClaimFacts(claims) {
  const when = (t) => (typeof t === "number" ? new Date(t * 1000).toISOString().replace(".000Z", "Z") : "—");
  const mine = claims.sub === identity.public.toString();
  const rows = [
    ["Issued", when(claims.iat)],
    ["Expires", typeof claims.exp === "number" ? when(claims.exp) : "never"],
    ["Subject", mine ? "your public key ✓" : "another key ✗", mine ? "yes" : "no"],
    ["Issuer", claims.iss],
  ];
  $("claim-facts").replaceChildren(
    ...rows.flatMap(([name, value, cls]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = value;
      if (name === "Issuer") dd.innerHTML = `<code class="key"></code>`;
      if (name === "Issuer") dd.firstChild.textContent = value;
      if (cls) dd.className = cls;
      return [dt, dd];
    }),
  );
}

function startCountdown(exp) {
  const badge = $("expiry");
  const tick = () => {
    if (typeof exp !== "number") {
      badge.textContent = "never expires";
      return;
    }
    const left = Math.round(exp - Date.now() / 1000);
    badge.title = `expires ${new Date(exp * 1000).toISOString()}`;
    badge.dataset.state = left > 0 ? "valid" : "expired";
    badge.textContent = left > 0 ? `expires in ${duration(left)}` : "expired";
  };
  tick();
  countdown = setInterval(tick, 1000);
}

function duration(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return [h && `${h} h`, (h || m) && `${String(m).padStart(h ? 2 : 1, "0")} min`, `${String(s).padStart(2, "0")} s`]
    .filter(Boolean)
    .join(" ");
}

async function verify(token) {
  const verdict = $("verdict");
  verdict.textContent = "checking…";
  try {
    const response = await fetch("/api/token/verify", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token }),
    });
    const body = await response.json();
    verdict.textContent = JSON.stringify(body, null, 2);
    verdict.dataset.active = String(body.active === true);
    if (body.active === true) setStatus("verified", "token verified");
    else setStatus("rejected", `rejected: ${body.code}`);
  } catch (error) {
    verdict.textContent = `could not ask the server: ${error.message}`;
    setStatus("error", "verify failed");
  }
}

// -- wiring ----------------------------------------------------------------------------

$("page-origin").textContent = location.origin;
$("get-token").addEventListener("click", () => run(identity));
$("forget").addEventListener("click", async () => {
  localStorage.removeItem(STORAGE_KEY);
  resetFlow();
  setStatus("idle", "idle");
  showIdentity(await newIdentity());
});
// Failures on purpose: an identity that never signs (the server's challenge
// timeout answers), and one whose public key string is junk (the server's key
// check answers).
$("try-no-answer").addEventListener("click", () =>
  run({ public: identity.public, sign: () => new Promise(() => {}) }),
);
$("try-bad-key").addEventListener("click", () =>
  run({ public: { toString: () => "bbaarei-not-a-key" }, sign: (bytes) => identity.sign(bytes) }),
);
for (const button of document.querySelectorAll("[data-copy]")) {
  button.addEventListener("click", async () => {
    await navigator.clipboard?.writeText($(button.dataset.copy).textContent);
    button.textContent = "copied";
    setTimeout(() => (button.textContent = button.dataset.copy === "token" ? "copy token" : "copy"), 1200);
  });
}

loadIdentity().then(showIdentity, (error) => {
  $("identity-origin").textContent = "unavailable";
  $("error-code").textContent = error.code ?? "error";
  $("error-message").textContent = error.message;
  $("error").hidden = false;
  setStatus("error", "no identity");
});
