// 100 users in 10 tenants at once, on a pool of 10 connections: every connection serves many
// tenants in turn, so a tenant setting that outlived its request would show up as another
// tenant's note. Some users go through fastify.inject, some through a real listening server.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { HTTPMethods } from 'fastify'
import type { App } from '../app.js'
import { bearer, mailedToken, mails, signUp, startService } from './service.js'

// Hundreds of requests and password hashes: more than tap's 30 s default on a loaded machine.
t.setTimeout(120_000)

const TENANTS = 10
const MEMBERS_PER_TENANT = 9 // plus the owner: 10 users a tenant
const ROUNDS = 4 // each user creates this many notes, reading in between
const HTTP_SHARE = 3 // every third user goes over HTTP

interface Reply { status: number, body: any }
type Call = (method: HTTPMethods, url: string, options?: { token?: string, payload?: object }) => Promise<Reply>

function viaInject (app: App): Call {
  return async (method, url, options = {}) => {
    const res = await app.inject({ method, url, headers: options.token === undefined ? {} : bearer({ accessToken: options.token }), payload: options.payload })
    return { status: res.statusCode, body: res.body === '' ? null : res.json() }
  }
}

function viaHttp (base: string): Call {
  return async (method, url, options = {}) => {
    const res = await fetch(base + url, {
      method,
      headers: {
        ...(options.payload === undefined ? {} : { 'content-type': 'application/json' }),
        ...(options.token === undefined ? {} : bearer({ accessToken: options.token }))
      },
      body: options.payload === undefined ? undefined : JSON.stringify(options.payload)
    })
    const text = await res.text()
    return { status: res.status, body: text === '' ? null : JSON.parse(text) }
  }
}

interface User {
  index: number
  tenant: number
  tenantId: string
  userId: string
  email: string
  password: string
  transport: 'inject' | 'http'
  call: Call
  token: string
}

interface Note { id: string, authorId: string }

/** A list body, or nothing when the answer was an error. */
const listOf = (body: unknown): any[] => Array.isArray(body) ? body : []

