// Tenant isolation: a member of tenant A, holding a valid token, goes after tenant B's rows on
// every tenant-scoped route, and directly in the database as the app role. Row-level security
// must answer "not found" (or "forbidden", or "unauthorized" for tokens) and leave B as it was.
// Accounts are global, so an account made in one tenant must never open another: the
// cross-tenant takeover through POST /members is played out at the end.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { Test } from 'tap'
import pg from 'pg'
import type { HTTPMethods } from 'fastify'
import type { TestDatabase } from '../../../test/helpers/database.js'
import type { App } from '../app.js'
import { signAccessToken } from '../tokens.js'
import { addMember, bearer, invite, mailedToken, signUp, startService } from './service.js'
import type { Account } from './service.js'

// Hundreds of requests and password hashes: more than tap's 30 s default on a loaded machine.
t.setTimeout(120_000)

interface Reply { status: number, body: any }

async function call (app: App, method: HTTPMethods, url: string, options: { as?: { accessToken: string }, payload?: object } = {}): Promise<Reply> {
  const res = await app.inject({ method, url, headers: options.as === undefined ? {} : bearer(options.as), payload: options.payload })
  return { status: res.statusCode, body: res.body === '' ? null : res.json() }
}

async function createNote (app: App, author: Account, title: string): Promise<string> {
  const res = await call(app, 'POST', '/notes', { as: author, payload: { title, body: `${title} body` } })
  if (res.status !== 201) throw new Error(`creating a note failed: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.id
}

/**
 * Every row that belongs to a tenant, read as the owner (RLS does not apply), as whole rows in
 * JSON: timestamps keep their microseconds, bytea its bytes.
 */
async function tenantRows (db: TestDatabase, tenantId: string): Promise<Record<string, unknown[]>> {
  const rows = async (sql: string): Promise<unknown[]> => (await db.query(sql, [tenantId])).rows.map((r) => r.row)
  return {
    tenants: await rows('SELECT to_jsonb(x) AS row FROM tenants x WHERE id = $1'),
    memberships: await rows('SELECT to_jsonb(x) AS row FROM memberships x WHERE tenant_id = $1 ORDER BY user_id'),
    notes: await rows('SELECT to_jsonb(x) AS row FROM notes x WHERE tenant_id = $1 ORDER BY id'),
    refresh_tokens: await rows('SELECT to_jsonb(x) AS row FROM refresh_tokens x WHERE tenant_id = $1 ORDER BY token_hash'),
    invitations: await rows('SELECT to_jsonb(x) AS row FROM invitations x WHERE tenant_id = $1 ORDER BY id'),
    users: await rows('SELECT to_jsonb(u) AS row FROM users u WHERE id IN (SELECT user_id FROM memberships WHERE tenant_id = $1) ORDER BY id')
  }
}

async function ids (db: TestDatabase, sql: string, values: unknown[]): Promise<string[]> {
  return (await db.query(sql, values)).rows.map((r) => r.id).sort()
}

/** The same refresh token with another tenant's id in front of its secret. */
function withTenant (refreshToken: string, tenantId: string): string {
  return `${tenantId}.${refreshToken.split('.')[1]}`
}

/** A's genuine access token with its tenant claim changed to B's, signature kept. */
function retargeted (accessToken: string, tenantId: string): string {
  const [version, payload, signature] = accessToken.split('.')
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
  const forged = Buffer.from(JSON.stringify({ ...claims, tid: tenantId })).toString('base64url')
  return `${version}.${forged}.${signature}`
}

interface World {
  app: App
  db: TestDatabase
  appDatabaseUrl: string
  appRole: string
  a: Tenant
  b: Tenant
}

interface Tenant {
  owner: Account
  admin: Account
  member: Account
  noteIds: string[]
  /** The token of an invitation not accepted yet. */
  pending: string
}

async function twoTenants (t: Test): Promise<World> {
  // Every attempt at an invitation below counts against the per-address limit, as it should.
  const { app, db, appDatabaseUrl, appRole } = await startService(t, { signupAttempts: 100 })
  async function tenant (name: string): Promise<Tenant> {
    const owner = await signUp(app, name)
    const admin = await addMember(app, owner, 'admin')
    const member = await addMember(app, owner, 'member')
    const noteIds = []
    for (const author of [owner, admin, member, member]) noteIds.push(await createNote(app, author, `${name} note ${noteIds.length}`))
    const pending = await invite(app, admin, `pending.${randomBytes(4).toString('hex')}@example.test`, 'member')
    return { owner, admin, member, noteIds: noteIds.sort(), pending }
  }
  const a = await tenant('Tenant A')
  const b = await tenant('Tenant B')
  return { app, db, appDatabaseUrl, appRole, a, b }
}

t.test('every tenant-scoped route refuses tenant A access to tenant B\'s rows, and B is unchanged', async (t) => {
  const { app, db, a, b } = await twoTenants(t)
  const before = await tenantRows(db, b.owner.tenantId)
  t.same(
    [before.tenants.length, before.memberships.length, before.notes.length, before.refresh_tokens.length, before.invitations.length, before.users.length],
    [1, 3, 4, 3, 4, 3],
    'B has a tenant, 3 members, 4 notes, 3 refresh tokens, 4 invitations (its owner\'s sign-up among them; one open) and 3 accounts to protect'
  )
  const beforeA = await tenantRows(db, a.owner.tenantId)
  const bUserIds = [b.owner.userId, b.admin.userId, b.member.userId]
  const bEmails = [b.owner.email, b.admin.email, b.member.email]
  // Every B id an attacker might know or guess, tried wherever a route takes an id.
  const bIds = [...b.noteIds, ...bUserIds, b.owner.tenantId]
  const attackers = { owner: a.owner, admin: a.admin, member: a.member }

  for (const [who, attacker] of Object.entries(attackers)) {
    t.test(`A's ${who} on the notes routes`, async (t) => {
      const list = await call(app, 'GET', '/notes', { as: attacker })
      t.equal(list.status, 200)
      t.same(list.body.map((n: { id: string }) => n.id).sort(), a.noteIds, 'GET /notes lists exactly A\'s notes')
      for (const id of bIds) {
        t.equal((await call(app, 'GET', `/notes/${id}`, { as: attacker })).status, 404, `GET /notes/${id}`)
        const patched = await call(app, 'PATCH', `/notes/${id}`, { as: attacker, payload: { title: 'pwned', body: 'pwned' } })
        t.same([patched.status, patched.body?.code], [404, 'NOT_FOUND'], `PATCH /notes/${id}`)
        const deleted = await call(app, 'DELETE', `/notes/${id}`, { as: attacker })
        t.same([deleted.status, deleted.body?.code], [404, 'NOT_FOUND'], `DELETE /notes/${id}`)
      }
    })

    t.test(`A's ${who} on the members routes and /me`, async (t) => {
      const members = await call(app, 'GET', '/members', { as: attacker })
      t.equal(members.status, 200)
      t.same(members.body.map((m: { userId: string }) => m.userId).sort(), [a.owner.userId, a.admin.userId, a.member.userId].sort(), 'GET /members lists exactly A\'s members')
      t.notOk(members.body.some((m: { email: string }) => bEmails.includes(m.email)), 'no B email')

      const me = await call(app, 'GET', '/me', { as: attacker })
      t.same([me.status, me.body.tenant, me.body.user.id], [200, { id: a.owner.tenantId, name: 'Tenant A' }, attacker.userId])

      // A token that names B's tenant is not a token: 401 on every authenticated route.
      for (const forged of [retargeted(attacker.accessToken, b.owner.tenantId), signAccessToken(randomBytes(32), { sub: attacker.userId, tid: b.owner.tenantId, sid: b.owner.tenantId }, 900)]) {
        for (const [method, url] of [['GET', '/me'], ['GET', '/members'], ['GET', '/notes'], ['GET', `/notes/${b.noteIds[0]}`], ['DELETE', `/notes/${b.noteIds[0]}`]] as const) {
          t.equal((await call(app, method, url, { as: { accessToken: forged } })).status, 401, `${method} ${url} with a forged tenant claim`)
        }
        const added = await call(app, 'POST', '/members', { as: { accessToken: forged }, payload: { email: 'intruder@example.test', role: 'admin' } })
        t.equal(added.status, 401, 'POST /members with a forged tenant claim')
        const patched = await call(app, 'PATCH', `/notes/${b.noteIds[0]}`, { as: { accessToken: forged }, payload: { title: 'pwned' } })
        t.equal(patched.status, 401, 'PATCH /notes/:id with a forged tenant claim')
      }
    })
  }

  t.test('POST /members and POST /invitations/accept cannot reach into B', async (t) => {
    const asMember = await call(app, 'POST', '/members', { as: a.member, payload: { email: 'member-adds@example.test', role: 'admin' } })
    t.same([asMember.status, asMember.body.code], [403, 'FORBIDDEN'], 'a plain member invites nobody')

    // Naming B's tenant in the body, or a password for the account: the schema refuses unknown
    // properties, and nothing is recorded.
    for (const extra of [{ tenantId: b.owner.tenantId }, { tenant_id: b.owner.tenantId }, { password: 'some password here' }]) {
      const [name] = Object.keys(extra)
      const smuggled = await call(app, 'POST', '/members', { as: a.admin, payload: { email: 'smuggled@example.test', role: 'member', ...extra } })
      t.same([smuggled.status, smuggled.body.message], [400, `body must NOT have additional property '${name}'`], `POST /members refuses ${name}`)
    }
    t.same((await db.query('SELECT (SELECT count(*) FROM users WHERE email = $1)::int AS users, (SELECT count(*) FROM invitations WHERE email = $1)::int AS invitations',
      ['smuggled@example.test'])).rows, [{ users: 0, invitations: 0 }], 'no account, no invitation')

    // Accounts are global: A may invite B's owner by email. That records an invitation in A, the
    // same answer as for an email without an account, and gives no access to anyone.
    const memberships = async (userId: string): Promise<unknown[]> =>
      (await db.query('SELECT tenant_id, role FROM memberships WHERE user_id = $1 ORDER BY role', [userId])).rows
    const hashOf = async (userId: string): Promise<string> => (await db.query('SELECT password_hash FROM users WHERE id = $1', [userId])).rows[0].password_hash
    const bOwnerHash = await hashOf(b.owner.userId)
    const invited = await call(app, 'POST', '/members', { as: a.owner, payload: { email: b.owner.email, role: 'member' } })
    const unknown = await call(app, 'POST', '/members', { as: a.owner, payload: { email: `nobody.${randomBytes(4).toString('hex')}@example.test`, role: 'member' } })
    t.same([invited.status, unknown.status], [201, 201])
    t.same(Object.keys(invited.body).sort(), ['email', 'expiresAt', 'role'], 'the invitation: no account id, no token (it is mailed)')
    const invitationToken = await mailedToken(app, b.owner.email, a.owner.tenantId)
    t.same(Object.keys(unknown.body).sort(), Object.keys(invited.body).sort(), 'the same answer whether or not the email has an account')
    t.same(await memberships(b.owner.userId), [{ tenant_id: b.owner.tenantId, role: 'owner' }], 'B\'s owner is in no new tenant yet')
    const early = await call(app, 'POST', '/login', { payload: { tenantId: a.owner.tenantId, email: b.owner.email, password: b.owner.password } })
    t.same([early.status, early.body.code], [401, 'INVALID_CREDENTIALS'], 'nor can log in to A')

    // Whoever holds the token must also hold the account's password: A's owner, guessing.
    const takeover = await call(app, 'POST', '/invitations/accept', { payload: { token: invitationToken, password: 'a guess at his password' } })
    t.same([takeover.status, takeover.body.code], [401, 'INVALID_CREDENTIALS'], 'the wrong password is refused')
    t.same(await memberships(b.owner.userId), [{ tenant_id: b.owner.tenantId, role: 'owner' }], 'and no membership was made')
    t.same((await db.query('SELECT accepted_at FROM invitations WHERE email = $1 AND tenant_id = $2', [b.owner.email, a.owner.tenantId])).rows, [{ accepted_at: null }], 'the invitation is still open')

    const accepted = await call(app, 'POST', '/invitations/accept', { payload: { token: invitationToken, password: b.owner.password } })
    t.equal(accepted.status, 200, 'B\'s owner accepts with his own password')
    t.match(accepted.body, { tenant: { id: a.owner.tenantId, name: 'Tenant A' }, user: { id: b.owner.userId, email: b.owner.email }, role: 'member' })
    t.same(await memberships(b.owner.userId), [{ tenant_id: a.owner.tenantId, role: 'member' }, { tenant_id: b.owner.tenantId, role: 'owner' }],
      'B\'s owner is a plain member of A, and still B\'s owner')
    t.equal(await hashOf(b.owner.userId), bOwnerHash, 'his password is unchanged')

    await call(app, 'POST', '/invitations/accept', { payload: { token: await invite(app, a.owner, b.member.email, 'admin'), password: b.member.password } })
    const twice = await call(app, 'POST', '/members', { as: a.owner, payload: { email: b.member.email, role: 'admin' } })
    t.same([twice.status, twice.body.code], [409, 'ALREADY_MEMBER'], 'the conflict is A\'s membership, not B\'s')

    // Even now, A's view of B's owner is limited to A: A's members list, not B's notes.
    const members = (await call(app, 'GET', '/members', { as: a.owner })).body.map((m: { userId: string }) => m.userId)
    t.same(members.filter((id: string) => bUserIds.includes(id)).sort(), [b.owner.userId, b.member.userId].sort())
    t.notOk(members.includes(b.admin.userId), 'B\'s admin, not added to A, stays invisible')
    const inA = await call(app, 'GET', '/notes', { as: accepted.body })
    t.same(inA.body.map((n: { id: string }) => n.id).sort(), a.noteIds, 'his session in A lists A\'s notes only')
  })

  t.test('POST /notes and PATCH /notes/:id cannot write into B', async (t) => {
    const smuggle = { tenantId: b.owner.tenantId, tenant_id: b.owner.tenantId, author_id: b.owner.userId, authorId: b.owner.userId, id: b.noteIds[0] }
    const row = 'SELECT id, tenant_id, author_id, title FROM notes WHERE id = $1'
    for (const [name, value] of Object.entries(smuggle)) {
      const res = await call(app, 'POST', '/notes', { as: a.member, payload: { title: 'smuggled', [name]: value } })
      t.same([res.status, res.body.message], [400, `body must NOT have additional property '${name}'`], `POST /notes refuses ${name}`)
    }
    t.same((await db.query('SELECT count(*)::int AS n FROM notes WHERE title = $1', ['smuggled'])).rows, [{ n: 0 }], 'no note was written')
    const res = await call(app, 'POST', '/notes', { as: a.member, payload: { title: 'honest' } })
    t.equal(res.status, 201)
    t.same((await db.query(row, [res.body.id])).rows, [{ id: res.body.id, tenant_id: a.owner.tenantId, author_id: a.member.userId, title: 'honest' }], 'the note is A\'s, by A\'s member')
    for (const [name, value] of Object.entries(smuggle)) {
      const patched = await call(app, 'PATCH', `/notes/${res.body.id}`, { as: a.member, payload: { title: 'moved?', [name]: value } })
      t.equal(patched.status, 400, `PATCH /notes/:id refuses ${name}`)
    }
    t.same((await db.query(row, [res.body.id])).rows, [{ id: res.body.id, tenant_id: a.owner.tenantId, author_id: a.member.userId, title: 'honest' }], 'the note is unchanged: still A\'s')
    t.equal((await call(app, 'DELETE', `/notes/${res.body.id}`, { as: a.member })).status, 204)
  })

  t.test('invitation tokens of B re-prefixed, or A\'s pointed at B', async (t) => {
    const aPending = await invite(app, a.admin, `a.pending.${randomBytes(4).toString('hex')}@example.test`, 'admin')
    const tokens = {
      'B\'s open invitation with A\'s tenant id': withTenant(b.pending, a.owner.tenantId),
      'A\'s open invitation with B\'s tenant id': withTenant(aPending, b.owner.tenantId),
      'B\'s tenant id with a made-up secret': `${b.owner.tenantId}.${randomBytes(32).toString('base64url')}`,
      'B\'s refresh token as an invitation': b.owner.refreshToken
    }
    for (const [name, token] of Object.entries(tokens)) {
      const accepted = await call(app, 'POST', '/invitations/accept', { payload: { token, password: 'a new password here' } })
      t.same([accepted.status, accepted.body.code], [401, 'INVALID_INVITATION'], `POST /invitations/accept: ${name}`)
    }
  })

  t.test('the refresh-token routes with B\'s tokens re-prefixed, or A\'s pointed at B', async (t) => {
    const tokens = {
      'B\'s owner token with A\'s tenant id': withTenant(b.owner.refreshToken, a.owner.tenantId),
      'B\'s member token with A\'s tenant id': withTenant(b.member.refreshToken, a.owner.tenantId),
      'A\'s token with B\'s tenant id': withTenant(a.member.refreshToken, b.owner.tenantId),
      'B\'s tenant id with a made-up secret': `${b.owner.tenantId}.${randomBytes(32).toString('base64url')}`
    }
    for (const [name, token] of Object.entries(tokens)) {
      const refreshed = await call(app, 'POST', '/refresh', { payload: { refreshToken: token } })
      t.same([refreshed.status, refreshed.body.code], [401, 'INVALID_REFRESH_TOKEN'], `POST /refresh: ${name}`)
    }
    for (const [name, token] of Object.entries(tokens)) {
      t.equal((await call(app, 'POST', '/logout', { payload: { refreshToken: token } })).status, 204, `POST /logout answers alike: ${name}`)
    }
    // A's own credentials do not open B.
    const login = await call(app, 'POST', '/login', { payload: { tenantId: b.owner.tenantId, email: a.owner.email, password: a.owner.password } })
    t.same([login.status, login.body.code], [401, 'INVALID_CREDENTIALS'], 'A\'s owner cannot log in to B')
  })

  t.test('afterwards', async (t) => {
    t.strictSame(await tenantRows(db, b.owner.tenantId), before, 'every B row is exactly as it was')
    const afterA = await tenantRows(db, a.owner.tenantId)
    t.strictSame(afterA.notes, beforeA.notes, 'A\'s notes too (the attacks found nothing to change)')
    const hashes = new Set(beforeA.refresh_tokens.map((row) => (row as { token_hash: string }).token_hash))
    t.strictSame(afterA.refresh_tokens.filter((row) => hashes.has((row as { token_hash: string }).token_hash)), beforeA.refresh_tokens,
      'the logouts of re-prefixed tokens revoked nothing of A\'s either (B\'s owner and member joined A since, with sessions of their own)')
    // B's tokens still work, so nothing was revoked or used behind the snapshot's back.
    const refreshed = await call(app, 'POST', '/refresh', { payload: { refreshToken: b.member.refreshToken } })
    t.equal(refreshed.status, 200)
    const me = await call(app, 'GET', '/me', { as: refreshed.body })
    t.same(me.body.tenant, { id: b.owner.tenantId, name: 'Tenant B' })
    t.same((await call(app, 'GET', '/notes', { as: refreshed.body })).body.map((n: { id: string }) => n.id).sort(), b.noteIds, 'B still has all 4 notes')
    const joined = await call(app, 'POST', '/invitations/accept', { payload: { token: b.pending, password: 'a new password here' } })
    t.same([joined.status, joined.body.tenant?.id], [200, b.owner.tenantId], 'and B\'s open invitation still works for its invitee')
    t.equal(await db.idleInTransaction(), 0)
  })
})

