// Passwords, login timing and rate limits, refresh-token rotation and revocation, who may add
// members, and accepting invitations.
import { randomBytes, scryptSync } from 'node:crypto'
import t from 'tap'
import { addMember, bearer, invite, mails, signUp, startService, TEST_PASSWORD_COST } from './service.js'
import type { App } from '../app.js'
import type { TestDatabase } from '../../../test/helpers/database.js'
import { verifyPassword } from '../passwords.js'
import { hashRefreshToken } from '../tokens.js'

// Hundreds of requests and password hashes: more than tap's 30 s default on a loaded machine.
t.setTimeout(120_000)

const TABLES = ['tenants', 'users', 'memberships', 'notes', 'refresh_tokens', 'invitations']

/** Row count and a digest of every row of every table: equal snapshots mean nothing was written. */
async function snapshot (db: TestDatabase): Promise<Record<string, { rows: number, digest: string }>> {
  const { rows } = await db.query<{ name: string, rows: number, digest: string }>(TABLES.map((table) =>
    `SELECT '${table}' AS name, count(*)::int AS rows, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS digest FROM ${table} x`
  ).join(' UNION ALL '))
  return Object.fromEntries(rows.map((row) => [row.name, { rows: row.rows, digest: row.digest }]))
}

interface Reply { status: number, body: any }

async function post (app: App, url: string, payload: object, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await app.inject({ method: 'POST', url, payload, headers })
  return { status: res.statusCode, body: res.body === '' ? null : res.json() }
}

function login (app: App, tenantId: string, email: string, password: string): Promise<Reply> {
  return post(app, '/login', { tenantId, email, password })
}

function refresh (app: App, refreshToken: string): Promise<Reply> {
  return post(app, '/refresh', { refreshToken })
}

interface Hash { scheme: string, N: number, r: number, p: number, salt: Buffer, key: Buffer }

function parseHash (stored: string): Hash {
  const [scheme, N, r, p, salt, key, ...rest] = stored.split('$')
  if (rest.length > 0) throw new Error(`unexpected hash format: ${stored}`)
  return { scheme, N: Number(N), r: Number(r), p: Number(p), salt: Buffer.from(salt, 'base64url'), key: Buffer.from(key, 'base64url') }
}

async function passwordHash (db: TestDatabase, userId: string): Promise<string> {
  const { rows } = await db.query<{ password_hash: string }>('SELECT password_hash FROM users WHERE id = $1', [userId])
  if (rows.length !== 1) throw new Error(`no user ${userId}`)
  return rows[0].password_hash
}

interface TokenRow { family_id: string, user_id: string, used_at: Date | null, revoked_at: Date | null }

async function tokenRow (db: TestDatabase, refreshToken: string): Promise<TokenRow | undefined> {
  const { rows } = await db.query<TokenRow>(
    'SELECT family_id, user_id, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1', [hashRefreshToken(refreshToken)])
  return rows[0]
}

