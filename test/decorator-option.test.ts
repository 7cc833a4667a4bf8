// The `decorator` option: each registration's own transaction(), route settings, stats and
// metrics; a registration in a child scope; and a decorator name that would collide refused at
// register time, with FST_DB_SESSION_INVALID_OPTION instead of Fastify's FST_ERR_DEC_ALREADY_PRESENT.
import t from 'tap'
import Fastify from 'fastify'
import type { Transaction } from 'kysely'
import { sql } from 'kysely'
import dbSession, { combineMetrics } from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import { buildError as registrationError } from './helpers/registration-error.js'
import { names, setup } from './helpers/two-databases.js'

t.setTimeout(120_000)

t.test('each registration has its own transaction(), route settings, stats and metrics', async (t) => {
  const s = await setup(t)
  const { app } = s
  t.equal(app.db.name, 'default')
  t.equal(app.analytics.name, 'analytics', 'the pool label defaults to the decorator')

  // transaction() runs on its own database, and says whose it is.
  const db = await app.analytics.transaction(async (trx) => {
    await trx.insertInto('events').values({ name: 'job' }).execute()
    return (await sql<{ db: string }>`select current_database() as db`.execute(trx)).rows[0].db
  })
  t.equal(db, s.analytics.name)
  await t.rejects(app.analytics.transaction(async () => 1, { acessMode: 'read only' } as any), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /fastify\.analytics\.transaction: options has an unknown key 'acessMode' \(did you mean 'accessMode'\?\)/
  })

  // config.analytics is the analytics registration's, config.db the main one's.
  app.get('/modes', { config: { db: { accessMode: 'read only' } } }, async (request) => {
    const read = async (trx: Transaction<any>) => (await sql<{ ro: string }>`show transaction_read_only`.execute(trx)).rows[0]
    return { db: await read(request.db), analytics: await read(request.analytics) }
  })
  app.get('/analytics-off', { config: { analytics: false } }, async (request) => {
    await sql`select 1`.execute(request.db)
    return sql`select 1`.execute(request.analytics)
  })
  t.throws(() => app.get('/typo', { config: { analytics: { isolationLvl: 'serializable' } } as any }, async () => 'x'), {
    code: 'FST_DB_SESSION_INVALID_OPTION',
    message: /route \/typo: config\.analytics has an unknown key 'isolationLvl' \(did you mean 'isolationLevel'\?\)/
  })
  t.same((await app.inject('/modes')).json(), { db: { transaction_read_only: 'on' }, analytics: { transaction_read_only: 'off' } })
  const off = await app.inject('/analytics-off')
  t.equal(off.statusCode, 500)
  t.equal(off.json().code, 'FST_DB_SESSION_DISABLED')
  t.equal(off.json().message, 'request.analytics is disabled on route GET /analytics-off by `config: { analytics: false }`; remove that setting to use the database there')

  const [main, second] = [app.db.stats(), app.analytics.stats()]
  t.match(main, { commits: 1, rollbacks: 1, acquires: 2 }, '/modes committed, /analytics-off rolled back')
  t.match(second, { commits: 2, rollbacks: 0, acquires: 2 }, 'transaction() and /modes; /analytics-off never opened one')
  t.match(app.analytics.metrics(), /fastify_db_session_commits_total\{pool="analytics"\} 2/)
  t.match(app.db.metrics(), /fastify_db_session_commits_total\{pool="default"\} 1/)
  const both = combineMetrics(app.db, app.analytics)
  t.match(both, /fastify_db_session_commits_total\{pool="default"\} 1\nfastify_db_session_commits_total\{pool="analytics"\} 2/)
})