t.test('in the database: the app role sees nothing without a tenant, only its tenant with one, and cannot write across', async (t) => {
  const { db, appDatabaseUrl, appRole, a, b } = await twoTenants(t)
  const A = a.owner.tenantId
  const B = b.owner.tenantId
  const tables = ['notes', 'memberships', 'refresh_tokens', 'invitations', 'tenants', 'users']
  const countSql = `SELECT ${tables.map((table) => `(SELECT count(*) FROM ${table})::int AS ${table}`).join(', ')}`
  const everything = (await db.query(countSql)).rows[0]
  t.same(everything, { notes: 8, memberships: 6, refresh_tokens: 6, invitations: 8, tenants: 2, users: 6 }, 'as the owner, both tenants\' rows exist')

  const client = new pg.Client({ connectionString: appDatabaseUrl })
  await client.connect()
  try {
    const role = (await client.query('SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user')).rows
    t.same(role, [{ name: appRole, rolsuper: false, rolbypassrls: false }], 'connected as the app role: no superuser, no BYPASSRLS')
    const owners = (await db.query("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")).rows
    t.same(owners.map((row) => row.tablename), ['invitations', 'kysely_migration', 'kysely_migration_lock', 'memberships', 'notes', 'refresh_tokens', 'tenants', 'users'])
    t.notOk(owners.some((row) => row.tableowner === appRole), 'none of them is the app role\'s')
    t.equal((await db.query('SELECT count(*)::int AS n FROM pg_tables WHERE tableowner = $1', [appRole])).rows[0].n, 0, 'the app role owns no table anywhere')
    await t.rejects(client.query('ALTER TABLE notes DISABLE ROW LEVEL SECURITY'), { code: '42501' }, 'so it cannot switch RLS off')

    t.same((await client.query(countSql)).rows[0], { notes: 0, memberships: 0, refresh_tokens: 0, invitations: 0, tenants: 0, users: 0 }, 'no context: nothing is visible (fail closed)')
    t.equal((await client.query("SELECT nullif(current_setting('app.tenant_id', true), '') AS v")).rows[0].v, null)

    await client.query('BEGIN')
    await client.query("SELECT set_config('app.tenant_id', '', true)")
    t.same((await client.query(countSql)).rows[0], { notes: 0, memberships: 0, refresh_tokens: 0, invitations: 0, tenants: 0, users: 0 }, 'an empty tenant: nothing either')
    await client.query("SELECT set_config('app.tenant_id', $1, true)", [A])
    t.same((await client.query(countSql)).rows[0], { notes: 4, memberships: 3, refresh_tokens: 3, invitations: 4, tenants: 1, users: 3 }, 'tenant A: A\'s rows only')
    t.same((await client.query('SELECT id FROM notes ORDER BY id')).rows.map((r) => r.id), a.noteIds, 'exactly A\'s notes')
    t.same((await client.query('SELECT id FROM tenants')).rows, [{ id: A }])
    t.same((await client.query('SELECT DISTINCT tenant_id FROM memberships UNION SELECT DISTINCT tenant_id FROM refresh_tokens UNION SELECT DISTINCT tenant_id FROM invitations')).rows, [{ tenant_id: A }])
    t.same((await client.query('SELECT id FROM users ORDER BY id')).rows.map((r) => r.id), [a.owner.userId, a.admin.userId, a.member.userId].sort())
    t.same((await client.query('SELECT id FROM notes WHERE id = ANY($1::uuid[])', [b.noteIds])).rows, [], 'B\'s notes by id: none')
    t.same((await client.query('SELECT id, email FROM users WHERE id = $1', [b.owner.userId])).rows, [], 'B\'s owner\'s account: not visible')

    const rlsViolation = { code: '42501', message: /row-level security/ }
    async function refused (sql: string, values: unknown[], message: string): Promise<void> {
      await client.query('SAVEPOINT attempt')
      await t.rejects(client.query(sql, values), rlsViolation, message)
      await client.query('ROLLBACK TO SAVEPOINT attempt')
    }
    await refused('INSERT INTO notes (tenant_id, author_id, title) VALUES ($1, $2, $3)', [B, a.owner.userId, 'planted'], 'INSERT a note with B\'s tenant_id')
    await refused('UPDATE notes SET tenant_id = $1 WHERE id = $2', [B, a.noteIds[0]], 'moving A\'s note into B')
    await refused("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'owner')", [B, a.owner.userId], 'joining B as its owner')
    await refused("INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, user_id, expires_at) VALUES ('\\x00', gen_random_uuid(), $1, $2, now() + interval '1 day')", [B, b.owner.userId], 'minting a refresh token for B')
    await refused("INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'another')", [], 'creating a tenant other than the current one')
    await refused("INSERT INTO invitations (tenant_id, email, role, token_hash, expires_at, created_by) VALUES ($1, 'spy@example.test', 'admin', '\\x01', now() + interval '1 day', $2)",
      [B, a.owner.userId], 'inviting someone into B')
    t.equal((await client.query('UPDATE invitations SET accepted_at = now() WHERE tenant_id = $1', [B])).rowCount, 0, 'UPDATE of B\'s invitations changes nothing')
    t.equal((await client.query("UPDATE notes SET title = 'pwned' WHERE tenant_id = $1", [B])).rowCount, 0, 'UPDATE of B\'s notes changes nothing')
    t.equal((await client.query('DELETE FROM notes WHERE id = ANY($1::uuid[])', [b.noteIds])).rowCount, 0, 'DELETE of B\'s notes deletes nothing')
    t.equal((await client.query('DELETE FROM memberships WHERE tenant_id = $1', [B])).rowCount, 0)
    t.equal((await client.query('UPDATE refresh_tokens SET revoked_at = now() WHERE tenant_id = $1', [B])).rowCount, 0)
    t.equal((await client.query("SELECT current_setting('app.tenant_id', true) AS v")).rows[0].v, A)
    t.equal((await client.query('COMMIT')).command, 'COMMIT')

    t.equal((await client.query("SELECT current_setting('app.tenant_id', true) AS v")).rows[0].v, '', 'after COMMIT the setting is empty again')
    t.same((await client.query(countSql)).rows[0], { notes: 0, memberships: 0, refresh_tokens: 0, invitations: 0, tenants: 0, users: 0 }, 'and nothing is visible again')
  } finally {
    await client.end()
  }
  t.same((await db.query(countSql)).rows[0], everything, 'nothing was written')
  t.same(await ids(db, 'SELECT id FROM notes WHERE tenant_id = $1 AND title <> $2', [B, 'pwned']), b.noteIds, 'B\'s notes are intact')
})

