// Hostile and broken input: every route with a body or params, SQL metacharacters in every string
// field, and bad, expired and tampered tokens. Each refusal is a clear 4xx and writes nothing.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { Test } from 'tap'
import { addMember, bearer, invite, mailedToken, signUp, startService } from './service.js'
import type { Account } from './service.js'
import type { App } from '../app.js'
import type { TestDatabase } from '../../../test/helpers/database.js'
import { hashRefreshToken, signAccessToken } from '../tokens.js'
import type { AccessClaims } from '../tokens.js'

// Hundreds of requests and password hashes: more than tap's 30 s default on a loaded machine.
t.setTimeout(120_000)

const TABLES = ['tenants', 'users', 'memberships', 'notes', 'refresh_tokens', 'invitations']
const BODY_LIMIT = 64 * 1024

type Snapshot = Record<string, { rows: number, digest: string }>

/** Row count and a digest of every row of every table (read as the owner): equal snapshots mean nothing was written. */
async function snapshot (db: TestDatabase): Promise<Snapshot> {
  const { rows } = await db.query<{ name: string, rows: number, digest: string }>(TABLES.map((table) =>
    `SELECT '${table}' AS name, count(*)::int AS rows, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS digest FROM ${table} x`
  ).join(' UNION ALL '))
  return Object.fromEntries(rows.map((row) => [row.name, { rows: row.rows, digest: row.digest }]))
}

let counter = 0
function uniqueEmail (prefix = 'user'): string {
  return `${prefix}${++counter}.${randomBytes(3).toString('hex')}@example.test`
}