async function family (db: TestDatabase, familyId: string): Promise<Array<{ used: boolean, revoked: boolean }>> {
  const { rows } = await db.query<{ used: boolean, revoked: boolean }>(
    'SELECT used_at IS NOT NULL AS used, revoked_at IS NOT NULL AS revoked FROM refresh_tokens WHERE family_id = $1 ORDER BY created_at, used_at NULLS LAST',
    [familyId])
  return rows
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

t.test('passwords', async (t) => {
  const { app, db } = await startService(t)

  t.test('two accounts with the same password get different hashes: a salt per user', async (t) => {
    const first = await signUp(app)
    const second = await signUp(app)
    t.equal(first.password, second.password, 'the same password for both')
    const third = await addMember(app, first, 'member', { password: first.password })
    const hashes: string[] = []
    for (const account of [first, second, third]) hashes.push(await passwordHash(db, account.userId))
    t.equal(new Set(hashes).size, 3, 'three different stored hashes')
    const salts = hashes.map((hash) => parseHash(hash).salt.toString('hex'))
    t.equal(new Set(salts).size, 3, 'three different salts')
    for (const hash of hashes) t.ok(await verifyPassword(first.password, hash), 'each one still verifies the shared password')
  })

  t.test('a stored hash is scrypt with the configured cost', async (t) => {
    const account = await signUp(app)
    const stored = await passwordHash(db, account.userId)
    const hash = parseHash(stored)
    t.same({ scheme: hash.scheme, N: hash.N, r: hash.r, p: hash.p }, { scheme: 'scrypt', ...TEST_PASSWORD_COST }, 'scheme and cost parameters')
    t.same(app.settings.passwordCost, TEST_PASSWORD_COST, 'the app runs with the configured cost')
    t.equal(hash.salt.length, 16, 'a 16-byte salt')
    t.equal(hash.key.length, 32, 'a 32-byte key')
    t.notOk(stored.includes(account.password), 'the password itself is not stored')
    // Recomputed independently with node:crypto: it really is scrypt(password, salt) with these parameters.
    const key = scryptSync(account.password.normalize('NFKC'), hash.salt, 32, { N: hash.N, r: hash.r, p: hash.p, maxmem: 256 * hash.N * hash.r })
    t.ok(key.equals(hash.key), 'scrypt with the stored salt and cost gives the stored key')
  })

  t.test('verifyPassword rejects a wrong password, and so does login', async (t) => {
    const account = await signUp(app)
    const stored = await passwordHash(db, account.userId)
    t.equal(await verifyPassword(account.password, stored), true, 'the right password verifies')
    for (const wrong of ['', 'wrong password', account.password + ' ', account.password.toUpperCase(), account.password.slice(0, -1)]) {
      t.equal(await verifyPassword(wrong, stored), false, `rejects ${JSON.stringify(wrong)}`)
    }
    t.equal(await verifyPassword(account.password, stored.replace(/^scrypt/, 'bcrypt')), false, 'rejects an unknown scheme')
    const res = await login(app, account.tenantId, account.email, 'wrong password')
    t.same([res.status, res.body.code], [401, 'INVALID_CREDENTIALS'])
    t.equal((await login(app, account.tenantId, account.email, account.password)).status, 200, 'the right password logs in')
  })
})

t.test('an unknown email costs the same scrypt as a wrong password', async (t) => {
  const cost = { N: 2 ** 14, r: 8, p: 1 }
  const { app, db } = await startService(t, { passwordCost: cost, loginAttempts: 100 })
  const account = await signUp(app)
  const real = parseHash(await passwordHash(db, account.userId))
  const dummy = parseHash(app.settings.dummyPasswordHash)
  t.same({ scheme: real.scheme, N: real.N, r: real.r, p: real.p }, { scheme: 'scrypt', ...cost }, 'real hashes use the configured cost')
  t.same({ scheme: dummy.scheme, N: dummy.N, r: dummy.r, p: dummy.p }, { scheme: real.scheme, N: real.N, r: real.r, p: real.p },
    'the dummy hash has the same scrypt parameters as real ones')
  t.same([dummy.salt.length, dummy.key.length], [real.salt.length, real.key.length], 'and the same salt and key sizes')
  t.equal(await verifyPassword(account.password, app.settings.dummyPasswordHash), false, 'the dummy hash matches no real password')

  const unknown: number[] = []
  const wrong: number[] = []
  async function timed (email: string): Promise<number> {
    const start = process.hrtime.bigint()
    const res = await login(app, account.tenantId, email, 'not the password')
    const millis = Number(process.hrtime.bigint() - start) / 1e6
    if (res.status !== 401) throw new Error(`expected 401, got ${res.status} ${JSON.stringify(res.body)}`)
    return millis
  }
  await timed(account.email) // warm-up
  for (let i = 0; i < 8; i++) {
    wrong.push(await timed(account.email))
    unknown.push(await timed(`nobody${i}@example.test`))
  }
  const ratio = median(unknown) / median(wrong)
  t.ok(ratio >= 0.5, `median unknown-email login ${median(unknown).toFixed(1)} ms vs wrong-password ${median(wrong).toFixed(1)} ms: ratio ${ratio.toFixed(2)} >= 0.5`)
})

t.test('login is rate limited per email and address', async (t) => {
  const { app, db } = await startService(t, { loginAttempts: 3 })
  const owner = await signUp(app)
  const other = await addMember(app, owner, 'member')
  for (let i = 1; i <= 3; i++) {
    t.equal((await login(app, owner.tenantId, owner.email, `wrong password ${i}`)).status, 401, `attempt ${i} is heard (401)`)
  }
  const tokensBefore = (await snapshot(db)).refresh_tokens
  const blocked = await login(app, owner.tenantId, owner.email, owner.password)
  t.equal(blocked.status, 429, 'the 4th attempt is refused, even with the right password')
  t.equal((await login(app, owner.tenantId, owner.email.toUpperCase(), owner.password)).status, 429, 'the same email in other case counts as the same')
  t.same((await snapshot(db)).refresh_tokens, tokensBefore, 'no session was issued')
  const allowed = await login(app, owner.tenantId, other.email, other.password)
  t.equal(allowed.status, 200, 'another email from the same address still gets through')
})

t.test('login is limited per address too, whatever the email', async (t) => {
  const { app, db } = await startService(t, { loginAttempts: 3, loginAttemptsPerAddress: 5 })
  const owner = await signUp(app)
  const from = (remoteAddress: string, email: string, password = 'a wrong password'): Promise<number> =>
    app.inject({ method: 'POST', url: '/login', payload: { tenantId: owner.tenantId, email, password }, remoteAddress }).then((res) => res.statusCode)
  const statuses: number[] = []
  for (let i = 0; i < 12; i++) statuses.push(await from('10.0.1.1', `someone${i}@example.test`))
  t.same(statuses, [...Array(5).fill(401), ...Array(7).fill(429)], 'five attempts with five different emails are heard, the rest refused')
  const tokensBefore = (await snapshot(db)).refresh_tokens
  t.equal(await from('10.0.1.1', owner.email, owner.password), 429, 'the right credentials too, from that address')
  t.same((await snapshot(db)).refresh_tokens, tokensBefore, 'no session was issued')
  t.equal(await from('10.0.1.2', owner.email, owner.password), 200, 'another address logs in')
})

t.test('refresh tokens rotate; a reused one revokes its family only', async (t) => {
  const { app, db } = await startService(t)
  const account = await signUp(app)
  const otherSession = await login(app, account.tenantId, account.email, account.password)
  t.equal(otherSession.status, 200, 'a second session of the same user')

  const firstRow = await tokenRow(db, account.refreshToken)
  const otherRow = await tokenRow(db, otherSession.body.refreshToken)
  t.ok(firstRow !== undefined && otherRow !== undefined, 'both refresh tokens are stored (hashed)')
  t.not(firstRow!.family_id, otherRow!.family_id, 'each login starts a family of its own')

  const rotated = await refresh(app, account.refreshToken)
  t.equal(rotated.status, 200, 'the refresh token works once')
  t.not(rotated.body.refreshToken, account.refreshToken, 'and is replaced by a new one')
  t.match(rotated.body, { accessToken: String, expiresIn: app.settings.accessTokenSeconds })
  t.match(await tokenRow(db, account.refreshToken), { used_at: Date, revoked_at: null }, 'the old token is marked used')
  t.match(await tokenRow(db, rotated.body.refreshToken), { family_id: firstRow!.family_id, used_at: null, revoked_at: null }, 'the new one is in the same family')
  t.equal((await post(app, '/notes', { title: 'from the rotated session' }, bearer(rotated.body))).status, 201, 'the rotated access token works')

  const reused = await refresh(app, account.refreshToken)
  t.same([reused.status, reused.body.code], [401, 'REFRESH_TOKEN_REUSED'], 'reusing it is refused')
  t.same(await family(db, firstRow!.family_id), [{ used: true, revoked: true }, { used: false, revoked: true }],
    'the whole family is revoked in the database: revoked_at is set on both tokens')
  const afterReuse = await refresh(app, rotated.body.refreshToken)
  t.same([afterReuse.status, afterReuse.body.code], [401, 'INVALID_REFRESH_TOKEN'], 'the token the rotation issued stops working')
  t.same(await family(db, otherRow!.family_id), [{ used: false, revoked: false }], 'the other session is not revoked')

  const other = await refresh(app, otherSession.body.refreshToken)
  t.equal(other.status, 200, 'the other session of the same user still refreshes')
  t.equal((await refresh(app, other.body.refreshToken)).status, 200, 'and keeps rotating')
})

t.test('a reused refresh token is answered at once on a pool of one connection, and revokes its family', async (t) => {
  const { app, db } = await startService(t, { maxConnections: 1 })
  const account = await signUp(app)
  const otherSession = await login(app, account.tenantId, account.email, account.password)
  const familyId = (await tokenRow(db, account.refreshToken))!.family_id
  const rotated = await refresh(app, account.refreshToken)
  t.equal(rotated.status, 200)

  const started = performance.now()
  const reused = await refresh(app, account.refreshToken)
  const millis = performance.now() - started
  t.same([reused.status, reused.body.code], [401, 'REFRESH_TOKEN_REUSED'], 'refused as a reuse, not 503')
  t.ok(millis < 1000, `answered in ${millis.toFixed(0)} ms, well under the 5 s acquire timeout`)
  t.same(await family(db, familyId), [{ used: true, revoked: true }, { used: false, revoked: true }], 'the revocation committed with the 401')
  t.same([(await refresh(app, rotated.body.refreshToken)).status, (await refresh(app, otherSession.body.refreshToken)).status], [401, 200],
    'the rotated token is dead; the other session lives')
  t.match(app.db.stats(), { acquireTimeouts: 0, active: 0 })
  t.equal(await db.idleInTransaction(), 0)
})

t.test('20 reuses at once on a pool of 2 are all refused as reuses, and every family is revoked', async (t) => {
  const { app, db } = await startService(t, { maxConnections: 2, loginAttempts: 100 })
  const account = await signUp(app)
  const sessions: Array<{ first: string, rotated: string, familyId: string }> = []
  for (let i = 0; i < 20; i++) {
    const session = await login(app, account.tenantId, account.email, account.password)
    const rotated = await refresh(app, session.body.refreshToken)
    if (session.status !== 200 || rotated.status !== 200) throw new Error(`session ${i}: ${session.status} ${rotated.status}`)
    sessions.push({ first: session.body.refreshToken, rotated: rotated.body.refreshToken, familyId: (await tokenRow(db, session.body.refreshToken))!.family_id })
  }
  const untouched = account.refreshToken

  const answers = await Promise.all(sessions.map((session) => refresh(app, session.first)))
  t.same(answers.map((res) => `${res.status} ${res.body.code}`), Array(20).fill('401 REFRESH_TOKEN_REUSED'), 'all 20 answered 401 REFRESH_TOKEN_REUSED')
  const families = await Promise.all(sessions.map((session) => family(db, session.familyId)))
  t.same(families, Array(20).fill([{ used: true, revoked: true }, { used: false, revoked: true }]), 'all 20 families revoked, the rotated tokens too')
  const rotatedAnswers = await Promise.all(sessions.map((session) => refresh(app, session.rotated)))
  t.same(rotatedAnswers.map((res) => res.status), Array(20).fill(401), 'no rotated token refreshes')
  t.equal((await refresh(app, untouched)).status, 200, 'the sign-up\'s own session is untouched')
  t.match(app.db.stats(), { acquireTimeouts: 0, active: 0 })
})

t.test('logout', async (t) => {
  const { app, db } = await startService(t)
  const account = await signUp(app)
  const otherSession = await login(app, account.tenantId, account.email, account.password)

  const out = await app.inject({ method: 'POST', url: '/logout', payload: { refreshToken: account.refreshToken } })
  t.same([out.statusCode, out.body], [204, ''], 'answers 204 with no body')
  t.match(await tokenRow(db, account.refreshToken), { revoked_at: Date }, 'revoked_at is set')
  const after = await refresh(app, account.refreshToken)
  t.same([after.status, after.body.code], [401, 'INVALID_REFRESH_TOKEN'], 'the token no longer refreshes')

  // Logging out with any token of a family ends the whole session, rotated tokens included.
  const rotated = await refresh(app, otherSession.body.refreshToken)
  t.equal(rotated.status, 200)
  t.equal((await app.inject({ method: 'POST', url: '/logout', payload: { refreshToken: rotated.body.refreshToken } })).statusCode, 204)
  t.equal((await refresh(app, rotated.body.refreshToken)).status, 401, 'the rotated token is revoked too')

  const third = await login(app, account.tenantId, account.email, account.password)
  const before = await snapshot(db)
  for (const refreshToken of [`${account.tenantId}.${randomBytes(32).toString('base64url')}`, 'not a token', '']) {
    const res = await app.inject({ method: 'POST', url: '/logout', payload: { refreshToken } })
    t.equal(res.statusCode, 204, `204 for an unknown token ${JSON.stringify(refreshToken.slice(0, 40))}`)
  }
  t.same(await snapshot(db), before, 'unknown tokens change nothing')
  t.equal((await refresh(app, third.body.refreshToken)).status, 200, 'another session of the same user is unaffected by all of this')
})

t.test('an expired refresh token is refused', async (t) => {
  const { app, db } = await startService(t)
  const account = await signUp(app)
  const otherSession = await login(app, account.tenantId, account.email, account.password)
  const { rowCount } = await db.query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
    [hashRefreshToken(account.refreshToken)])
  t.equal(rowCount, 1, 'the token expired in the database')
  const before = await snapshot(db)
  const res = await refresh(app, account.refreshToken)
  t.same([res.status, res.body.code], [401, 'INVALID_REFRESH_TOKEN'])
  t.same(await snapshot(db), before, 'nothing written: not marked used, no new token')
  t.equal((await refresh(app, otherSession.body.refreshToken)).status, 200, 'an unexpired token of the same user works')
})

