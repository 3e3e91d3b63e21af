// A real OpenID Connect provider (panva's oidc-provider 9) on loopback, for the tests.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG.json: {"port", "issuer", "clients": [{"client_id", "client_secret",
// "redirect_uris", "grant_types", "roles"?, any other client metadata}], "accounts":
// [{"sub", "username"?, "email"?, "name"?, "roles"}], "jwks": {"keys": [private JWK]},
// "audience", "access_token_ttl_s", "roles_claim", "resource"?}. It prints
// "READY <issuer>" on stdout once it listens, and exits on SIGTERM or SIGINT.
//
// How it behaves:
// - Authorization code flow, PKCE with S256 required for every client; the
//   client authenticates at the token endpoint with client_secret_basic unless its
//   entry names another token_endpoint_auth_method.
// - Scopes: openid, profile, email, roles, offline_access. The roles claim (named by
//   roles_claim) and preferred_username come with "openid" alone, in the ID token and
//   at userinfo: no scope has to be asked for them. The ID token carries every
//   granted claim (conformIdTokenClaims off), since the access token below is not
//   accepted by the userinfo endpoint.
// - Access tokens are JWTs (typ at+jwt, RS256, the jwks key) for one resource
//   server whose aud is "audience", with sub and the roles claim. That resource is
//   the default: a client sends no "resource" parameter (oidc-provider only takes an
//   absolute URI there; it is "resource" from the config, else "urn:<audience>").
//   Carrying an aud, these tokens are refused by the userinfo endpoint.
// - client_credentials: a JWT access token, aud "audience", sub = client_id, the
//   client's "roles" in the roles claim.
// - Sign-in: GET /interaction/<uid> is a form with fields "login" (the account's
//   username or sub) and "password", which must be the literal "password"; consent
//   is never asked (these clients are first party: every requested scope is granted).

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';

const PASSWORD = 'password';
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const rolesClaim = config.roles_claim || 'roles';
const ttl = config.access_token_ttl_s || 600;
const resource = config.resource
  || (URL.canParse(config.audience) ? config.audience : `urn:${config.audience}`);
const accounts = config.accounts || [];
const clientRoles = Object.fromEntries((config.clients || [])
  .map((client) => [client.client_id, client.roles || []]));

const findBySub = (sub) => accounts.find((account) => account.sub === sub);
const findByLogin = (login) => accounts.find(
  (account) => account.username === login || account.sub === login,
);

function accountClaims(account) {
  return {
    sub: account.sub,
    preferred_username: account.username || account.sub,
    name: account.name || account.username || account.sub,
    email: account.email,
    email_verified: account.email ? true : undefined,
    [rolesClaim]: account.roles || [],
  };
}

// A client without a redirecting grant (client_credentials alone) has no response_types.
function clientMetadata({ roles, ...metadata }) {
  const grants = metadata.grant_types || ['authorization_code'];
  const redirects = grants.includes('authorization_code') || grants.includes('implicit');
  return { response_types: redirects ? ['code'] : [], redirect_uris: [], ...metadata };
}

// Every scope and claim that this request asks for, granted without a consent page.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant) {
    grant = new oidc.provider.Grant({
      accountId: oidc.session.accountId, clientId: oidc.client.clientId,
    });
  }
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  grant.addOIDCClaims([...oidc.requestParamClaims]);
  for (const [indicator, server] of Object.entries(oidc.resourceServers)) {
    grant.addResourceScope(indicator, server.scope);
  }
  await grant.save();
  return grant;
}

async function extraTokenClaims(ctx, token) {
  if (token.kind === 'ClientCredentials') {
    return { [rolesClaim]: clientRoles[token.clientId] || [] };
  }
  const account = token.accountId && findBySub(token.accountId);
  return account ? { [rolesClaim]: account.roles || [] } : undefined;
}

const provider = new Provider(config.issuer, {
  clients: (config.clients || []).map(clientMetadata),
  jwks: config.jwks,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub', 'preferred_username', rolesClaim],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    roles: [rolesClaim],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'roles'],
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: {
    AccessToken: ttl, ClientCredentials: ttl, IdToken: ttl, Interaction: 3600, Session: 86400,
    Grant: 86400,
  },
  async findAccount(ctx, sub) {
    const account = findBySub(sub);
    return account && { accountId: account.sub, claims: () => accountClaims(account) };
  },
  loadExistingGrant,
  extraTokenClaims,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, indicator) {
        if (indicator !== resource) throw new errors.InvalidTarget();
        return {
          scope: 'api',
          audience: config.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, message) {
  const error = message ? `<p class="error" role="alert">${escapeHtml(message)}</p>` : '';
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Sign-in</title></head><body><h1>Sign-in</h1>${error}
<form method="post" action="/interaction/${escapeHtml(uid)}" autocomplete="off">
<label>Username <input name="login" required autofocus></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign-in</button></form></body></html>`;
}

async function formBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return new URLSearchParams(text);
}

async function interaction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.prompt.name !== 'login') {
    // A consent prompt (loadExistingGrant grants all first, so rare) is answered yes.
    const grant = await consentGrant(details);
    const result = { consent: { grantId: await grant.save() } };
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
    return;
  }
  if (ctx.method === 'POST') {
    const form = await formBody(ctx.req);
    const account = findByLogin(form.get('login') || '');
    if (account && form.get('password') === PASSWORD) {
      const result = { login: { accountId: account.sub } };
      await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
      return;
    }
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginPage(details.uid, 'Unknown user or wrong password.');
    return;
  }
  ctx.type = 'html';
  ctx.body = loginPage(details.uid);
}

async function consentGrant({ grantId, session, params, prompt: { details } }) {
  const grant = (grantId && await provider.Grant.find(grantId))
    || new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant;
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/favicon.ico') {
    ctx.status = 204; // a browser on the sign-in page asks for one
    return undefined;
  }
  if (!/^\/interaction\/[^/]+$/.test(ctx.path) || !['GET', 'POST'].includes(ctx.method)) {
    return next();
  }
  ctx.set('Cache-Control', 'no-store');
  return interaction(ctx);
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`READY ${config.issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
