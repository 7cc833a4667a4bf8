// Per-request database context: transaction-local settings, sent with BEGIN, never leaking.
import t from 'tap'
import Fastify from 'fastify'
import type { FastifyRequest } from 'fastify'
import pg from 'pg'
import { sql } from 'kysely'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'

const tenantOf = (request: FastifyRequest) => request.headers['x-tenant'] as string | undefined

function readSetting (request: FastifyRequest, name = 'app.tenant_id') {
  return sql<{ value: string | null, pid: number }>`SELECT current_setting(${name}, true) AS value, pg_backend_pid() AS pid`
    .execute(request.db).then((result) => result.rows[0])
}

t.test('a setting made for one request is empty for the next request on the same connection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ maxConnections: 1, context: { 'app.tenant_id': tenantOf } })
  app.get('/', async (request) => readSetting(request))
  // Outside the plugin, on the same pooled connection: what a forgotten SET would leave behind.
  app.get('/raw', async () => {
    const { rows } = await app.db.pool.query("SELECT current_setting('app.tenant_id', true) AS value, pg_backend_pid() AS pid")
    return rows[0]
  })
  const first = (await app.inject({ url: '/', headers: { 'x-tenant': 'acme' } })).json()
  // Read right after, before any request sets the name again: a session-level set_config would show here.
  const raw = (await app.inject('/raw')).json()
  const second = (await app.inject('/')).json()
  t.equal(first.value, 'acme')
  t.not(raw.value, 'acme', 'nothing survives the transaction on its connection')
  t.equal(second.value, '', 'no tenant header: the setting is empty, not acme')
  t.equal(new Set([first.pid, second.pid, raw.pid]).size, 1, 'all on one pooled connection')
})

t.test('settings survive a rollback to a savepoint, as PostgreSQL defines', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ context: { 'app.tenant_id': tenantOf } })
  app.get('/', async (request) => {
    await sql`SAVEPOINT inner_work`.execute(request.db)
    await sql`SELECT set_config('app.tenant_id', 'intruder', true)`.execute(request.db)
    const inside = (await readSetting(request)).value
    await sql`ROLLBACK TO SAVEPOINT inner_work`.execute(request.db)
    const after = (await readSetting(request)).value
    return { inside, after }
  })
  t.same((await app.inject({ url: '/', headers: { 'x-tenant': 'acme' } })).json(), { inside: 'intruder', after: 'acme' })
})

t.test('concurrent requests of different tenants never see each other\'s settings', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({
    maxConnections: 4,
    context: { 'app.tenant_id': tenantOf, 'app.user_id': (request) => request.headers['x-user'] as string }
  })
  app.get('/', async (request) => {
    const before = await readSetting(request)
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 20))
    const user = await readSetting(request, 'app.user_id')
    return { tenant: before.value, user: user.value }
  })
  const requests = Array.from({ length: 60 }, (_, i) => ({ tenant: `tenant-${i % 7}`, user: `user-${i}` }))
  const answers = await Promise.all(requests.map(({ tenant, user }) =>
    app.inject({ url: '/', headers: { 'x-tenant': tenant, 'x-user': user } }).then((res) => res.json())))
  t.same(answers, requests)
  t.ok(app.db.stats().acquires >= 60 && app.db.stats().total <= 4, 'connections were reused across tenants')
})

t.test('values are passed literally: quotes, backslashes, SQL and unicode round-trip exactly', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const hostile = ["'; DROP TABLE items; --", 'back\\slash \\\' E\'\\x41\'', '$$; SELECT 1; $$', 'naïve 租户 🚀', '']
  const app = await db.app({ context: { 'app.tenant_id': (request) => hostile[Number(request.headers['x-index'])] } })
  app.get('/', async (request) => readSetting(request))
  for (const [index, value] of hostile.entries()) {
    t.equal((await app.inject({ url: '/', headers: { 'x-index': String(index) } })).json().value, value)
  }
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0, 'the table is still there')
})

t.test('numbers, booleans and bigints are sent as text; null and undefined as empty', async (t) => {
  const db = await testDatabase(t)
  const values: Record<string, unknown> = { a: 42, b: true, c: 9007199254740993n, d: null, e: undefined }
  const app = await db.app({ context: { 'app.value': (request) => values[request.headers['x-key'] as string] as never } })
  app.get('/', async (request) => readSetting(request, 'app.value'))
  const read = async (key: string) => (await app.inject({ url: '/', headers: { 'x-key': key } })).json().value
  t.same([await read('a'), await read('b'), await read('c'), await read('d'), await read('e')], ['42', 'true', '9007199254740993', '', ''])
})