t.test('the notes routes filter by no tenant, yet A never sees B\'s notes among many', async (t) => {
  const { app, db } = await startService(t)
  const a = await signUp(app, 'Tenant A')
  const b = await signUp(app, 'Tenant B')
  const aMember = await addMember(app, a, 'member')
  for (let i = 0; i < 10; i++) await createNote(app, i % 2 === 0 ? a : aMember, `A via API ${i}`)
  for (let i = 0; i < 10; i++) await createNote(app, b, `B via API ${i}`)
  // Many more, as the owner: A's are older, B's newer, so a list "newest 100" without a tenant
  // filter would be all B's.
  await db.query(`INSERT INTO notes (tenant_id, author_id, title, created_at)
    SELECT $1, $2, 'A bulk ' || i, now() - interval '1 hour' - i * interval '1 second' FROM generate_series(1, 70) AS i`, [a.tenantId, a.userId])
  await db.query(`INSERT INTO notes (tenant_id, author_id, title, created_at)
    SELECT $1, $2, 'B bulk ' || i, now() + interval '1 hour' + i * interval '1 second' FROM generate_series(1, 400) AS i`, [b.tenantId, b.userId])
  const aIds = await ids(db, 'SELECT id FROM notes WHERE tenant_id = $1', [a.tenantId])
  const bIds = await ids(db, 'SELECT id FROM notes WHERE tenant_id = $1', [b.tenantId])
  t.same([aIds.length, bIds.length], [80, 410])

  const handlersQuery = 'SELECT id FROM notes ORDER BY created_at DESC LIMIT 100'
  const unfiltered = (await db.query(handlersQuery)).rows.map((r) => r.id)
  t.ok(unfiltered.every((id: string) => bIds.includes(id)), 'the handler\'s query, run without RLS, returns B\'s notes only')

  for (const who of [a, aMember]) {
    const list = await call(app, 'GET', '/notes', { as: who })
    t.equal(list.status, 200)
    const listed = list.body.map((n: { id: string }) => n.id)
    t.equal(listed.length, 80, 'all of A\'s 80 notes, under the limit of 100')
    t.same([...listed].sort(), aIds, 'exactly A\'s notes')
    t.notOk(listed.some((id: string) => bIds.includes(id)), 'none of B\'s 410')
  }
  const bList = await call(app, 'GET', '/notes', { as: b })
  t.equal(bList.body.length, 100, 'B sees its newest 100')
  t.ok(bList.body.every((n: { id: string }) => bIds.includes(n.id)), 'all B\'s')

  // Every one of B's 410 ids, fetched by id as A: not found.
  const fetched = await Promise.all(bIds.map((id) => call(app, 'GET', `/notes/${id}`, { as: aMember })))
  t.same(fetched.filter((res) => res.status !== 404).length, 0, 'GET /notes/:id: 404 for all 410 of B\'s ids')
  t.same((await db.query('SELECT count(*)::int AS n FROM notes WHERE tenant_id = $1', [b.tenantId])).rows[0].n, 410)
  t.equal(await db.idleInTransaction(), 0)
})
