// The whole flow, through fastify.inject and through a real listening server.
import t from 'tap'
import type { Test } from 'tap'
import { bearer, mailedToken, mails, signUp, startService } from './service.js'
import type { App } from '../app.js'
import { verifyPassword } from '../passwords.js'

type Call = (method: string, url: string, options?: { payload?: unknown, headers?: Record<string, string> }) => Promise<{ status: number, body: any }>

function viaInject (app: App): Call {
  return async (method, url, options = {}) => {
    const res = await app.inject({ method: method as 'GET', url, payload: options.payload as object, headers: options.headers })
    return { status: res.statusCode, body: res.body === '' ? null : res.json() }
  }
}

function viaHttp (base: string): Call {
  return async (method, url, options = {}) => {
    const res = await fetch(base + url, {
      method,
      headers: { ...(options.payload === undefined ? {} : { 'content-type': 'application/json' }), ...options.headers },
      body: options.payload === undefined ? undefined : JSON.stringify(options.payload)
    })
    const text = await res.text()
    return { status: res.status, body: text === '' ? null : JSON.parse(text) }
  }
}

async function walkThrough (t: Test, app: App, call: Call): Promise<void> {
  const signedUp = await call('POST', '/tenants', { payload: { name: 'Acme', email: 'Ada@Acme.test' } })
  t.same([signedUp.status, Object.keys(signedUp.body)], [202, ['message']], 'a sign-up answers 202 with a message, no tokens')
  const [confirmation] = (await mails(app)).filter((mail) => mail.to === 'ada@acme.test')
  t.match(confirmation, { subject: 'Confirm your new tenant Acme', token: String }, 'the confirmation is mailed to the address, lowercased')
  const created = await call('POST', '/invitations/accept', { payload: { token: confirmation.token, password: 'correct horse battery' } })
  t.equal(created.status, 200, 'accepting it with a password makes the account, the owner of the tenant')
  t.equal(created.body.user.email, 'ada@acme.test', 'emails are stored lowercased')
  t.equal(created.body.role, 'owner')
  const tenantId = created.body.tenant.id
  const owner = { accessToken: created.body.accessToken }

  const me = await call('GET', '/me', { headers: bearer(owner) })
  t.same(me.body, { user: created.body.user, tenant: { id: tenantId, name: 'Acme' }, role: 'owner' })

  const invited = await call('POST', '/members', { headers: bearer(owner), payload: { email: 'Bob@acme.test', role: 'member' } })
  t.same([invited.status, invited.body.email, invited.body.role], [201, 'bob@acme.test', 'member'])
  t.same(Object.keys(invited.body).sort(), ['email', 'expiresAt', 'role'], 'the inviter is not given the token')
  const invitation = await mailedToken(app, 'bob@acme.test', tenantId)
  t.same((await call('POST', '/login', { payload: { tenantId, email: 'bob@acme.test', password: 'bobs good password' } })).status, 401,
    'an invitation alone makes no account')
  const joined = await call('POST', '/invitations/accept', { payload: { token: invitation, password: 'bobs good password' } })
  t.equal(joined.status, 200)
  t.match(joined.body, { tenant: { id: tenantId, name: 'Acme' }, user: { email: 'bob@acme.test' }, role: 'member', accessToken: String })
  const again = await call('POST', '/invitations/accept', { payload: { token: invitation, password: 'bobs good password' } })
  t.same([again.status, again.body.code], [401, 'INVALID_INVITATION'], 'an invitation is accepted once')
  const login = await call('POST', '/login', { payload: { tenantId, email: 'BOB@acme.test', password: 'bobs good password' } })
  t.equal(login.status, 200)
  const bob = { accessToken: login.body.accessToken }
  t.equal((await call('GET', '/me', { headers: bearer(bob) })).body.role, 'member')
  t.same((await call('GET', '/members', { headers: bearer(bob) })).body.map((m: { email: string }) => m.email), ['ada@acme.test', 'bob@acme.test'])

  const note = await call('POST', '/notes', { headers: bearer(bob), payload: { title: 'Plan', body: 'ship it' } })
  t.equal(note.status, 201)
  t.match(note.body, { title: 'Plan', body: 'ship it', authorId: String })
  const id = note.body.id
  t.equal((await call('GET', `/notes/${id}`, { headers: bearer(owner) })).body.title, 'Plan')
  t.equal((await call('PATCH', `/notes/${id}`, { headers: bearer(owner), payload: { title: 'Plan B' } })).body.title, 'Plan B')
  t.same((await call('GET', '/notes', { headers: bearer(bob) })).body.map((n: { title: string }) => n.title), ['Plan B'])
  const ownersNote = await call('POST', '/notes', { headers: bearer(owner), payload: { title: 'Owner only' } })
  t.equal((await call('DELETE', `/notes/${ownersNote.body.id}`, { headers: bearer(bob) })).status, 403, 'a member cannot delete another\'s note')
  t.equal((await call('DELETE', `/notes/${id}`, { headers: bearer(bob) })).status, 204)
  t.equal((await call('GET', `/notes/${id}`, { headers: bearer(bob) })).status, 404)

  const refreshed = await call('POST', '/refresh', { payload: { refreshToken: login.body.refreshToken } })
  t.equal(refreshed.status, 200)
  t.not(refreshed.body.refreshToken, login.body.refreshToken, 'rotated')
  const reused = await call('POST', '/refresh', { payload: { refreshToken: login.body.refreshToken } })
  t.same([reused.status, reused.body.code], [401, 'REFRESH_TOKEN_REUSED'])
  const afterReuse = await call('POST', '/refresh', { payload: { refreshToken: refreshed.body.refreshToken } })
  t.equal(afterReuse.status, 401, 'the reuse revoked the whole family, the newest token too')

  const ownerLogin = await call('POST', '/login', { payload: { tenantId, email: 'ada@acme.test', password: 'correct horse battery' } })
  t.equal((await call('POST', '/logout', { payload: { refreshToken: ownerLogin.body.refreshToken } })).status, 204)
  t.equal((await call('POST', '/refresh', { payload: { refreshToken: ownerLogin.body.refreshToken } })).status, 401, 'logout revoked it')

  const health = await call('GET', '/health')
  t.match(health.body, { status: 'ok', pool: { active: 0 } })
}

