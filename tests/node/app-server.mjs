// The app server of the Textile tutorial ("token provider using getTokenChallenge"), moved off
// the hosted Hub by its one-line change: Client.withKeyInfo(keyInfo, <this service>).
//
//   USER_API_KEY=... USER_API_SECRET=... node app-server.mjs <service url>
//
// It serves a page at / that imports the provider's browser module (token-client.js) and gets
// a token over the tutorial's socket at /ws/userauth:
//   browser {"type":"token","pub":...}
//   app     {"type":"challenge","value":<Buffer JSON>}    (the Hub's 32 raw bytes, relayed)
//   browser {"type":"challenge","sig":<Buffer JSON>}
//   app     {"type":"token","value":...}                  or {"type":"error","value":...}
// Prints {"port": N} once listening.
import http from "node:http";
import hub from "@textile/hub";
import { WebSocketServer } from "ws";

const { Client } = hub;
const [service] = process.argv.slice(2);
const keyInfo = { key: process.env.USER_API_KEY, secret: process.env.USER_API_SECRET };

function page(port) {
  return `<!doctype html>
<meta charset="utf-8">
<title>tutorial app</title>
<p id="status">getting a token</p>
<script type="module">
  import { getToken, Ed25519Identity } from "${service}/static/challenges/token-client.js";
  const steps = [];
  window.tokenResult = (async () => {
    const identity = await Ed25519Identity.generate();
    const pub = identity.public.toString();
    try {
      const token = await getToken({
        url: "ws://127.0.0.1:${port}/ws/userauth",
        identity,
        acceptRawChallenge: true, // the Hub's challenge is 32 random bytes
        onProgress: (event) => steps.push({ step: event.step, bytes: event.bytes?.length, raw: event.raw }),
      });
      document.getElementById("status").textContent = "token received";
      return { ok: true, pub, token, steps };
    } catch (error) {
      document.getElementById("status").textContent = error.message;
      return { ok: false, pub, code: error.code, message: error.message, steps };
    }
  })();
</script>
`;
}

const server = http.createServer((req, res) => {
  if (req.url !== "/") {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page(server.address().port));
});

// The tutorial's handler, as it was written for the hosted Hub but for the service's address.
const wss = new WebSocketServer({ server, path: "/ws/userauth" });
wss.on("connection", (ws) => {
  ws.on("message", async (msg) => {
    try {
      const data = JSON.parse(msg);
      switch (data.type) {
        case "token": {
          if (!data.pub) throw new Error("missing pubkey");
          const client = await Client.withKeyInfo(keyInfo, service);
          const token = await client.getTokenChallenge(data.pub, (challenge) => {
            return new Promise((resolve, reject) => {
              ws.send(JSON.stringify({ type: "challenge", value: Buffer.from(challenge).toJSON() }));
              const answer = (msg1) => {
                const data1 = JSON.parse(msg1);
                if (data1.type === "challenge") {
                  ws.off("message", answer);
                  resolve(new Uint8Array(Buffer.from(data1.sig)));
                }
              };
              ws.on("message", answer);
              setTimeout(() => reject(new Error("took too long")), 30_000);
            });
          });
          ws.send(JSON.stringify({ type: "token", value: token }));
          break;
        }
      }
    } catch (error) {
      ws.send(JSON.stringify({ type: "error", value: error.message }));
    }
  });
});

server.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ port: server.address().port })));