t.test('a member removed from the tenant can no longer refresh', async (t) => {
  const { app, db } = await startService(t)
  const owner = await signUp(app)
  const member = await addMember(app, owner, 'member')
  const rotated = await refresh(app, member.refreshToken)
  t.equal(rotated.status, 200, 'a member refreshes while still a member')

  const { rowCount } = await db.query('DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2', [owner.tenantId, member.userId])
  t.equal(rowCount, 1, 'the membership is gone')
  const before = await snapshot(db)
  const res = await refresh(app, rotated.body.refreshToken)
  t.same([res.status, res.body.code], [401, 'INVALID_REFRESH_TOKEN'], 'the refresh is refused')
  t.same(await snapshot(db), before, 'nothing written: no new token, the old one not marked used')
  t.equal((await refresh(app, owner.refreshToken)).status, 200, 'the owner still refreshes')

  t.test('GET /me with the removed member\'s still-valid access token answers 4xx, not 500', async (t) => {
    const me = await app.inject({ method: 'GET', url: '/me', headers: bearer(rotated.body) })
    t.ok(me.statusCode >= 400 && me.statusCode < 500, `status ${me.statusCode}: ${me.body}`)
  })
})

t.test('who may add members', async (t) => {
  const { app, db } = await startService(t)
  const owner = await signUp(app)
  const admin = await addMember(app, owner, 'admin')
  const member = await addMember(app, owner, 'member')

  let before = await snapshot(db)
  const forbidden = await post(app, '/members', { email: 'newcomer@example.test', role: 'member' }, bearer(member))
  t.same([forbidden.status, forbidden.body.code], [403, 'FORBIDDEN'], 'a member cannot add members')
  t.same(await snapshot(db), before, 'no invitation, account or membership was created')

  before = await snapshot(db)
  const owners = await post(app, '/members', { email: 'usurper@example.test', role: 'owner' }, bearer(admin))
  t.equal(owners.status, 400, 'an admin cannot grant owner')
  t.match(owners.body.message, /body\/role\b/, 'the schema names the role field')
  const withPassword = await post(app, '/members', { email: 'usurper@example.test', role: 'member', password: 'a fine password' }, bearer(admin))
  t.same([withPassword.status, withPassword.body.message], [400, 'body must NOT have additional property \'password\''], 'nor choose a password for anyone')
  t.same(await snapshot(db), before, 'nothing written')

  const added = await post(app, '/members', { email: 'Newcomer@example.test', role: 'member' }, bearer(admin))
  t.match(added, { status: 201, body: { email: 'newcomer@example.test', role: 'member' } }, 'an admin does invite a member')
  t.notOk('invitationToken' in added.body, 'the inviter is not given the token')
  const mailed = (await mails(app)).filter((mail) => mail.to === 'newcomer@example.test')
  t.equal(mailed.length, 1, 'the invitee is mailed once')
  t.match(mailed[0], { subject: /^You are invited to Tenant \d+$/, token: new RegExp(`^${owner.tenantId}\\.[\\w-]{43}$`) }, 'with the token')
  t.ok(new Date(added.body.expiresAt).getTime() - Date.now() > 6.9 * 86_400_000, `expiring in 7 days (${added.body.expiresAt})`)
  const { rows } = await db.query('SELECT tenant_id, email, role, created_by, token_hash, accepted_at, accepted_by FROM invitations WHERE email = $1', ['newcomer@example.test'])
  t.same(rows, [{ tenant_id: owner.tenantId, email: 'newcomer@example.test', role: 'member', created_by: admin.userId, token_hash: hashRefreshToken(mailed[0].token!), accepted_at: null, accepted_by: null }],
    'recorded in the tenant, by the admin, with the token\'s hash only')
  t.same((await db.query('SELECT count(*)::int AS n FROM users WHERE email = $1', ['newcomer@example.test'])).rows[0].n, 0, 'no account yet')
  const adminAdded = await post(app, '/members', { email: 'deputy@example.test', role: 'admin' }, bearer(admin))
  t.same([adminAdded.status, adminAdded.body.role], [201, 'admin'], 'and an admin')
  const already = await post(app, '/members', { email: member.email.toUpperCase(), role: 'admin' }, bearer(admin))
  t.same([already.status, already.body.code], [409, 'ALREADY_MEMBER'], 'a member of the tenant is not invited again')
})