function escapeRegExp (text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** How Fastify's validation messages name a field: `body/title must ...` or `must have required property 'title'`. */
function namesField (field: string): RegExp {
  const name = escapeRegExp(field)
  return new RegExp(`(?:^|[\\s,])(?:body|params)/${name}\\b|'${name}'|"${name}"`)
}

interface Request {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE'
  url: string
  headers?: Record<string, string>
  /** Sent as JSON. */
  payload?: unknown
  /** Sent as is, with `contentType` (application/json unless given). */
  raw?: string
  contentType?: string
}

interface Reply { status: number, body: any, text: string, headers: Record<string, unknown> }

async function send (app: App, request: Request): Promise<Reply> {
  const headers: Record<string, string> = { ...request.headers }
  let payload: string | undefined
  if (request.raw !== undefined) {
    payload = request.raw
    headers['content-type'] = request.contentType ?? 'application/json'
  } else if (request.payload !== undefined) {
    payload = JSON.stringify(request.payload)
    headers['content-type'] = 'application/json'
  }
  const res = await app.inject({ method: request.method, url: request.url, headers, payload })
  let body: any = null
  try { body = res.body === '' ? null : res.json() } catch { body = null }
  return { status: res.statusCode, body, text: res.body, headers: res.headers }
}

interface Expected {
  status: number
  /** A field the message must name. */
  field?: string
  code?: string
  message?: RegExp
}

/** One refused request: the status, a message that says what is wrong, and no change in any table. */
async function refused (t: Test, db: TestDatabase, app: App, name: string, request: Request, expected: Expected): Promise<void> {
  await t.test(name, async (t) => {
    const before = await snapshot(db)
    const res = await send(app, request)
    t.equal(res.status, expected.status, `answers ${expected.status} (got ${res.status}: ${res.text.slice(0, 200)})`)
    if (expected.field !== undefined) t.match(res.body?.message, namesField(expected.field), `the message names ${expected.field}`)
    if (expected.code !== undefined) t.equal(res.body?.code, expected.code, `code ${expected.code}`)
    if (expected.message !== undefined) t.match(res.body?.message, expected.message)
    t.same(await snapshot(db), before, 'nothing written')
  })
}

interface Fixture {
  app: App
  db: TestDatabase
  tokenSecret: Buffer
  owner: Account
  member: Account
  other: Account
  noteId: string
  /** An open invitation to the owner's tenant, for an email without an account. */
  invitation: string
}

async function fixture (t: Test): Promise<Fixture> {
  const { app, db, tokenSecret } = await startService(t, { loginAttempts: 10_000, signupAttempts: 10_000 })
  const owner = await signUp(app)
  const other = await signUp(app)
  const member = await addMember(app, owner, 'member', { email: uniqueEmail('member') })
  const note = await send(app, { method: 'POST', url: '/notes', headers: bearer(owner), payload: { title: 'A note', body: 'its body' } })
  if (note.status !== 201) throw new Error(`creating a note failed: ${note.text}`)
  const invitation = await invite(app, owner, uniqueEmail('invited'), 'member')
  return { app, db, tokenSecret, owner, member, other, noteId: note.body.id, invitation }
}

interface Route {
  method: 'POST' | 'PATCH'
  url: string
  headers?: Record<string, string>
  /** A fresh, valid body: whatever a bad variant of it gets through to would write something. */
  valid: () => Record<string, unknown>
  /** Its string fields, and which of them may be left out. */
  fields: string[]
  optional?: string[]
}

function bodyRoutes (f: Fixture): Route[] {
  const randomRefreshToken = `${f.owner.tenantId}.${randomBytes(32).toString('base64url')}`
  return [
    {
      method: 'POST',
      url: '/tenants',
      valid: () => ({ name: 'New tenant', email: uniqueEmail('owner') }),
      fields: ['name', 'email']
    },
    {
      method: 'POST',
      url: '/login',
      // Real credentials: a bad variant that got through would log in, and write a refresh token.
      valid: () => ({ tenantId: f.owner.tenantId, email: f.owner.email, password: f.owner.password }),
      fields: ['tenantId', 'email', 'password']
    },
    { method: 'POST', url: '/refresh', valid: () => ({ refreshToken: randomRefreshToken }), fields: ['refreshToken'] },
    { method: 'POST', url: '/logout', valid: () => ({ refreshToken: randomRefreshToken }), fields: ['refreshToken'] },
    {
      method: 'POST',
      url: '/members',
      headers: bearer(f.owner),
      valid: () => ({ email: uniqueEmail('new'), role: 'member' }),
      fields: ['email', 'role']
    },
    {
      method: 'POST',
      url: '/invitations/accept',
      // A real, open invitation: a bad variant that got through would make an account and a membership.
      valid: () => ({ token: f.invitation, password: 'a good long password' }),
      fields: ['token', 'password']
    },
    {
      method: 'POST',
      url: '/notes',
      headers: bearer(f.owner),
      valid: () => ({ title: 'A new note', body: 'a new body' }),
      fields: ['title', 'body'],
      optional: ['body']
    },
    {
      method: 'PATCH',
      url: `/notes/${f.noteId}`,
      headers: bearer(f.owner),
      valid: () => ({ title: 'A changed title', body: 'a changed body' }),
      fields: ['title', 'body'],
      optional: ['title', 'body']
    }
  ]
}

/** Properties a client might try to smuggle in, per route: all must be refused, not ignored. */
function smuggled (f: Fixture, url: string): Record<string, unknown> {
  // A sign-up takes no password: it is chosen by whoever reads the mail.
  if (url === '/tenants') return { id: f.other.tenantId, role: 'admin', password: 'a good long password' }
  if (url === '/login') return { role: 'owner' }
  if (url === '/members') return { tenantId: f.other.tenantId, userId: f.owner.userId, password: 'a good long password' }
  if (url === '/invitations/accept') return { tenantId: f.other.tenantId, email: f.owner.email, role: 'admin' }
  if (url === '/refresh' || url === '/logout') return { tenantId: f.other.tenantId }
  return { tenant_id: f.other.tenantId, author_id: f.member.userId }
}

t.test('bodies: malformed, missing, mistyped, extra and oversized', async (t) => {
  const f = await fixture(t)
  const { app, db } = f

  for (const route of bodyRoutes(f)) {
    await t.test(`${route.method} ${route.url.replace(f.noteId, ':id')}`, async (t) => {
      const at = (extra: Partial<Request>): Request => ({ method: route.method, url: route.url, headers: route.headers, ...extra })
      const invalidJson = { status: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY', message: /JSON/ }

      for (const raw of ['{', '{"title": "x"', '{"a": 1,}', "{'name': 'x'}", 'undefined', '{"a": 1}}']) {
        await refused(t, db, app, `malformed JSON ${raw}`, at({ raw }), invalidJson)
      }
      await refused(t, db, app, 'an empty JSON body', at({ raw: '' }), { status: 400, code: 'FST_ERR_CTP_EMPTY_JSON_BODY' })
      for (const raw of ['null', '[]', '"text"', '42', 'true']) {
        await refused(t, db, app, `a JSON ${raw} instead of an object`, at({ raw }), { status: 400, message: /^body must be object/ })
      }
      await refused(t, db, app, 'no body at all', at({}), { status: 400, message: /^body must be object/ })
      await refused(t, db, app, 'a form instead of JSON', at({ raw: 'a=1', contentType: 'application/x-www-form-urlencoded' }), { status: 415 })

      const big = { ...route.valid(), [route.fields[route.fields.length - 1]]: 'x'.repeat(BODY_LIMIT + 1) }
      await refused(t, db, app, 'a body over the 64 KiB limit', at({ payload: big }), { status: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' })
      await refused(t, db, app, 'a body of 1 MiB', at({ raw: JSON.stringify({ padding: 'x'.repeat(1024 * 1024) }) }), { status: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' })

      for (const field of route.fields) {
        if (route.optional?.includes(field) !== true) {
          const body = route.valid()
          delete body[field]
          await refused(t, db, app, `${field} missing`, at({ payload: body }), { status: 400, field })
        }
        const valid = route.valid()[field]
        const wrongTypes: Array<[string, unknown]> = [
          ['an object', { value: valid }],
          ['an array of two', [valid, valid]],
          ['an array of one', [valid]],
          ['a number', 12_345_678_901],
          ['a boolean', true],
          ['null', null]
        ]
        for (const [label, value] of wrongTypes) {
          await refused(t, db, app, `${field} as ${label}`, at({ payload: { ...route.valid(), [field]: value } }), { status: 400, field })
        }
      }

      await refused(t, db, app, 'an extra property', at({ payload: { ...route.valid(), extra: 'x' } }), { status: 400, field: 'extra' })
      for (const [key, value] of Object.entries(smuggled(f, route.url))) {
        await refused(t, db, app, `a smuggled ${key}`, at({ payload: { ...route.valid(), [key]: value } }), { status: 400, field: key })
      }
    })
  }
})

t.test('bodies: out-of-range values', async (t) => {
  const f = await fixture(t)
  const { app, db, owner, noteId } = f
  const auth = bearer(owner)
  const tenants = (body: object): Request => ({ method: 'POST', url: '/tenants', payload: { name: 'T', email: uniqueEmail(), ...body } })
  const members = (body: object): Request => ({ method: 'POST', url: '/members', headers: auth, payload: { email: uniqueEmail(), role: 'member', ...body } })
  const accept = (body: object): Request => ({ method: 'POST', url: '/invitations/accept', payload: { token: f.invitation, password: 'a good long password', ...body } })
  const login = (body: object): Request => ({ method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email: owner.email, password: owner.password, ...body } })

  const badEmails = ['not-an-email', 'a@', '@example.test', 'a b@example.test', 'a@b@example.test', 'a@example..test', '', `${'x'.repeat(250)}@example.test`, 'ada@example.test\n']
  for (const email of badEmails) {
    const label = JSON.stringify(email.length > 40 ? email.slice(0, 20) + '…' : email)
    await refused(t, db, app, `POST /tenants with email ${label}`, tenants({ email }), { status: 400, field: 'email' })
    await refused(t, db, app, `POST /members with email ${label}`, members({ email }), { status: 400, field: 'email' })
    await refused(t, db, app, `POST /login with email ${label}`, login({ email }), { status: 400, field: 'email' })
  }
  for (const password of ['', 'short', '123456789', 'x'.repeat(201)]) {
    const label = `a password of ${password.length} characters`
    await refused(t, db, app, `POST /invitations/accept with ${label}`, accept({ password }), { status: 400, field: 'password' })
  }
  await refused(t, db, app, 'POST /login with an empty password', login({ password: '' }), { status: 400, field: 'password' })
  await refused(t, db, app, 'POST /login with a password of 201 characters', login({ password: 'x'.repeat(201) }), { status: 400, field: 'password' })
  for (const tenantId of ['', 'acme', '123', owner.tenantId.slice(0, -1), owner.tenantId + '0', owner.tenantId.replace(/-/g, '') + 'zzzz']) {
    await refused(t, db, app, `POST /login with tenantId ${JSON.stringify(tenantId)}`, login({ tenantId }), { status: 400, field: 'tenantId' })
  }
  for (const name of ['', 'x'.repeat(101)]) {
    await refused(t, db, app, `POST /tenants with a name of ${name.length} characters`, tenants({ name }), { status: 400, field: 'name' })
  }
  for (const role of ['owner', 'superuser', 'Admin', '']) {
    await refused(t, db, app, `POST /members with role ${JSON.stringify(role)}`, members({ role }), { status: 400, field: 'role' })
  }
  await refused(t, db, app, 'POST /members with a password for the account', members({ password: 'a good long password' }), { status: 400, field: 'password' })
  for (const url of ['/refresh', '/logout']) {
    await refused(t, db, app, `POST ${url} with a token of 201 characters`, { method: 'POST', url, payload: { refreshToken: 'x'.repeat(201) } }, { status: 400, field: 'refreshToken' })
  }
  await refused(t, db, app, 'POST /invitations/accept with a token of 201 characters', accept({ token: 'x'.repeat(201) }), { status: 400, field: 'token' })
  const [tenant, secret] = f.invitation.split('.')
  const invalidInvitation = { status: 401, code: 'INVALID_INVITATION' }
  for (const [label, token] of [['empty', ''], ['garbage', 'garbage'], ['without its tenant', secret], ['with another tenant', `${f.other.tenantId}.${secret}`],
    ['with a changed character', `${tenant}.${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`], ['with an extra segment', `${f.invitation}.x`], ['truncated', f.invitation.slice(0, -1)]]) {
    await refused(t, db, app, `POST /invitations/accept with a token ${label}`, accept({ token }), invalidInvitation)
  }
  const notes: Array<[string, Request['method'], string]> = [['POST /notes', 'POST', '/notes'], ['PATCH /notes/:id', 'PATCH', `/notes/${noteId}`]]
  for (const [label, method, url] of notes) {
    for (const title of ['', 'x'.repeat(201)]) {
      await refused(t, db, app, `${label} with a title of ${title.length} characters`, { method, url, headers: auth, payload: { title } }, { status: 400, field: 'title' })
    }
    await refused(t, db, app, `${label} with a body of 10001 characters`, { method, url, headers: auth, payload: { title: 'T', body: 'x'.repeat(10_001) } }, { status: 400, field: 'body' })
  }
  await refused(t, db, app, 'PATCH /notes/:id with nothing to change', { method: 'PATCH', url: `/notes/${noteId}`, headers: auth, payload: {} },
    { status: 400, message: /^body must NOT have fewer than 1 properties/ })
})

t.test('params: invalid uuids', async (t) => {
  const f = await fixture(t)
  const { app, db, owner, noteId } = f
  const ids = [
    'nope',
    '123',
    noteId.slice(0, -1),
    noteId + '0',
    noteId.replace(/-/g, ''),
    `{${noteId}}`,
    '00000000-0000-0000-0000-00000000000g',
    encodeURIComponent("'; DROP TABLE notes; --"),
    encodeURIComponent(`${noteId}' OR '1'='1`),
    '%00',
    `${noteId}%00`
  ]
  const calls: Array<[Request['method'], unknown]> = [['GET', undefined], ['PATCH', { title: 'changed' }], ['DELETE', undefined]]
  for (const id of ids) {
    for (const [method, payload] of calls) {
      await refused(t, db, app, `${method} /notes/${id}`, { method, url: `/notes/${id}`, headers: bearer(owner), payload }, { status: 400, field: 'id' })
    }
  }
  const unknown = await send(app, { method: 'GET', url: `/notes/${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`, headers: bearer(owner) })
  t.same([unknown.status, unknown.body.code], [404, 'NOT_FOUND'], 'a well-formed unknown id is a 404, not a 400')
  t.equal((await send(app, { method: 'GET', url: `/notes/${noteId}`, headers: bearer(owner) })).body.title, 'A note', 'the note is still there')
})

const METACHARACTERS: Array<[string, string]> = [
  ['a SQL comment injection', "'; DROP TABLE notes; --"],
  ['a quote tautology', "x' OR '1'='1"],
  ['a backslash', '\\'],
  ['escaped quotes', "a\\'b\\\"c\\\\"],
  ['dollar quotes', '$$'],
  ['a dollar-quoted statement', '$x$; DROP TABLE users; $x$'],
  ['a percent sign', '%'],
  ['an underscore', '_'],
  ['LIKE wildcards', '%_%'],
  ['a placeholder', '$1'],
  ['control characters', 'tab\there\nnew line\r\u001b[31m'],
  ['unicode', 'Zoë — 東京 🚀 é\u0301 \u202eevil \u200b'],
  ['a NUL character', 'before\u0000after'],
  ['a lone surrogate', 'broken \ud800 pair']
]

t.test('SQL metacharacters in every string field: stored exactly, or refused with 400', async (t) => {
  const f = await fixture(t)
  const { app, db, owner } = f

  /** Anything but 400 naming `field`, with nothing written, is a failure. */
  async function refusedWith400 (t: Test, request: Request, field: string): Promise<void> {
    const before = await snapshot(db)
    const res = await send(app, request)
    t.equal(res.status, 400, `refused with 400 (got ${res.status}: ${res.text.slice(0, 200)})`)
    t.match(res.body?.message, namesField(field), `naming ${field}`)
    t.same(await snapshot(db), before, 'nothing written')
  }

  /** Either 201/200 and then `stored` checks, or 400 naming the field with nothing written; never anything else. */
  async function storedOrRefused (t: Test, request: Request, success: number, field: string, stored: (res: Reply) => Promise<void>): Promise<void> {
    const before = await snapshot(db)
    const res = await send(app, request)
    if (res.status === 400) {
      t.match(res.body?.message, namesField(field), `refused with 400 naming ${field}`)
      t.same(await snapshot(db), before, 'nothing written')
    } else {
      t.equal(res.status, success, `stored (${success}) or refused (400): got ${res.status} ${res.text.slice(0, 200)}`)
      if (res.status === success) await stored(res)
    }
  }

  for (const [label, value] of METACHARACTERS) {
    await t.test(label, async (t) => {
      await t.test('tenant name', async (t) => {
        const email = uniqueEmail()
        await storedOrRefused(t, { method: 'POST', url: '/tenants', payload: { name: value, email } }, 202, 'name', async () => {
          const confirmed = await send(app, { method: 'POST', url: '/invitations/accept', payload: { token: await mailedToken(app, email), password: 'a good long password' } })
          t.equal(confirmed.body.tenant.name, value, 'returned exactly')
          const { rows } = await db.query('SELECT name FROM tenants WHERE id = $1', [confirmed.body.tenant.id])
          t.equal(rows[0]?.name, value, 'stored exactly')
          t.equal((await send(app, { method: 'GET', url: '/me', headers: bearer(confirmed.body) })).body?.tenant?.name, value, 'read back exactly')
        })
      })

      const password = `password ${value} password`
      await t.test('password of a new tenant\'s owner', async (t) => {
        const email = uniqueEmail()
        t.equal((await send(app, { method: 'POST', url: '/tenants', payload: { name: 'T', email } })).status, 202)
        await storedOrRefused(t, { method: 'POST', url: '/invitations/accept', payload: { token: await mailedToken(app, email), password } }, 200, 'password', async (res) => {
          const login = await send(app, { method: 'POST', url: '/login', payload: { tenantId: res.body.tenant.id, email, password } })
          t.equal(login.status, 200, 'logs in with exactly that password')
          const wrong = await send(app, { method: 'POST', url: '/login', payload: { tenantId: res.body.tenant.id, email, password: 'password  password' } })
          t.equal(wrong.status, 401, 'and not without its special part')
        })
      })

      const email = `x${++counter}${value}@example.test`.toLowerCase()
      await t.test('email of a new tenant\'s owner', async (t) => {
        await storedOrRefused(t, { method: 'POST', url: '/tenants', payload: { name: 'T', email } }, 202, 'email', async () => {
          const res = await send(app, { method: 'POST', url: '/invitations/accept', payload: { token: await mailedToken(app, email), password: 'a good long password' } })
          t.equal(res.body.user.email, email, 'returned exactly')
          const { rows } = await db.query('SELECT email FROM users WHERE id = $1', [res.body.user.id])
          t.equal(rows[0]?.email, email, 'stored exactly')
          const login = await send(app, { method: 'POST', url: '/login', payload: { tenantId: res.body.tenant.id, email, password: 'a good long password' } })
          t.equal(login.status, 200, 'logs in with exactly that email')
        })
      })

      await t.test('login email and password', async (t) => {
        const before = await snapshot(db)
        const res = await send(app, { method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email: `nobody${value}@example.test`, password: value } })
        t.ok(res.status === 400 || res.status === 401, `refused with 400 or 401: got ${res.status} ${res.text.slice(0, 200)}`)
        t.same(await snapshot(db), before, 'nothing written')
      })

      await t.test('login tenantId', async (t) => {
        for (const tenantId of [value, `${owner.tenantId}${value}`]) {
          await refusedWith400(t, { method: 'POST', url: '/login', payload: { tenantId, email: owner.email, password: owner.password } }, 'tenantId')
        }
      })

      await t.test('role of an invited member', async (t) => {
        for (const role of [value, `member${value}`]) {
          await refusedWith400(t, { method: 'POST', url: '/members', headers: bearer(owner), payload: { email: uniqueEmail(), role } }, 'role')
        }
      })

      const memberEmail = `m${++counter}${value}@example.test`.toLowerCase()
      await t.test('email of an invited member, and the password it accepts with', async (t) => {
        await storedOrRefused(t, { method: 'POST', url: '/members', headers: bearer(owner), payload: { email: memberEmail, role: 'member' } }, 201, 'email', async (res) => {
          t.equal(res.body.email, memberEmail, 'returned exactly')
          const token = await mailedToken(app, memberEmail, owner.tenantId)
          const { rows } = await db.query('SELECT email FROM invitations WHERE token_hash = $1', [hashRefreshToken(token)])
          t.equal(rows[0]?.email, memberEmail, 'stored exactly')
          await storedOrRefused(t, { method: 'POST', url: '/invitations/accept', payload: { token, password } }, 200, 'password', async (joined) => {
            t.equal(joined.body.user.email, memberEmail, 'the account has exactly that email')
            const members = await send(app, { method: 'GET', url: '/members', headers: bearer(owner) })
            t.ok(members.body.some((m: { email: string }) => m.email === memberEmail), 'listed exactly')
            const login = await send(app, { method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email: memberEmail, password } })
            t.equal(login.status, 200, 'the member logs in with exactly that email and password')
          })
        })
      })

      await t.test('password of a new account, accepting an invitation', async (t) => {
        const email = uniqueEmail('invited')
        const token = await invite(app, owner, email, 'member')
        await storedOrRefused(t, { method: 'POST', url: '/invitations/accept', payload: { token, password } }, 200, 'password', async () => {
          const login = await send(app, { method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email, password } })
          t.equal(login.status, 200, 'logs in with exactly that password')
          const wrong = await send(app, { method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email, password: 'password  password' } })
          t.equal(wrong.status, 401, 'and not without its special part')
        })
      })

      await t.test('invitation token and password, for an open invitation of an existing account', async (t) => {
        const existing = await signUp(app)
        const token = await invite(app, owner, existing.email, 'admin')
        for (const [label, request] of [
          ['a token', { token: value, password: 'a good long password' }],
          ['a token after a real tenant', { token: `${owner.tenantId}.${value}`, password: 'a good long password' }],
          ['a real token with a suffix', { token: `${token}${value}`, password: 'a good long password' }],
          ['the password of the existing account', { token, password }]
        ] as const) {
          const before = await snapshot(db)
          const res = await send(app, { method: 'POST', url: '/invitations/accept', payload: request })
          t.ok([400, 401].includes(res.status), `${label}: refused with 400 or 401: got ${res.status} ${res.text.slice(0, 200)}`)
          t.same(await snapshot(db), before, 'nothing written')
        }
        const accepted = await send(app, { method: 'POST', url: '/invitations/accept', payload: { token, password: existing.password } })
        t.equal(accepted.status, 200, 'the invitation was not used up: its account\'s own password joins')
      })

      await t.test('password of an existing account signing up a tenant', async (t) => {
        t.equal((await send(app, { method: 'POST', url: '/tenants', payload: { name: 'T', email: owner.email } })).status, 202)
        const token = await mailedToken(app, owner.email)
        const before = await snapshot(db)
        const res = await send(app, { method: 'POST', url: '/invitations/accept', payload: { token, password } })
        t.ok([400, 401].includes(res.status), `refused with 400 or 401: got ${res.status} ${res.text.slice(0, 200)}`)
        t.same(await snapshot(db), before, 'nothing written')
      })

      for (const field of ['title', 'body']) {
        const payload = { title: 'T', [field]: value }
        await t.test(`note ${field}, created`, async (t) => {
          await storedOrRefused(t, { method: 'POST', url: '/notes', headers: bearer(owner), payload }, 201, field, async (res) => {
            t.equal(res.body[field], value, 'returned exactly')
            const { rows } = await db.query(`SELECT ${field} FROM notes WHERE id = $1`, [res.body.id])
            t.equal(rows[0]?.[field], value, 'stored exactly')
            t.equal((await send(app, { method: 'GET', url: `/notes/${res.body.id}`, headers: bearer(owner) })).body?.[field], value, 'read back exactly')
          })
        })
        await t.test(`note ${field}, changed`, async (t) => {
          await storedOrRefused(t, { method: 'PATCH', url: `/notes/${f.noteId}`, headers: bearer(owner), payload: { [field]: value } }, 200, field, async (res) => {
            t.equal(res.body[field], value, 'returned exactly')
            const { rows } = await db.query(`SELECT ${field} FROM notes WHERE id = $1`, [f.noteId])
            t.equal(rows[0]?.[field], value, 'stored exactly')
          })
        })
      }

      await t.test('refresh and logout tokens', async (t) => {
        for (const refreshToken of [value, `${owner.tenantId}.${value}`]) {
          const before = await snapshot(db)
          const refresh = await send(app, { method: 'POST', url: '/refresh', payload: { refreshToken } })
          t.ok(refresh.status === 400 || refresh.status === 401, `refresh refused with 400 or 401: got ${refresh.status} ${refresh.text.slice(0, 200)}`)
          const logout = await send(app, { method: 'POST', url: '/logout', payload: { refreshToken } })
          t.ok(logout.status === 400 || logout.status === 204, `logout answers 400 or 204: got ${logout.status} ${logout.text.slice(0, 200)}`)
          t.same(await snapshot(db), before, 'nothing written')
        }
      })

      await t.test('note id in the path', async (t) => {
        let id: string
        try { id = encodeURIComponent(value) } catch { id = '%ED%A0%80' } // a lone surrogate has no UTF-8 form
        const res = await send(app, { method: 'GET', url: `/notes/${id}`, headers: bearer(owner) })
        t.equal(res.status, 400, `refused with 400 (got ${res.status}: ${res.text.slice(0, 200)})`)
      })
    })
  }

  const { rows } = await db.query<{ name: string, present: boolean }>(
    "SELECT name, to_regclass('public.' || name) IS NOT NULL AS present FROM unnest($1::text[]) AS name", [TABLES])
  t.same(rows, TABLES.map((name) => ({ name, present: true })), 'every table still exists')
  const notes = await send(app, { method: 'GET', url: '/notes', headers: bearer(owner) })
  t.equal(notes.status, 200, 'notes are still listed')
  t.ok(notes.body.some((note: { id: string }) => note.id === f.noteId), 'including the first note')
  t.ok((await snapshot(db)).users.rows >= 3, 'the users are still there')
})

function tamper (token: string, change: (claims: AccessClaims) => object): string {
  const [version, payload, signature] = token.split('.')
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  return `${version}.${Buffer.from(JSON.stringify(change(claims))).toString('base64url')}.${signature}`
}

t.test('bad, expired and tampered access tokens', async (t) => {
  const f = await fixture(t)
  const { app, db, tokenSecret, owner, member, other } = f
  const ownerClaims = { sub: owner.userId, tid: owner.tenantId, sid: JSON.parse(Buffer.from(owner.accessToken.split('.')[1], 'base64url').toString('utf8')).sid }

  // Controls: each way of making a token below makes a working one when nothing is wrong with it.
  const me = (authorization: string): Promise<Reply> => send(app, { method: 'GET', url: '/me', headers: { authorization } })
  t.equal((await me(`Bearer ${owner.accessToken}`)).status, 200, 'control: the real token works')
  t.equal((await me(`Bearer ${signAccessToken(tokenSecret, ownerClaims, 60)}`)).status, 200, 'control: a token signed here with the service secret works')
  t.equal((await me(`Bearer ${tamper(member.accessToken, (claims) => claims)}`)).status, 200, 'control: re-encoding unchanged claims keeps the token valid')

  const [, memberPayload] = member.accessToken.split('.')
  const [, , ownerSignature] = owner.accessToken.split('.')
  const later = Math.floor(Date.now() / 1000) + 365 * 86_400
  const headers: Array<[string, string | undefined]> = [
    ['no Authorization header', undefined],
    ['an empty header', ''],
    ['the scheme alone', 'Bearer'],
    ['the scheme and a space', 'Bearer '],
    ['the token without a scheme', owner.accessToken],
    ['the Basic scheme', `Basic ${Buffer.from(`${owner.email}:${owner.password}`).toString('base64')}`],
    ['a Token scheme', `Token ${owner.accessToken}`],
    ['garbage', 'Bearer garbage'],
    ['empty parts', 'Bearer v1..'],
    ['a long garbage token', `Bearer ${'x'.repeat(4000)}`],
    ['base64 junk parts', 'Bearer v1.%%%.%%%'],
    ['another version', `Bearer ${owner.accessToken.replace(/^v1\./, 'v2.')}`],
    ['an extra segment', `Bearer ${owner.accessToken}.x`],
    ['no signature', `Bearer ${owner.accessToken.split('.').slice(0, 2).join('.')}`],
    ['an empty signature', `Bearer ${owner.accessToken.split('.').slice(0, 2).join('.')}.`],
    ['a truncated signature', `Bearer ${owner.accessToken.slice(0, -2)}`],
    ['a token signed with another secret', `Bearer ${signAccessToken(randomBytes(32), ownerClaims, 900)}`],
    ['the tenant swapped to another tenant', `Bearer ${tamper(owner.accessToken, (claims) => ({ ...claims, tid: other.tenantId }))}`],
    ['a member\'s session changed to the owner\'s', `Bearer ${tamper(member.accessToken, (claims) => ({ ...claims, sid: ownerClaims.sid }))}`],
    ['a member\'s subject changed to the owner', `Bearer ${tamper(member.accessToken, (claims) => ({ ...claims, sub: owner.userId }))}`],
    ['a member\'s payload with the owner\'s signature', `Bearer v1.${memberPayload}.${ownerSignature}`],
    ['an expiry pushed back', `Bearer ${tamper(signAccessToken(tokenSecret, ownerClaims, -60), (claims) => ({ ...claims, exp: later }))}`],
    ['an expired token', `Bearer ${signAccessToken(tokenSecret, ownerClaims, -60)}`],
    ['a token expiring this second', `Bearer ${signAccessToken(tokenSecret, ownerClaims, 0)}`],
    ['a signed token with a session id that is not a uuid', `Bearer ${signAccessToken(tokenSecret, { ...ownerClaims, sid: "'; DROP TABLE notes; --" }, 900)}`],
    ['a signed token with a tenant that is not a uuid', `Bearer ${signAccessToken(tokenSecret, { ...ownerClaims, tid: "'; DROP TABLE notes; --" }, 900)}`]
  ]
  for (const [label, authorization] of headers) {
    const auth: Record<string, string> = authorization === undefined ? {} : { authorization }
    await t.test(label, async (t) => {
      const read = await send(app, { method: 'GET', url: '/me', headers: auth })
      t.same([read.status, read.body?.code], [401, 'UNAUTHORIZED'], 'GET /me answers 401')
      t.equal(read.headers['www-authenticate'], 'Bearer', 'with a Bearer challenge')
      const before = await snapshot(db)
      const write = await send(app, { method: 'POST', url: '/notes', headers: auth, payload: { title: 'should not exist' } })
      t.same([write.status, write.body?.code], [401, 'UNAUTHORIZED'], 'POST /notes answers 401')
      const add = await send(app, { method: 'POST', url: '/members', headers: auth, payload: { email: uniqueEmail(), role: 'admin' } })
      t.same([add.status, add.body?.code], [401, 'UNAUTHORIZED'], 'POST /members answers 401')
      const patch = await send(app, { method: 'PATCH', url: `/notes/${f.noteId}`, headers: auth, payload: { title: 'should not change' } })
      t.same([patch.status, patch.body?.code], [401, 'UNAUTHORIZED'], 'PATCH /notes/:id answers 401')
      const remove = await send(app, { method: 'DELETE', url: `/notes/${f.noteId}`, headers: auth })
      t.same([remove.status, remove.body?.code], [401, 'UNAUTHORIZED'], 'DELETE /notes/:id answers 401')
      t.same(await snapshot(db), before, 'nothing written')
    })
  }
})

t.test('random, foreign and tampered refresh tokens', async (t) => {
  const f = await fixture(t)
  const { app, db, owner, other } = f
  const [, secret] = owner.refreshToken.split('.')
  const flipped = secret.slice(0, -1) + (secret.endsWith('A') ? 'B' : 'A')
  const invalid = { status: 401, code: 'INVALID_REFRESH_TOKEN' }
  const tokens: Array<[string, string, Expected?]> = [
    ['a random token for a real tenant', `${owner.tenantId}.${randomBytes(32).toString('base64url')}`],
    ['a random token for an unknown tenant', `${'1'.repeat(8)}-1111-4111-8111-${'1'.repeat(12)}.${randomBytes(32).toString('base64url')}`],
    ['a real token with another tenant\'s prefix', `${other.tenantId}.${secret}`],
    ['a real token with its prefix upper-cased', `${owner.tenantId.toUpperCase()}.${secret}`],
    ['a real token with one character changed', `${owner.tenantId}.${flipped}`],
    ['a real token without its prefix', secret],
    ['a real token with an extra segment', `${owner.refreshToken}.x`],
    ['a real token truncated', owner.refreshToken.slice(0, -1)],
    ['an access token (over the 200-character limit)', owner.accessToken, { status: 400, field: 'refreshToken' }],
    ['an access token cut to 200 characters', owner.accessToken.slice(0, 200)],
    ['garbage', 'garbage'],
    ['empty', '']
  ]
  for (const [label, refreshToken, expected = invalid] of tokens) {
    await refused(t, db, app, label, { method: 'POST', url: '/refresh', payload: { refreshToken } }, expected)
  }
  const res = await send(app, { method: 'POST', url: '/refresh', payload: { refreshToken: owner.refreshToken } })
  t.equal(res.status, 200, 'the real token was not used up by any of that')
  const otherRes = await send(app, { method: 'POST', url: '/refresh', payload: { refreshToken: other.refreshToken } })
  t.equal(otherRes.status, 200, 'and neither was the other tenant\'s')
})
