// token-client.js: get an API token from the token provider over WebSocket.
//
// An ES module with no build step and no dependency. It speaks the protocol of
// docs/PROTOCOL.md (the Textile "getTokenChallenge" tutorial) and checks,
// before signing, that the challenge text names this app and this key, so a
// signature made here is useless anywhere else.
//
//   import { getToken, Ed25519Identity } from "/static/challenges/token-client.js";
//   const identity = await Ed25519Identity.generate();
//   const token = await getToken({ identity });
//
// Every rejection is an Error with a stable `code`: the server's code
// (`bad_signature`, `challenge_timeout`, `invalid_pub`, ...) or one of the
// client's own (CLIENT_ERROR_CODES below).

export const CHALLENGE_VERSION = "textile-token-challenge/v1";
export const CHALLENGE_PURPOSE = "api-token";
const CHALLENGE_FIELDS = ["purpose", "audience", "key", "nonce", "issued", "expires"];
const RAW_CHALLENGE_BYTES = 32;
const SIGNATURE_BYTES = 64;

/** Codes the client itself rejects with (the server's codes pass through unchanged). */
export const CLIENT_ERROR_CODES = Object.freeze({
  invalid_argument: "getToken was called without a usable url, identity or audience",
  aborted: "the caller's AbortSignal fired",
  timeout: "no token arrived within timeoutMs",
  connection_closed: "the socket closed (or never opened) before a token arrived",
  bad_frame: "the server sent a frame this client cannot read",
  challenge_refused: "the challenge does not name this audience and key, so it was not signed",
  sign_failed: "identity.sign threw, or did not return 64 bytes",
  server_error: "the server sent an error frame without a code",
  unsupported: "this browser lacks WebCrypto Ed25519 or a secure context",
});

/** An Error with a stable machine-readable `code`. */
export class TokenError extends Error {
  constructor(code, message, options) {
    super(message, options);
    this.name = "TokenError";
    this.code = code;
  }
}

// -- getToken -----------------------------------------------------------------

/**
 * Get a token for `identity`: resolves to the token string, or rejects once
 * with a TokenError. The socket is closed and every timer cleared on every
 * way out (token, error frame, timeout, abort, socket close).
 *
 * @param {object} options
 * @param {string} [options.url] ws(s):// endpoint; default: /ws/token on the page's host
 * @param {{public: {toString(): string}, sign(bytes: Uint8Array): Uint8Array|Promise<Uint8Array>}} options.identity
 * @param {string} [options.audience] the origin the challenge must name; default: the page's origin
 * @param {number} [options.timeoutMs=30000] for the whole exchange, signing included
 * @param {AbortSignal} [options.signal]
 * @param {boolean} [options.acceptRawChallenge=false] sign a bare 32-byte challenge (a Hub relay)
 * @param {(event: object) => void} [options.onProgress] called with {step: "connected" | "challenge" | "signed" | "token", ...}
 * @param {typeof WebSocket} [options.WebSocket] a WebSocket class (e.g. the `ws` package in old Node)
 * @returns {Promise<string>}
 */