t.test('100 users in 10 tenants working at once never see another tenant\'s row', async (t) => {
  const started = Date.now()
  const { app, db } = await startService(t, { maxConnections: 10, loginAttempts: 1000, signupAttempts: 1000 })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const inject = viaInject(app)
  const http = viaHttp(base)
  const failures: string[] = []
  let requests = 0
  /** Calls and records any answer other than the expected one. */
  async function expect (call: Call, status: number, what: string, method: HTTPMethods, url: string, options?: { token?: string, payload?: object }): Promise<Reply> {
    requests++
    const res = await call(method, url, options)
    if (res.status !== status) failures.push(`${what}: ${method} ${url} answered ${res.status} ${JSON.stringify(res.body)}, expected ${status}`)
    return res
  }

  // Ten tenants, then nine members each, invited through POST /members and accepting through
  // POST /invitations/accept, all at once.
  const owners = await Promise.all(Array.from({ length: TENANTS }, (_, i) => signUp(app, `Concurrent ${i}`)))
  const accounts = await Promise.all(owners.map(async (owner, tenant) => {
    const members = await Promise.all(Array.from({ length: MEMBERS_PER_TENANT }, async (_, j) => {
      const email = `c${tenant}.${j}.${randomBytes(3).toString('hex')}@example.test`
      const password = `password of ${email}`
      const call = (tenant + j) % HTTP_SHARE === 0 ? http : inject
      const invited = await expect(call, 201, 'invite member', 'POST', '/members', { token: owner.accessToken, payload: { email, role: j % 3 === 0 ? 'admin' : 'member' } })
      const token = invited.status === 201 ? await mailedToken(app, email, owner.tenantId) : 'none'
      const joined = await expect(call, 200, 'accept invitation', 'POST', '/invitations/accept', { payload: { token, password } })
      return { tenant, tenantId: owner.tenantId, userId: joined.body?.user?.id as string, email, password }
    }))
    return [{ tenant, tenantId: owner.tenantId, userId: owner.userId, email: owner.email, password: owner.password }, ...members]
  }))
  t.same(failures, [], 'all 90 members invited and joined')
  t.same((await db.query('SELECT tenant_id, count(*)::int AS n FROM memberships GROUP BY tenant_id ORDER BY tenant_id')).rows,
    owners.map((o) => ({ tenant_id: o.tenantId, n: 10 })).sort((x, y) => x.tenant_id < y.tenant_id ? -1 : 1), '10 memberships in each of the 10 tenants')

  // Everyone logs in at once, the owners too.
  const users: User[] = await Promise.all(accounts.flat().map(async (account, index) => {
    const transport = index % HTTP_SHARE === 0 ? 'http' : 'inject'
    const call = transport === 'http' ? http : inject
    const res = await expect(call, 200, 'login', 'POST', '/login', { payload: { tenantId: account.tenantId, email: account.email, password: account.password } })
    return { ...account, index, transport, call, token: res.body?.accessToken as string }
  }))
  t.equal(users.length, 100)
  t.equal(users.filter((u) => u.transport === 'http').length, 34, '34 of them over HTTP, 66 through inject')
  t.same(failures, [], 'all 100 logged in')

  const userIdsOf = Array.from({ length: TENANTS }, (_, tenant) => new Set(users.filter((u) => u.tenant === tenant).map((u) => u.userId)))
  /** What each tenant created, as the creators were told: filled in while the others read. */
  const created = Array.from({ length: TENANTS }, () => [] as string[])
  /** Every note any user was shown, with who was shown it. */
  const seen: Array<{ user: User, note: Note, how: string }> = []
  const meTenants: Array<{ user: User, tenantId: string, userId: string }> = []
  let foreignProbes = 0

  const pick = <T>(list: T[]): T | undefined => list[Math.floor(Math.random() * list.length)]

  async function work (user: User): Promise<void> {
    const { call, token } = user
    for (let round = 0; round < ROUNDS; round++) {
      const made = await expect(call, 201, 'create', 'POST', '/notes', { token, payload: { title: `u${user.index} r${round}`, body: `tenant ${user.tenant}` } })
      if (made.status === 201) {
        created[user.tenant].push(made.body.id)
        seen.push({ user, note: made.body, how: 'POST /notes' })
      }
      const list = await expect(call, 200, 'list', 'GET', '/notes', { token })
      for (const note of listOf(list.body)) seen.push({ user, note, how: 'GET /notes' })

      // A note of the user's own tenant, someone else's if there is one yet.
      const own = pick(created[user.tenant].filter((id) => id !== made.body?.id)) ?? made.body?.id
      const got = await expect(call, 200, 'get own tenant\'s note', 'GET', `/notes/${own}`, { token })
      if (got.status === 200) seen.push({ user, note: got.body, how: 'GET /notes/:id' })

      // A note of another tenant, made by now: not found, under the same load.
      const other = (user.tenant + 1 + Math.floor(Math.random() * (TENANTS - 1))) % TENANTS
      const foreign = pick(created[other])
      if (foreign !== undefined) {
        foreignProbes++
        await expect(call, 404, 'get another tenant\'s note', 'GET', `/notes/${foreign}`, { token })
      }

      if (round % 2 === 0) {
        const me = await expect(call, 200, 'me', 'GET', '/me', { token })
        if (me.status === 200) meTenants.push({ user, tenantId: me.body.tenant.id, userId: me.body.user.id })
      } else {
        const members = await expect(call, 200, 'members', 'GET', '/members', { token })
        for (const member of listOf(members.body)) {
          if (!userIdsOf[user.tenant].has(member.userId)) failures.push(`user ${user.index} of tenant ${user.tenant} was shown member ${member.userId}`)
        }
        if (members.body?.length !== 10) failures.push(`user ${user.index} was shown ${members.body?.length} members`)
      }
    }
  }

  const requestsBefore = requests
  await Promise.all(users.map(work))
  const workRequests = requests - requestsBefore
  t.same(failures, [], 'every request of the concurrent phase answered as expected')
  t.ok(workRequests >= 100 * ROUNDS * 4, `${workRequests} requests in the concurrent phase`)
  t.ok(foreignProbes >= 100 * (ROUNDS - 1), `${foreignProbes} of them went after another tenant's note`)

  // The sets each tenant created, checked against the database (the owner sees all).
  t.same(created.map((ids) => ids.length), Array(TENANTS).fill(10 * ROUNDS), '40 notes created in each tenant')
  const stored = (await db.query('SELECT id, tenant_id FROM notes')).rows
  t.equal(stored.length, TENANTS * 10 * ROUNDS)
  const tenantOfNote = new Map(stored.map((row) => [row.id, row.tenant_id]))
  t.ok(created.every((ids, tenant) => ids.every((id) => tenantOfNote.get(id) === owners[tenant].tenantId)), 'every note is stored in its creator\'s tenant')

  const createdSets = created.map((ids) => new Set(ids))
  const crossTenant = seen.filter(({ user, note }) => !createdSets[user.tenant].has(note.id) || !userIdsOf[user.tenant].has(note.authorId))
  t.ok(seen.length > 100 * ROUNDS * 3, `${seen.length} notes shown to users`)
  t.same(crossTenant.map(({ user, note, how }) => `${how} showed user ${user.index} (tenant ${user.tenant}) note ${note.id}`), [], 'not one of them belonged to another tenant')
  t.ok(seen.some(({ user, how }) => user.transport === 'http' && how === 'GET /notes') && seen.some(({ user, how }) => user.transport === 'inject' && how === 'GET /notes'), 'both transports listed notes')
  t.equal(meTenants.length, 100 * Math.ceil(ROUNDS / 2))
  t.same(meTenants.filter(({ user, tenantId, userId }) => tenantId !== user.tenantId || userId !== user.userId).length, 0, 'GET /me always answered for the caller\'s own tenant and account')

  // Settled: each user's list is now exactly its tenant's 40 notes.
  const finalLists = await Promise.all(users.map((user) => expect(user.call, 200, 'final list', 'GET', '/notes', { token: user.token })))
  const wrongLists = users.filter((user, i) => JSON.stringify(listOf(finalLists[i].body).map((n: Note) => n.id).sort()) !== JSON.stringify([...created[user.tenant]].sort()))
  t.same(wrongLists.map((u) => u.index), [], 'all 100 final lists are exactly their tenant\'s notes')
  t.same(failures, [])

  t.equal(await db.idleInTransaction(), 0, 'no connection left inside a transaction')
  const stats = app.db.stats()
  t.match(stats, { active: 0, waiting: 0, acquireTimeouts: 0, commitFailures: 0, leaks: 0 }, 'every connection back in the pool')
  t.ok(stats.total <= 10, `at most 10 connections (${stats.total})`)
  t.ok(stats.acquires >= requests - 10, `${stats.acquires} acquires for ${requests} requests`)
  t.comment(`${requests} requests in ${Date.now() - started} ms`)
})