t.test('accepting an invitation', async (t) => {
  const { app, db } = await startService(t, { signupAttempts: 100 })
  const owner = await signUp(app)
  const elsewhere = await signUp(app)
  const accept = (token: string, password: string): Promise<Reply> => post(app, '/invitations/accept', { token, password })

  t.test('a new email gets an account with the password given, and is logged in', async (t) => {
    const token = await invite(app, owner, 'fresh@example.test', 'admin')
    const res = await accept(token, 'fresh password here')
    t.equal(res.status, 200)
    t.match(res.body, { tenant: { id: owner.tenantId }, user: { id: String, email: 'fresh@example.test' }, role: 'admin', accessToken: String, refreshToken: String })
    t.equal((await login(app, owner.tenantId, 'fresh@example.test', 'fresh password here')).status, 200, 'logs in with that password')
    t.same((await db.query('SELECT accepted_by = $1 AS by_them, accepted_at IS NOT NULL AS accepted FROM invitations WHERE email = $2', [res.body.user.id, 'fresh@example.test'])).rows,
      [{ by_them: true, accepted: true }], 'the invitation is marked used, by whom')
    const again = await accept(token, 'fresh password here')
    t.same([again.status, again.body.code], [401, 'INVALID_INVITATION'], 'once only')
  })

  t.test('an existing account joins with its own password, and only with it', async (t) => {
    const token = await invite(app, owner, elsewhere.email, 'member')
    const hash = await passwordHash(db, elsewhere.userId)
    const before = await snapshot(db)
    for (const password of ['a wrong password', elsewhere.password.toUpperCase(), elsewhere.password + ' ']) {
      const wrong = await accept(token, password)
      t.same([wrong.status, wrong.body.code], [401, 'INVALID_CREDENTIALS'], `refused: ${JSON.stringify(password)}`)
    }
    t.same(await snapshot(db), before, 'nothing written: no membership, the invitation still open, no session')
    const res = await accept(token, elsewhere.password)
    t.same([res.status, res.body.user.id, res.body.role], [200, elsewhere.userId, 'member'], 'the right one joins the same account')
    t.equal(await passwordHash(db, elsewhere.userId), hash, 'its password is unchanged')
    t.same((await post(app, '/notes', { title: 'joined' }, bearer(res.body))).status, 201, 'and works in the tenant')
  })

  t.test('an expired invitation is refused', async (t) => {
    const token = await invite(app, owner, 'late@example.test', 'member')
    await db.query("UPDATE invitations SET expires_at = now() - interval '1 second' WHERE email = $1", ['late@example.test'])
    const before = await snapshot(db)
    const res = await accept(token, 'late password here')
    t.same([res.status, res.body.code], [401, 'INVALID_INVITATION'])
    t.same(await snapshot(db), before, 'nothing written')
  })

  t.test('an account already a member keeps its role', async (t) => {
    const member = await addMember(app, owner, 'member')
    const token = await invite(app, owner, `second.${member.email}`, 'admin')
    await db.query('UPDATE invitations SET email = $1 WHERE token_hash = $2', [member.email, hashRefreshToken(token)])
    const res = await accept(token, member.password)
    t.same([res.status, res.body.role], [200, 'member'], 'logged in, still a member')
  })
})