export function getToken(options = {}) {
  const {
    identity,
    timeoutMs = 30_000,
    signal,
    acceptRawChallenge = false,
    onProgress = () => {},
    WebSocket: Socket = globalThis.WebSocket,
  } = options;
  let url;
  let audience;
  let pub;
  try {
    url = options.url ?? defaultUrl();
    audience = options.audience ?? defaultAudience(url);
    pub = publicKeyString(identity);
    if (typeof identity.sign !== "function") throw new TypeError("identity.sign is not a function");
    if (typeof Socket !== "function") throw new TypeError("no WebSocket class is available");
  } catch (error) {
    return Promise.reject(new TokenError("invalid_argument", error.message, { cause: error }));
  }
  if (signal?.aborted) {
    return Promise.reject(new TokenError("aborted", "the request was aborted", { cause: signal.reason }));
  }

  return new Promise((resolve, reject) => {
    let settled = false;
    let socket = null;
    const timer = setTimeout(
      () => fail("timeout", `no token within ${timeoutMs} ms`),
      timeoutMs,
    );
    const onAbort = () => fail("aborted", "the request was aborted", signal.reason);
    signal?.addEventListener("abort", onAbort, { once: true });

    function settle() {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (socket) {
        socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
        if (socket.readyState === 0 || socket.readyState === 1) socket.close(1000);
      }
    }
    function fail(code, message, cause) {
      if (settled) return;
      settle();
      reject(new TokenError(code, message, cause === undefined ? undefined : { cause }));
    }
    function succeed(token) {
      if (settled) return;
      settle();
      resolve(token);
    }
    function report(event) {
      try {
        onProgress(event);
      } catch (error) {
        // A broken progress callback must not wedge the flow.
        console.error("token-client: onProgress threw", error);
      }
    }
    function send(frame) {
      socket.send(JSON.stringify(frame));
    }

    async function answer(frame) {
      let bytes;
      try {
        bytes = decodeBuffer(frame.value);
      } catch (error) {
        return fail("bad_frame", `the challenge is not Buffer JSON: ${error.message}`);
      }
      let text;
      try {
        text = checkChallenge(bytes, { raw: frame.raw, audience, key: pub, acceptRawChallenge });
      } catch (error) {
        const shown = new TextDecoder().decode(bytes);
        report({ step: "challenge", bytes, text: shown, id: frame.id, expiresAt: frame.expires_at, refused: true });
        return fail("challenge_refused", error.message);
      }
      report({ step: "challenge", bytes, text, id: frame.id, expiresAt: frame.expires_at, raw: text === null });
      let sig;
      try {
        sig = toBytes(await identity.sign(bytes.slice()));
      } catch (error) {
        return fail("sign_failed", `identity.sign failed: ${error?.message ?? error}`, error);
      }
      if (settled) return; // timed out or aborted while the user was signing
      if (sig.length !== SIGNATURE_BYTES) {
        return fail("sign_failed", `identity.sign returned ${sig.length} bytes, not ${SIGNATURE_BYTES}`);
      }
      report({ step: "signed", signature: sig });
      const reply = { type: "challenge", sig: { type: "Buffer", data: Array.from(sig) } };
      if (typeof frame.id === "string") reply.id = frame.id;
      send(reply);
    }

    try {
      socket = new Socket(url);
    } catch (error) {
      return fail("invalid_argument", `cannot open ${url}: ${error.message}`, error);
    }
    socket.onopen = () => {
      report({ step: "connected", url });
      send({ type: "token", pub });
    };
    socket.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return fail("bad_frame", "the server sent a frame that is not JSON");
      }
      switch (frame?.type) {
        case "challenge":
          answer(frame).catch((error) => fail("sign_failed", String(error?.message ?? error), error));
          return;
        case "token":
          if (typeof frame.value !== "string" || !frame.value) {
            return fail("bad_frame", "the token frame has no token");
          }
          report({ step: "token", token: frame.value });
          return succeed(frame.value);
        case "error":
          return fail(
            typeof frame.code === "string" && frame.code ? frame.code : "server_error",
            typeof frame.value === "string" && frame.value ? frame.value : "the server reported an error",
          );
        default:
          return fail("bad_frame", `unexpected frame type ${JSON.stringify(frame?.type)}`);
      }
    };
    // A failed connection fires "error" then "close": report it once, from close.
    socket.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : "";
      fail("connection_closed", `the connection closed before a token arrived (code ${event.code}${why})`);
    };
  });
}

function defaultUrl() {
  const location = globalThis.location;
  if (!location?.host) throw new TypeError("pass `url` (there is no page location to derive it from)");
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/token`;
}

function defaultAudience(url) {
  const origin = globalThis.location?.origin;
  if (origin && origin !== "null") return origin;
  const parsed = new URL(url);
  return `${parsed.protocol === "wss:" ? "https" : "http"}://${parsed.host}`;
}

function publicKeyString(identity) {
  if (!identity || !identity.public) throw new TypeError("identity.public is missing");
  const pub = identity.public.toString();
  if (typeof pub !== "string" || !pub || pub === "[object Object]") {
    throw new TypeError("identity.public.toString() did not return a key string");
  }
  return pub;
}

// -- challenges ---------------------------------------------------------------

/**
 * Parse a v1 challenge text (the lines of authority.py). Throws TokenError
 * `challenge_refused` when the bytes are not one.
 * @returns {{purpose: string, audience: string, key: string, nonce: string, issued: string, expires: string, text: string}}
 */
