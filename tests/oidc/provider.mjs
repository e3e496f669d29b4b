// A real OpenID Connect provider (the npm package oidc-provider) for the login tests, on
// loopback only. Usage: node provider.mjs CONFIG.json
//
// CONFIG: {"client_id", "client_secret", "redirect_uris": [...], "accounts": {LOGIN: {...}}},
// each account {"sub", "email", "email_verified", "name", "preferred_username", "amr", "acr"}.
// Listens on 127.0.0.1 on a port of the system's choosing and prints one JSON line
// {"issuer": "http://127.0.0.1:PORT"} once it answers. Its login page is a one-field form
// (#login, #submit) naming the account; the account's amr/acr say how it "authenticated", so
// the ID token carries them exactly as a real provider's would. Consent is implied (a
// first-party provider), so the browser comes straight back to the client.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;
const bySub = Object.fromEntries(Object.values(accounts).map((a) => [a.sub, a]));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key-1', use: 'sig', alg: 'RS256' };

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: config.client_id,
        client_secret: config.client_secret,
        redirect_uris: config.redirect_uris,
        response_types: ['code'],
        grant_types: ['authorization_code'],
        token_endpoint_auth_method: 'client_secret_post',
      },
    ],
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    acrValues: ['urn:sde:loa:1', 'urn:sde:loa:2'],
    // How the person authenticated travels with the openid scope, i.e. in every ID token.
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
    },
    // The ID token carries the scopes' claims too (the hub reads only the signed ID token).
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      const account = bySub[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          const { amr, acr, ...claims } = account;
          return claims;
        },
      };
    },
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
  });
  const callback = provider.callback();

  const page = (res, uid, error) => {
    res.writeHead(error ? 400 : 200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><title>Test identity provider</title>
<h1>Test identity provider</h1>${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Account <input id="login" name="login" autofocus></label>
<button id="submit" type="submit">Sign in</button></form>`);
  };

  server.on('request', async (req, res) => {
    const m = req.url.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (!m) return callback(req, res);
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.prompt.name !== 'login') {
        return await provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
      }
      if (req.method !== 'POST') return page(res, details.uid);
      let body = '';
      for await (const chunk of req) body += chunk;
      const login = new URLSearchParams(body).get('login') || '';
      const account = accounts[login];
      if (!account) return page(res, details.uid, `no such account: ${login}`);
      const result = { login: { accountId: account.sub, amr: account.amr, acr: account.acr } };
      return await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
    } catch (err) {
      res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(String(err));
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