t.test('an invitation accepted 10 times at once makes one membership', async (t) => {
  const { app, db } = await startService(t, { maxConnections: 4, signupAttempts: 100 })
  const owner = await signUp(app)
  const invited = await app.inject({ method: 'POST', url: '/members', headers: bearer(owner), payload: { email: 'once@example.test', role: 'member' } })
  t.equal(invited.statusCode, 201)
  const token = await mailedToken(app, 'once@example.test', owner.tenantId)
  const answers = await Promise.all(Array.from({ length: 10 }, () =>
    app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: 'a good long password' } })))
  const codes = answers.map((res) => res.statusCode === 200 ? 'joined' : `${res.statusCode} ${res.json().code}`).sort()
  t.same(codes, [...Array(9).fill('401 INVALID_INVITATION'), 'joined'], 'one joined; nine found the invitation used')
  t.same((await db.query('SELECT count(*)::int AS n FROM users WHERE email = $1', ['once@example.test'])).rows[0].n, 1, 'one account')
  t.same((await db.query('SELECT count(*)::int AS n FROM memberships WHERE tenant_id = $1', [owner.tenantId])).rows[0].n, 2, 'one new membership')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('one new email invited to 8 tenants and accepted in all at once makes one account', async (t) => {
  const { app, db } = await startService(t, { maxConnections: 4, signupAttempts: 100 })
  const email = `everywhere.${randomBytes(3).toString('hex')}@example.test`
  const owners = await Promise.all(Array.from({ length: 8 }, (_, i) => signUp(app, `Tenant ${i}`)))
  const tokens = await Promise.all(owners.map(async (owner) => {
    await app.inject({ method: 'POST', url: '/members', headers: bearer(owner), payload: { email, role: 'member' } })
    return mailedToken(app, email, owner.tenantId)
  }))
  const answers = await Promise.all(tokens.map((token) =>
    app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: 'the same password' } })))
  t.same(answers.map((res) => res.statusCode), Array(8).fill(200), 'all 8 joined: the first made the account, the others proved its password')
  const users = (await db.query('SELECT id FROM users WHERE email = $1', [email])).rows
  t.equal(users.length, 1, 'one account')
  t.same(new Set(answers.map((res) => res.json().user.id)), new Set([users[0].id]), 'the same account in all 8')
  t.equal((await db.query('SELECT count(*)::int AS n FROM memberships WHERE user_id = $1', [users[0].id])).rows[0].n, 8)

  // The same with POST /tenants: one new email signing up 6 tenants, all confirmed at once.
  const owner = `founder.${randomBytes(3).toString('hex')}@example.test`
  const signUps = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    app.inject({ method: 'POST', url: '/tenants', payload: { name: `Founded ${i}`, email: owner } })))
  t.same(signUps.map((res) => res.statusCode), Array(6).fill(202), 'all 6 sign-ups heard')
  const confirmations = (await mails(app)).filter((mail) => mail.to === owner).map((mail) => mail.token)
  t.equal(confirmations.length, 6, 'six confirmations mailed')
  const confirmed = await Promise.all(confirmations.map((token) =>
    app.inject({ method: 'POST', url: '/invitations/accept', payload: { token, password: 'the same password' } })))
  t.same(confirmed.map((res) => res.statusCode), Array(6).fill(200), 'all 6 tenants confirmed')
  t.equal(new Set(confirmed.map((res) => res.json().user.id)).size, 1, 'owned by one account')
  t.equal(await db.idleInTransaction(), 0)
})