export function parseChallengeText(bytes) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new TokenError("challenge_refused", "the challenge is not UTF-8 text");
  }
  const lines = text.split("\n");
  if (lines.length !== CHALLENGE_FIELDS.length + 1 || lines[0] !== CHALLENGE_VERSION) {
    throw new TokenError("challenge_refused", `the challenge is not a ${CHALLENGE_VERSION} text`);
  }
  const fields = { text };
  CHALLENGE_FIELDS.forEach((name, i) => {
    const line = lines[i + 1];
    if (!line.startsWith(`${name}: `)) {
      throw new TokenError("challenge_refused", `the challenge text lacks '${name}'`);
    }
    fields[name] = line.slice(name.length + 2);
  });
  return fields;
}

// Returns the challenge text, or null for an accepted raw challenge; throws otherwise.
function checkChallenge(bytes, { raw, audience, key, acceptRawChallenge }) {
  // A raw challenge is only ever 32 random bytes; a v1 text is always checked,
  // even when a server calls it raw (it may be relaying another site's challenge).
  if (bytes.length === RAW_CHALLENGE_BYTES && raw !== false) {
    if (acceptRawChallenge) return null;
    throw new TokenError(
      "challenge_refused",
      "the server sent a raw challenge; pass acceptRawChallenge: true to sign it",
    );
  }
  const fields = parseChallengeText(bytes);
  if (fields.purpose !== CHALLENGE_PURPOSE) {
    throw new TokenError("challenge_refused", `the challenge is for '${fields.purpose}', not an API token`);
  }
  if (fields.audience !== audience) {
    throw new TokenError(
      "challenge_refused",
      `the challenge names audience ${fields.audience}, expected ${audience}`,
    );
  }
  if (fields.key !== key) {
    throw new TokenError("challenge_refused", "the challenge names another public key");
  }
  return fields.text;
}

// -- bytes ----------------------------------------------------------------------

function decodeBuffer(value) {
  const data = value?.type === "Buffer" ? value.data : value;
  if (!Array.isArray(data)) throw new TypeError("expected {type: 'Buffer', data: [...]}");
  if (!data.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
    throw new TypeError("the data are not bytes");
  }
  return Uint8Array.from(data);
}