t.test('BEGIN, the settings and the first query travel in one round trip', async (t) => {
  const db = await testDatabase(t)
  // Each client.query() is one round trip: one simple query, or one batch ended by one Sync.
  const queries: number[] = []
  const parsed: string[] = []
  const simple: string[] = []
  class RecordingClient extends pg.Client {
    query (...args: any[]): any {
      queries.push(1)
      return (super.query as (...a: any[]) => any)(...args)
    }

    async connect (...args: any[]): Promise<any> {
      const connection = (this as any).connection
      const parse = connection.parse.bind(connection)
      connection.parse = (query: { text: string }) => { parsed.push(query.text); parse(query) }
      const send = connection.query.bind(connection)
      connection.query = (text: string) => { simple.push(text); send(text) }
      return (super.connect as (...a: any[]) => any)(...args)
    }
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, {
    pool: { connectionString: db.url, Client: RecordingClient },
    isolationLevel: 'repeatable read',
    statementTimeoutMillis: 5000,
    context: { 'app.tenant_id': () => 'acme', 'app.role': () => 'admin' },
    startupCheck: false
  })
  app.get('/', async (request) => readSetting(request))
  t.equal((await app.inject('/')).json().value, 'acme')
  t.equal(queries.length, 2, 'two round trips: BEGIN with settings and the query, then COMMIT')
  t.same(parsed, [
    'BEGIN ISOLATION LEVEL REPEATABLE READ',
    'SET LOCAL statement_timeout = 5000',
    "SELECT set_config('app.tenant_id', 'acme', true), set_config('app.role', 'admin', true), set_config('application_name', 'GET / req-1', true)",
    'SELECT current_setting($1, true) AS value, pg_backend_pid() AS pid'
  ], 'one statement per Parse, the query last')
  t.same(simple, ['COMMIT'])
})

t.test('a bad context value or a throwing context function fails the request without taking a connection', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({
    context: {
      'app.tenant_id': (request) => {
        if (request.headers['x-throw'] !== undefined) throw new Error('no tenant for you')
        return request.headers['x-nul'] !== undefined ? 'a\0b' : 'fine'
      }
    }
  })
  app.get('/', async (request) => readSetting(request))
  const nul = await app.inject({ url: '/', headers: { 'x-nul': '1' } })
  t.equal(nul.statusCode, 500)
  t.equal(nul.json().code, 'FST_DB_SESSION_INVALID_CONTEXT')
  const thrown = await app.inject({ url: '/', headers: { 'x-throw': '1' } })
  t.equal(thrown.statusCode, 500)
  t.equal(thrown.json().message, 'no tenant for you')
  t.equal(app.db.stats().acquires, 0)
  t.equal((await app.inject('/')).json().value, 'fine')
})

t.test('setting names are checked at register time', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ tenant: () => 1 }, /context: 'tenant' is not a valid setting name; use namespace.name, like 'app.tenant_id'/],
    [{ 'app.tenant-id': () => 1 }, /'app.tenant-id' is not a valid setting name/],
    [{ "app.x'); DROP TABLE t; --": () => 1 }, /is not a valid setting name/],
    [{ 'app.tenant_id': 'acme' }, /context\['app.tenant_id'\] must be a function \(request\) => value; instead got 'acme'/],
    ['app.tenant_id', /context must be an object of setting names to functions/],
    [null, /context must be an object of setting names to functions/]
  ]
  for (const [context, message] of bad) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(dbSession, { connectionString: 'postgres://127.0.0.1:1/none', context: context as never }).ready() }, {
      code: 'FST_DB_SESSION_INVALID_OPTION',
      message
    })
    await app.close()
  }
})

t.test('an empty context object is the same as none', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app({ context: {} })
  app.get('/', async (request) => readSetting(request))
  t.equal((await app.inject('/')).json().value, null)
})

t.test('fastify.db.transaction takes a context of values', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const value = await app.db.transaction(async (trx) => {
    const { rows } = await sql<{ value: string }>`SELECT current_setting('app.tenant_id', true) AS value`.execute(trx)
    return rows[0].value
  }, { context: { 'app.tenant_id': 'nightly-job' } })
  t.equal(value, 'nightly-job')
  await t.rejects(app.db.transaction(async () => 1, { context: { 'bad name': 'x' } }), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /fastify.db.transaction context: 'bad name' is not a valid setting name/
  })
})
