import t from 'tap'
import { testDatabase } from './helpers/database.js'

function settingsRoute (request: { db: any }) {
  return request.db.selectNoFrom((eb: any) => [
    eb.fn('current_setting', [eb.val('transaction_isolation')]).as('isolation'),
    eb.fn('current_setting', [eb.val('transaction_read_only')]).as('readOnly')
  ]).executeTakeFirstOrThrow()
}

t.test('config: { db: false } gives the route no request.db', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  app.get('/off', { config: { db: false } }, async (request) => {
    try {
      return await request.db.selectNoFrom((eb) => eb.val(1).as('one')).execute()
    } catch (error) {
      return { code: (error as { code: string }).code, message: (error as Error).message }
    }
  })
  const body = (await app.inject('/off')).json()
  t.equal(body.code, 'FST_DB_SESSION_DISABLED')
  t.match(body.message, /GET \/off/)
  t.equal(app.db.stats().acquires, 0)
  t.equal(await db.connections(), 0)
})

t.test('route settings and plugin defaults are applied to BEGIN', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (name text)')
  const app = await db.app({ isolationLevel: 'repeatable read' })
  app.get('/default', settingsRoute)
  app.get('/serializable', { config: { db: { isolationLevel: 'serializable' } } }, settingsRoute)
  app.get('/read-only', { config: { db: { accessMode: 'read only' } } }, settingsRoute)
  app.post('/read-only-write', { config: { db: { accessMode: 'read only' } } }, async (request) => {
    await request.db.insertInto('items').values({ name: 'x' }).execute()
  })
  t.same((await app.inject('/default')).json(), { isolation: 'repeatable read', readOnly: 'off' })
  t.same((await app.inject('/serializable')).json(), { isolation: 'serializable', readOnly: 'off' })
  t.same((await app.inject('/read-only')).json(), { isolation: 'repeatable read', readOnly: 'on' })
  const write = await app.inject({ method: 'POST', url: '/read-only-write' })
  t.equal(write.statusCode, 500)
  t.equal(write.json().code, '25006', 'read_only_sql_transaction from PostgreSQL')
  t.equal((await db.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 0)
})

t.test('a bad route config fails when the route is declared', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  t.throws(() => app.get('/bad', { config: { db: { isolationLevel: 'chaos' as 'serializable' } } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/bad: config\.db\.isolationLevel must be one of read uncommitted, read committed, repeatable read, serializable; instead got 'chaos'/
  })
  t.throws(() => app.get('/worse', { config: { db: 'yes' as unknown as false } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/worse: config\.db must be false or an object/
  })
  t.throws(() => app.get('/mode', { config: { db: { accessMode: 'write only' as 'read only' } } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /accessMode must be one of read write, read only; instead got 'write only'/
  })
})

t.test('an unknown key in a route\'s config.db fails when the route is declared, naming the route and the key', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  t.throws(() => app.get('/misspelt', { config: { db: { isolationLvl: 'serializable' } as never } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/misspelt: config\.db has an unknown key 'isolationLvl' \(did you mean 'isolationLevel'\?\); known keys are isolationLevel, accessMode, statementTimeoutMillis, idleInTransactionTimeoutMillis, retries/
  })
  t.throws(() => app.post('/case', { config: { db: { AccessMode: 'read only' } as never } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/case: config\.db has an unknown key 'AccessMode' \(did you mean 'accessMode'\?\)/
  })
  t.throws(() => app.get('/unrelated', { config: { db: { accessMode: 'read only', poolSize: 3 } as never } }, async () => 1), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/unrelated: config\.db has an unknown key 'poolSize'; known keys are /
  })
  t.notOk(app.hasRoute({ method: 'GET', url: '/misspelt' }), 'the refused route was not added')
  t.equal(await db.connections(), 0, 'the refused routes took no connection')
  // An explicit undefined for a known key is no mistake: it keeps the plugin's default.
  app.get('/known', { config: { db: { isolationLevel: undefined, statementTimeoutMillis: 1000 } } }, settingsRoute)
  t.same((await app.inject('/known')).json(), { isolation: 'read committed', readOnly: 'off' })
})

t.test('routes declared before the plugin still get their settings', async (t) => {
  const db = await testDatabase(t)
  const { default: Fastify } = await import('fastify')
  const { default: dbSession } = await import('../lib/index.js')
  const app = Fastify()
  t.teardown(() => app.close())
  // Registered in the same tick as the plugin: no onRoute hook of ours sees them.
  app.get('/early', { config: { db: { accessMode: 'read only' } } }, settingsRoute)
  app.get('/early-off', { config: { db: false } }, async (request) => {
    try {
      return request.db
    } catch (error) {
      return { code: (error as { code: string }).code }
    }
  })
  await app.register(dbSession, { connectionString: db.url })
  t.same((await app.inject('/early')).json(), { isolation: 'read committed', readOnly: 'on' })
  t.same((await app.inject('/early-off')).json(), { code: 'FST_DB_SESSION_DISABLED' })
})

t.test('request.db in an onRequest hook added before the plugin fails with a coded error', async (t) => {
  const db = await testDatabase(t)
  const { default: Fastify } = await import('fastify')
  const { default: dbSession } = await import('../lib/index.js')
  const app = Fastify()
  t.teardown(() => app.close())
  app.addHook('onRequest', async (request) => {
    if (request.headers['x-early'] !== undefined) await request.db.selectNoFrom((eb) => eb.val(1).as('one')).execute()
  })
  await app.register(dbSession, { connectionString: db.url })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val(1).as('one')).executeTakeFirst())
  const early = await app.inject({ url: '/', headers: { 'x-early': '1' } })
  t.same([early.statusCode, early.json().code], [500, 'FST_DB_SESSION_TOO_EARLY'])
  t.same((await app.inject('/')).json(), { one: 1 }, 'in the handler it works')
  t.equal(app.db.stats().acquires, 1)
})