t.test('sign-ups and invitation acceptances are rate limited per address', async (t) => {
  const { app, db } = await startService(t, { signupAttempts: 2 })
  const from = (remoteAddress: string, url: string, payload: object): Promise<Reply> =>
    app.inject({ method: 'POST', url, payload, remoteAddress }).then((res) => ({ status: res.statusCode, body: res.json() }))
  const signUpFrom = (remoteAddress: string): Promise<Reply> =>
    from(remoteAddress, '/tenants', { name: 'T', email: `rl.${randomBytes(4).toString('hex')}@example.test` })
  t.same([(await signUpFrom('10.0.0.1')).status, (await signUpFrom('10.0.0.1')).status], [202, 202], 'two sign-ups are heard')
  const before = await snapshot(db)
  const mailed = (await mails(app)).length
  const third = await signUpFrom('10.0.0.1')
  t.equal(third.status, 429, 'the third from the same address is refused')
  t.same(await snapshot(db), before, 'and creates nothing')
  t.equal((await mails(app)).length, mailed, 'and mails nothing')
  t.equal((await signUpFrom('10.0.0.2')).status, 202, 'another address still signs up')

  const owner = await signUp(app)
  const token = await invite(app, owner, 'target@example.test', 'member')
  for (let i = 1; i <= 2; i++) {
    t.equal((await from('10.0.0.3', '/invitations/accept', { token: `${owner.tenantId}.${randomBytes(32).toString('base64url')}`, password: 'a guessed password' })).status, 401, `guess ${i} is heard`)
  }
  t.equal((await from('10.0.0.3', '/invitations/accept', { token, password: 'a good long password' })).status, 429, 'the third is refused, even with a real token')
  t.equal((await from('10.0.0.4', '/invitations/accept', { token, password: 'a good long password' })).status, 200, 'another address gets through')
})