// Uint8Array (and Node's Buffer, a subclass), ArrayBuffer, typed-array views,
// plain arrays, or Buffer JSON.
function toBytes(value) {
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (value instanceof ArrayBuffer) return new Uint8Array(value.slice(0));
  if (ArrayBuffer.isView(value)) {
    return new Uint8Array(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
  }
  if (Array.isArray(value) || value?.type === "Buffer") return decodeBuffer(value);
  throw new TypeError("identity.sign must return a Uint8Array (or a Promise of one)");
}

const B32 = "abcdefghijklmnopqrstuvwxyz234567";

/** RFC 4648 base32, lower case, no padding. */
export function base32Encode(bytes) {
  let out = "";
  let bits = 0;
  let acc = 0;
  for (const byte of bytes) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += B32[(acc << (5 - bits)) & 31];
  return out;
}

/** Strict inverse of base32Encode: throws on any non-canonical input. */
export function base32Decode(text) {
  const out = [];
  let bits = 0;
  let acc = 0;
  for (const char of text) {
    const value = B32.indexOf(char);
    if (value < 0) throw new TypeError(`'${char}' is not lower-case base32`);
    acc = (acc << 5) | value;
    bits += 5;
    if (bits >= 8) {
      out.push((acc >>> (bits - 8)) & 255);
      bits -= 8;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits >= 5 || acc !== 0) throw new TypeError("not canonical base32 (length or trailing bits)");
  return Uint8Array.from(out);
}

// -- identities (docs/PROTOCOL.md, "Identities") -----------------------------------------

const PUBLIC_PREFIX = [0x08, 0x01, 0x12, 0x20];
const PRIVATE_PREFIX = [0x08, 0x01, 0x12, 0x40];
const PKCS8_PREFIX = hexToBytes("302e020100300506032b657004220420");

function hexToBytes(hex) {
  return Uint8Array.from(hex.match(/../g), (h) => parseInt(h, 16));
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function subtle() {
  const api = globalThis.crypto?.subtle;
  if (!api) {
    throw new TokenError(
      "unsupported",
      "WebCrypto is unavailable: serve the page over https (or from localhost)",
    );
  }
  return api;
}

async function webcrypto(what, promise) {
  try {
    return await promise;
  } catch (error) {
    if (error?.name === "NotSupportedError") {
      throw new TokenError("unsupported", "this browser's WebCrypto has no Ed25519", { cause: error });
    }
    throw new TokenError("invalid_argument", `${what}: ${error.message}`, { cause: error });
  }
}

function decodeKeyString(text, prefix, length, what) {
  if (typeof text !== "string" || text.length !== length || text[0] !== "b") {
    throw new TokenError("invalid_argument", `${what} must be a ${length}-character multibase base32 string`);
  }
  let data;
  try {
    data = base32Decode(text.slice(1));
  } catch (error) {
    throw new TokenError("invalid_argument", `${what} is not valid base32: ${error.message}`);
  }
  if (!equalBytes(data.subarray(0, 4), prefix)) {
    throw new TokenError("invalid_argument", `${what} is not an Ed25519 libp2p key`);
  }
  return data.subarray(4);
}

/** An Ed25519 public key: `toString()` is the 59-character key string. */
export class Ed25519PublicKey {
  constructor(bytes) {
    if (!(bytes instanceof Uint8Array) || bytes.length !== 32) {
      throw new TokenError("invalid_argument", "an Ed25519 public key is 32 bytes");
    }
    this.bytes = new Uint8Array(bytes);
    Object.freeze(this);
  }

  /** Parse a `bbaarei...` public key string. */
  static fromString(text) {
    return new Ed25519PublicKey(decodeKeyString(text, PUBLIC_PREFIX, 59, "the public key"));
  }

  toString() {
    return `b${base32Encode(concat(PUBLIC_PREFIX, this.bytes))}`;
  }

  async verify(message, signature) {
    const key = await webcrypto(
      "importing the public key",
      subtle().importKey("raw", this.bytes, { name: "Ed25519" }, false, ["verify"]),
    );
    return subtle().verify({ name: "Ed25519" }, key, toBytes(signature), toBytes(message));
  }
}

const SEED = new WeakMap(); // keeps the seed off the object's enumerable surface

/**
 * An Ed25519 identity with the shape of `@textile/crypto`'s PrivateKey:
 * `public.toString()`, `sign(bytes)` and `toString()` (the private key string).
 * Signing uses a non-extractable WebCrypto key.
 */
export class Ed25519Identity {
  constructor(seed, publicKey, signingKey) {
    SEED.set(this, new Uint8Array(seed));
    this.public = publicKey;
    this.signingKey = signingKey;
    Object.freeze(this);
  }

  /** A new random identity. */
  static async generate() {
    const pair = await webcrypto(
      "generating a key",
      subtle().generateKey({ name: "Ed25519" }, true, ["sign", "verify"]),
    );
    const pkcs8 = new Uint8Array(await subtle().exportKey("pkcs8", pair.privateKey));
    return Ed25519Identity.fromSeed(pkcs8.slice(-32));
  }

  /** From a 32-byte RFC 8032 seed. */
  static async fromSeed(seed) {
    if (!(seed instanceof Uint8Array) || seed.length !== 32) {
      throw new TokenError("invalid_argument", "an Ed25519 seed is 32 bytes");
    }
    const pkcs8 = concat(PKCS8_PREFIX, seed);
    const exportable = await webcrypto(
      "importing the seed",
      subtle().importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]),
    );
    const jwk = await subtle().exportKey("jwk", exportable);
    const pub = Uint8Array.from(atob(jwk.x.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    const signingKey = await subtle().importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
    return new Ed25519Identity(seed, new Ed25519PublicKey(pub), signingKey);
  }

  /** From the 110-character private key string of `@textile/crypto` (`bbaareq...`). */
  static async fromString(text) {
    const data = decodeKeyString(text, PRIVATE_PREFIX, 110, "the private key");
    const identity = await Ed25519Identity.fromSeed(data.slice(0, 32));
    if (!equalBytes(identity.public.bytes, data.subarray(32))) {
      throw new TokenError("invalid_argument", "the private key's public half does not match its seed");
    }
    return identity;
  }

  /** The detached 64-byte RFC 8032 signature of `message`. */
  async sign(message) {
    const sig = await subtle().sign({ name: "Ed25519" }, this.signingKey, toBytes(message));
    return new Uint8Array(sig);
  }

  /** The private key string: keep it secret (it is what `fromString` reads). */
  toString() {
    return `b${base32Encode(concat(PRIVATE_PREFIX, SEED.get(this), this.public.bytes))}`;
  }

  toJSON() {
    return { public: this.public.toString() }; // never serialise the seed by accident
  }
}
