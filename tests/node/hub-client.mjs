// What an app server built on the Textile tutorial does, pointed at this service: the real
// @textile/hub client, Client.withKeyInfo({key, secret}, <service>) then
// client.getTokenChallenge(publicKey, callback), with a @textile/crypto identity.
//
//   node hub-client.mjs <scenario> <service url> <api key> <api secret> [count]
//
// Scenarios: token, wrong-signature, no-key, expired-signature, callback-throws, unanswered,
// concurrent (count calls at once, a client each, as apps make one per request).
// Prints one JSON line: {pub, token, ms} or {pub, error, ms}; concurrent prints
// {tokens: [{pub, token}], errors: [...], seconds}.
import hub from "@textile/hub";
import { PrivateKey } from "@textile/crypto";

const { Client, createAPISig } = hub;
const [scenario, service, key, secret, count = "50"] = process.argv.slice(2);

function done(result) {
  console.log(JSON.stringify(result));
  process.exit(0); // an unanswered callback's promise is still pending: do not wait for it
}
process.on("unhandledRejection", (error) => done({ error: `unhandled rejection: ${error?.message ?? error}` }));

async function getToken(identity, { keyInfo = { key, secret }, sign = (c) => identity.sign(c), setup } = {}) {
  const client = await Client.withKeyInfo(keyInfo, service);
  if (setup) await setup(client);
  return client.getTokenChallenge(identity.public.toString(), sign);
}

async function one(options = {}) {
  const identity = PrivateKey.fromRandom();
  const pub = identity.public.toString();
  const started = Date.now();
  try {
    const token = await getToken(identity, options);
    return { pub, token, ms: Date.now() - started };
  } catch (error) {
    return { pub, error: String(error?.message ?? error), ms: Date.now() - started };
  }
}

const other = PrivateKey.fromRandom();
const scenarios = {
  token: () => one(),
  "wrong-signature": () => one({ sign: (challenge) => other.sign(challenge) }),
  // An app whose USER_API_KEY / USER_API_SECRET are unset: the client sends no key at all.
  "no-key": () => one({ keyInfo: { key: undefined, secret: undefined } }),
  // The client refuses to send a signature message dated in the past (its Context throws and
  // no socket opens), so the expired one is put in the call's metadata directly.
  "expired-signature": () =>
    one({
      setup: async (client) => {
        const past = await createAPISig(secret, new Date(Date.now() - 60_000));
        client.context.toMetadata = async () => ({
          "x-textile-api-key": key,
          "x-textile-api-sig-msg": past.msg,
          "x-textile-api-sig": past.sig,
        });
      },
    }),
  "callback-throws": () =>
    one({
      sign: async () => {
        throw new Error("the user declined to sign");
      },
    }),
  unanswered: () => one({ sign: () => new Promise(() => {}) }),
  concurrent: async () => {
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: Number(count) }, () => one()));
    return {
      tokens: results.filter((r) => r.token).map(({ pub, token }) => ({ pub, token })),
      errors: results.filter((r) => !r.token).map((r) => r.error),
      seconds: (Date.now() - started) / 1000,
    };
  },
};

if (!(scenario in scenarios)) done({ error: `unknown scenario ${scenario}` });
done(await scenarios[scenario]());