t.test('a sign-up answers the same whether or not the email has an account', async (t) => {
  const { app, db } = await startService(t)
  const existing = await signUp(app)
  const before = (await db.query('SELECT count(*)::int AS n FROM users')).rows[0].n
  const answers = []
  for (const email of [existing.email, 'nobody.yet@example.test']) {
    const res = await app.inject({ method: 'POST', url: '/tenants', payload: { name: 'T', email } })
    answers.push({ status: res.statusCode, headers: Object.keys(res.headers).filter((name) => !['date', 'content-length', 'x-ratelimit-remaining', 'x-ratelimit-reset'].includes(name)).sort(), body: res.json().message.replace(email, '<email>') })
  }
  t.same(answers[0], answers[1], 'the same status, headers and message')
  t.equal((await db.query('SELECT count(*)::int AS n FROM users')).rows[0].n, before, 'no account is made before the email is proven')
})

t.test('acceptances cost one scrypt whether or not the email has an account', async (t) => {
  const cost = { N: 2 ** 14, r: 8, p: 1 }
  const { app } = await startService(t, { passwordCost: cost })
  const existing = await signUp(app)
  const timed = async (url: string, payload: object, status: number): Promise<number> => {
    const started = process.hrtime.bigint()
    const res = await post(app, url, payload)
    const millis = Number(process.hrtime.bigint() - started) / 1e6
    if (res.status !== status) throw new Error(`expected ${status}, got ${res.status} ${JSON.stringify(res.body)}`)
    return millis
  }
  const fresh = (): string => `fresh.${randomBytes(4).toString('hex')}@example.test`
  const acceptNew: number[] = []
  const acceptExisting: number[] = []
  const other = await signUp(app)
  // An invitation of the existing account to another tenant: a wrong password leaves it open.
  const existingToken = await invite(app, other, existing.email, 'member')
  await timed('/invitations/accept', { token: await invite(app, existing, fresh(), 'member'), password: 'a good long password' }, 200) // warm-up
  for (let i = 0; i < 6; i++) {
    const token = await invite(app, existing, fresh(), 'member')
    acceptNew.push(await timed('/invitations/accept', { token, password: 'a good long password' }, 200))
    acceptExisting.push(await timed('/invitations/accept', { token: existingToken, password: 'a wrong password' }, 401))
  }
  const ratio = median(acceptExisting) / median(acceptNew)
  t.ok(ratio >= 0.5 && ratio <= 2, `POST /invitations/accept: median ${median(acceptNew).toFixed(1)} ms for a new account, ${median(acceptExisting).toFixed(1)} ms for an existing one's wrong password: ratio ${ratio.toFixed(2)}`)
})
