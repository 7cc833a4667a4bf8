// Nobody gets an account for an email they cannot read: sign-ups and invitations mail their token
// to the address, never to the caller, and no account exists until the token is accepted.
//
// The takeover an audit found: Mallory signs up (or invites, then accepts herself) cfo@beta.test
// with a password she chose; later Beta's owner invites cfo@beta.test, and the real CFO is locked
// out of the account Mallory holds. Played out here in both ways.
import t from 'tap'
import type { HTTPMethods } from 'fastify'
import type { App } from '../app.js'
import { bearer, mails, mailedToken, signUp, startService } from './service.js'

interface Reply { status: number, body: any }

async function call (app: App, method: HTTPMethods, url: string, options: { as?: { accessToken: string }, payload?: object } = {}): Promise<Reply> {
  const res = await app.inject({ method, url, payload: options.payload, headers: options.as === undefined ? {} : bearer(options.as) })
  return { status: res.statusCode, body: res.body === '' ? null : res.json() }
}

const MALLORYS_MOVES = {
  'signs up a tenant of her own with that email': (app: App) =>
    call(app, 'POST', '/tenants', { payload: { name: 'Evil 2', email: 'cfo@beta.test' } }),
  'invites that email to her tenant, to accept herself': async (app: App) => {
    const evil = await signUp(app, 'Evil')
    return call(app, 'POST', '/members', { as: evil, payload: { email: 'cfo@beta.test', role: 'admin' } })
  }
}

for (const [how, move] of Object.entries(MALLORYS_MOVES)) {
  t.test(`Mallory ${how}: she gets no token, and no account exists until the CFO accepts`, async (t) => {
    const { app, db } = await startService(t)
    const beta = await signUp(app, 'Beta')
    const accounts = async (): Promise<number> => (await db.query('SELECT count(*)::int AS n FROM users WHERE email = $1', ['cfo@beta.test'])).rows[0].n

    const res = await move(app)
    t.ok(res.status === 201 || res.status === 202, `heard (${res.status})`)
    t.notMatch(JSON.stringify(res.body), /[0-9a-f-]{36}\.[\w-]{43}/, 'the answer carries no token')
    t.notOk('accessToken' in res.body, 'nor a session')
    t.equal(await accounts(), 0, 'no account for cfo@beta.test')
    const sent = (await mails(app)).filter((mail) => mail.to === 'cfo@beta.test')
    t.equal(sent.length, 1, 'the token went to cfo@beta.test\'s mailbox, which Mallory does not read')

    // Beta's owner invites the CFO, who reads his mail and joins with his own password.
    t.equal((await call(app, 'POST', '/members', { as: beta, payload: { email: 'cfo@beta.test', role: 'admin' } })).status, 201)
    const joined = await call(app, 'POST', '/invitations/accept', { payload: { token: await mailedToken(app, 'cfo@beta.test', beta.tenantId), password: 'the real cfo password' } })
    t.match(joined, { status: 200, body: { tenant: { id: beta.tenantId }, user: { email: 'cfo@beta.test' }, role: 'admin' } }, 'the real CFO joins Beta')
    t.equal(await accounts(), 1, 'the account is his')
    const login = await call(app, 'POST', '/login', { payload: { tenantId: beta.tenantId, email: 'cfo@beta.test', password: 'the real cfo password' } })
    t.equal(login.status, 200, 'and logs in with his password')

    // The mail Mallory caused is harmless: accepting it needs the account's password now.
    const guessed = await call(app, 'POST', '/invitations/accept', { payload: { token: sent[0].token, password: 'mallory chose this one' } })
    t.same([guessed.status, guessed.body.code], [401, 'INVALID_CREDENTIALS'], 'even holding that token, another password opens nothing')
  })
}

t.test('an invitation accepted by a new email makes the account; an expired or unknown token makes none', async (t) => {
  const { app, db } = await startService(t)
  t.equal((await call(app, 'POST', '/tenants', { payload: { name: 'Acme', email: 'ada@acme.test' } })).status, 202)
  t.same((await db.query('SELECT count(*)::int AS n FROM users')).rows[0].n, 0, 'a sign-up makes no account')
  const token = await mailedToken(app, 'ada@acme.test')
  const [tenantId] = token.split('.')
  const login = await call(app, 'POST', '/login', { payload: { tenantId, email: 'ada@acme.test', password: 'correct horse battery' } })
  t.equal(login.status, 401, 'nobody logs in to the new tenant before its confirmation')
  await db.query("UPDATE invitations SET expires_at = now() - interval '1 second'")
  const late = await call(app, 'POST', '/invitations/accept', { payload: { token, password: 'correct horse battery' } })
  t.same([late.status, late.body.code], [401, 'INVALID_INVITATION'], 'an expired confirmation is refused')
  t.same((await db.query('SELECT count(*)::int AS n FROM users')).rows[0].n, 0, 'and makes no account')
})

t.test('the outbox: one file per mail, readable by its owner only, one header line each', async (t) => {
  const { app, outbox } = await startService(t)
  t.equal((await call(app, 'POST', '/tenants', { payload: { name: 'Acme\nBcc: mallory@evil.test', email: 'ada@acme.test' } })).status, 202)
  const [mail] = await mails(app)
  t.equal(mail.subject, 'Confirm your new tenant Acme Bcc: mallory@evil.test', 'a line break in a tenant\'s name adds no header')
  const { stat } = await import('node:fs/promises')
  t.equal((await stat(`${outbox}/${mail.file}`)).mode & 0o777, 0o600, 'the mail file is the server user\'s only')
})
