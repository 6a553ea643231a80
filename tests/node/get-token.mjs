// Runs the browser module under Node with a real @textile/crypto PrivateKey:
//   node get-token.mjs <client module path> <ws url> <audience> [private key string]
// Prints one JSON line: {"pub": ..., "token": ...} or {"error": ..., "code": ...}.
import { PrivateKey } from "@textile/crypto";
import WebSocket from "ws";

const [modulePath, url, audience, privateKey] = process.argv.slice(2);
const { getToken } = await import(modulePath);
const identity = privateKey ? PrivateKey.fromString(privateKey) : PrivateKey.fromRandom();
try {
  const token = await getToken({ url, identity, audience, timeoutMs: 10000, WebSocket });
  console.log(JSON.stringify({ pub: identity.public.toString(), token }));
} catch (error) {
  console.log(JSON.stringify({ pub: identity.public.toString(), error: String(error.message), code: error.code }));
  process.exitCode = 1;
}