t.test('a registration in a child scope serves that scope only, with its metrics route', async (t) => {
  const analytics = await testDatabase(t)
  const main = await testDatabase(t)
  await analytics.query('CREATE TABLE events (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await main.app()
  await app.register(async (child) => {
    await child.register(dbSession, { connectionString: analytics.url, decorator: 'analytics', metricsRoute: '/analytics/metrics' })
    child.post('/analytics/events', async (request) => {
      await request.analytics.insertInto('events').values({ name: 'inside' }).execute()
      return { ok: true }
    })
  })
  app.get('/outside', async (request) => ({ has: request.analytics !== undefined, instance: (app as any).analytics !== undefined }))
  t.equal((await app.inject({ method: 'POST', url: '/analytics/events' })).statusCode, 200)
  t.same(await names(analytics, 'events'), ['inside'])
  t.same((await app.inject('/outside')).json(), { has: false, instance: false }, 'the parent scope has neither decorator')
  const metrics = await app.inject('/analytics/metrics')
  t.equal(metrics.statusCode, 200)
  t.match(metrics.body, /fastify_db_session_commits_total\{pool="analytics"\} 1/)
})

t.test('a decorator name that would collide fails registration with FST_DB_SESSION_INVALID_OPTION, before any connection', async (t) => {
  const main = await testDatabase(t)
  const other = await testDatabase(t)

  t.test('the same decorator twice in one scope', async (t) => {
    const error = await registrationError(async (app) => {
      await app.register(dbSession, { connectionString: main.url })
      await app.register(dbSession, { connectionString: other.url })
    })
    t.match(error, {
      code: 'FST_DB_SESSION_INVALID_OPTION',
      message: "fastify-db-session: decorator 'db' is already used by another registration of fastify-db-session in this scope or a parent scope; give this registration another decorator (and name), e.g. { decorator: 'analytics', name: 'analytics' }"
    })
    t.equal(await other.connections(), 0, 'the refused registration connected nowhere')
  })

  t.test('in a child scope of a scope that has it', async (t) => {
    const error = await registrationError(async (app) => {
      await app.register(dbSession, { connectionString: main.url, decorator: 'analytics' })
      await app.register(async (child) => {
        await child.register(dbSession, { connectionString: other.url, decorator: 'analytics' })
      })
    })
    t.match(error, { code: 'FST_DB_SESSION_INVALID_OPTION', message: /decorator 'analytics' is already used by another registration of fastify-db-session in this scope or a parent scope; give this registration another decorator/ })
    t.equal(await other.connections(), 0)
  })

  t.test('sibling scopes may each use the same decorator', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    for (const [prefix, url] of [['/a', main.url], ['/b', other.url]]) {
      await app.register(async (child) => {
        await child.register(dbSession, { connectionString: url, decorator: 'analytics' })
        child.get('/which', async (request) => (await sql<{ db: string }>`select current_database() as db`.execute(request.analytics)).rows[0])
      }, { prefix })
    }
    t.same((await app.inject('/a/which')).json(), { db: main.name })
    t.same((await app.inject('/b/which')).json(), { db: other.name })
  })

  t.test('names Fastify or another plugin has, and names that are not identifiers', async (t) => {
    for (const name of ['log', 'server', 'register', 'body', 'id', 'ip', 'headers', 'routeOptions', 'send', 'constructor', 'cache', 'user', 'view']) {
      const error = await registrationError(async (app) => {
        app.decorate('cache', {})
        app.decorateRequest('user', null)
        app.decorateReply('view', null)
        await app.register(dbSession, { connectionString: other.url, decorator: name })
      })
      t.match(error, {
        code: 'FST_DB_SESSION_INVALID_OPTION',
        message: `fastify-db-session: decorator '${name}' is already a property of the Fastify instance, its requests or its replies (Fastify's own, or another plugin's); pick another decorator`
      }, name)
    }
    for (const name of ['', 'my-db', '1st', 'a b', 42, null]) {
      const error = await registrationError((app) => app.register(dbSession, { connectionString: other.url, decorator: name as any }))
      t.match(error, { code: 'FST_DB_SESSION_INVALID_OPTION', message: /decorator must be a JavaScript identifier such as 'analytics'/ }, String(name))
    }
    t.equal(await other.connections(), 0)
  })
})