t.test('the whole flow through fastify.inject', async (t) => {
  const { app, db } = await startService(t)
  await walkThrough(t, app, viaInject(app))
  t.equal(await db.idleInTransaction(), 0)
})

t.test('the whole flow through a real listening server', async (t) => {
  const { app, db } = await startService(t)
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  await walkThrough(t, app, viaHttp(base))
  const metrics = await (await fetch(base + '/metrics')).text()
  t.match(metrics, /^fastify_db_session_commits_total\{pool="app"\} [1-9]\d*$/m)
  t.match(metrics, /^fastify_db_session_acquire_wait_seconds_count\{pool="app"\} [1-9]\d*$/m)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('an existing account owns a new tenant by its mailed confirmation and its own password, and no other', async (t) => {
  const { app, db } = await startService(t)
  const first = await signUp(app)
  const signedUp = await app.inject({ method: 'POST', url: '/tenants', payload: { name: 'Second', email: first.email.toUpperCase() } })
  t.equal(signedUp.statusCode, 202)
  const token = await mailedToken(app, first.email)
  const wrong = await app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: 'another password' } })
  t.same([wrong.statusCode, wrong.json().code], [401, 'INVALID_CREDENTIALS'], 'another password is refused')
  t.same((await db.query('SELECT count(*)::int AS n FROM memberships m JOIN tenants t ON t.id = m.tenant_id WHERE t.name = $1', ['Second'])).rows[0].n, 0,
    'the new tenant has no member')
  t.ok(await verifyPassword(first.password, (await db.query('SELECT password_hash FROM users WHERE id = $1', [first.userId])).rows[0].password_hash),
    'the account keeps its password')

  const second = await app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: first.password } })
  t.equal(second.statusCode, 200, 'its own password makes it the owner of the new tenant: the invitation stayed open')
  t.same(second.json().user, { id: first.userId, email: first.email }, 'the same account')
  t.same((await app.inject({ method: 'GET', url: '/me', headers: bearer(second.json()) })).json(),
    { user: { id: first.userId, email: first.email }, tenant: { id: second.json().tenant.id, name: 'Second' }, role: 'owner' })
  t.same((await app.inject({ method: 'GET', url: '/me', headers: bearer(first) })).json().role, 'owner', 'and still owns the first')
  t.same((await db.query('SELECT count(*)::int AS n FROM users WHERE email = $1', [first.email])).rows[0].n, 1, 'one account')
})
