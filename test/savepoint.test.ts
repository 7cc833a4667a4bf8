// request.savepoint(fn): try something inside the request's transaction and carry on when it
// fails. Released when fn resolves, rolled back to when it throws (the error rethrown, the
// transaction still usable); savepoints nest; callbacks registered inside follow the savepoint.
import t from 'tap'
import type { Test } from 'tap'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import pg from 'pg'
import dbSession from '../lib/index.js'
import { testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'
import { pgbouncerBinary, startPgBouncer } from './helpers/pgbouncer.js'
import { itemNames } from './helpers/util.js'

// Each test makes a database and a pool; on a loaded machine the file outlasts tap's default 30 s.
t.setTimeout(120_000)

async function setup (t: Test, options = {}): Promise<{ db: TestDatabase, app: FastifyInstance }> {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')
  const app = await db.app(options, { logger: { level: 'silent' } })
  return { db, app }
}

const insert = (trx: any, name: string): Promise<unknown> => trx.insertInto('items').values({ name }).execute()

t.test('a savepoint that throws is rolled back to: the work before it stays, the work inside it goes, the transaction goes on', async (t) => {
  const { db, app } = await setup(t)
  let caught: { code?: string } | undefined
  let released: unknown
  app.post('/items', async (request) => {
    await insert(request.db, 'before')
    try {
      await request.savepoint(async (trx) => {
        await insert(trx, 'inside')
        await insert(trx, 'before') // a unique violation: the transaction is aborted until ROLLBACK TO
      })
    } catch (error) {
      caught = error as { code?: string }
    }
    released = await request.savepoint(async (trx) => {
      await insert(trx, 'released')
      return 'its result'
    })
    await insert(request.db, 'after')
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(res.statusCode, 200)
  t.equal(caught?.code, '23505', 'the error is rethrown as it was')
  t.equal(released, 'its result', 'a released savepoint returns fn\'s result')
  t.same(await itemNames(db), ['before', 'released', 'after'])
  t.equal(app.db.stats().commits, 1)
})

t.test('savepoints nest: an inner one rolled back inside an outer one that is released, and a released inner one inside an outer one rolled back', async (t) => {
  const { db, app } = await setup(t)
  app.post('/items', async (request) => {
    await request.savepoint(async (trx) => {
      await insert(trx, 'outer kept')
      await request.savepoint(async (inner) => {
        await insert(inner, 'inner dropped')
        throw new Error('inner fails')
      }).catch(() => {})
      await insert(trx, 'outer kept after inner')
    })
    await request.savepoint(async (trx) => {
      await insert(trx, 'outer dropped')
      await request.savepoint((inner) => insert(inner, 'inner released, then dropped with its outer'))
      throw new Error('outer fails')
    }).catch(() => {})
    return { ok: true }
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.same(await itemNames(db), ['outer kept', 'outer kept after inner'])
})

t.test('callbacks follow their savepoint: afterCommit inside a rolled-back one never runs, afterRollback inside runs at that rollback', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request) => {
    request.afterCommit(() => { ran.push('outside: afterCommit') })
    request.afterRollback(() => { ran.push('outside: afterRollback') })
    await request.savepoint(async (trx) => {
      await insert(trx, 'dropped')
      request.afterCommit(() => { ran.push('rolled back: afterCommit') })
      request.afterRollback(() => { ran.push('rolled back: afterRollback') })
      await request.savepoint(async () => {
        request.afterCommit(() => { ran.push('nested in rolled back: afterCommit') })
      })
      throw new Error('give up')
    }).catch(() => { ran.push('savepoint rethrew') })
    await request.savepoint(async (trx) => {
      await insert(trx, 'kept')
      request.afterCommit(() => { ran.push('released: afterCommit') })
      request.afterRollback(() => { ran.push('released: afterRollback') })
    })
    request.afterCommit(() => { ran.push('after: afterCommit') })
    return { ok: true }
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.same(ran, [
    'rolled back: afterRollback',
    'savepoint rethrew',
    'outside: afterCommit',
    'released: afterCommit',
    'after: afterCommit'
  ])
  t.same(await itemNames(db), ['kept'])
})

t.test('a released savepoint\'s afterRollback runs when the whole request rolls back', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  app.post('/items', async (request, reply) => {
    await request.savepoint(async (trx) => {
      await insert(trx, 'inside')
      request.afterCommit(() => { ran.push('afterCommit') })
      request.afterRollback(() => { ran.push('afterRollback') })
    })
    return reply.code(409).send()
  })
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 409)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('a savepoint whose ROLLBACK TO cannot run (the connection died inside it) leaves its callbacks to the request\'s end', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  let caught: { code?: string } | undefined
  app.post('/items', async (request) => {
    await insert(request.db, 'before')
    try {
      await request.savepoint(async (trx) => {
        request.afterRollback(() => { ran.push('afterRollback') })
        await sql`SELECT pg_terminate_backend(pg_backend_pid())`.execute(trx)
      })
    } catch (error) {
      caught = error as { code?: string }
      ran.push('savepoint rethrew')
    }
    return { ok: true }
  })
  const res = await app.inject({ method: 'POST', url: '/items' })
  t.equal(caught?.code, 'FST_DB_SESSION_CONNECTION_LOST')
  t.same([res.statusCode, res.json().code], [500, 'FST_DB_SESSION_COMMIT_FAILED'], 'the handler carried on; its COMMIT could not be had')
  t.same(ran, ['savepoint rethrew', 'afterRollback'], 'run once, when the request rolled back')
  t.same(await itemNames(db), [])
})

t.test('a savepoint as the first query opens the transaction in the same round trip as BEGIN', async (t) => {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')
  // Each client.query() is one round trip: one simple query, or one batch ended by one Sync.
  const roundTrips: string[] = []
  const parsed: string[] = []
  class RecordingClient extends pg.Client {
    query (...args: any[]): any {
      const first = args[0]
      roundTrips.push(typeof first === 'string' ? first : first.text)
      return (super.query as (...a: any[]) => any)(...args)
    }

    async connect (...args: any[]): Promise<any> {
      const connection = (this as any).connection
      const parse = connection.parse.bind(connection)
      connection.parse = (query: { text: string }) => { parsed.push(query.text); parse(query) }
      return (super.connect as (...a: any[]) => any)(...args)
    }
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(dbSession, { pool: { connectionString: db.url, Client: RecordingClient }, startupCheck: false })
  app.post('/items', async (request) => request.savepoint((trx) => insert(trx, 'first')).then(() => ({ ok: true })))
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.same(parsed.slice(0, 3), ['BEGIN', "SET LOCAL application_name = 'POST /items req-1'", 'SAVEPOINT fastify_db_session_1'], 'BEGIN, its settings and the SAVEPOINT in one batch')
  t.equal(roundTrips.length, 4, 'BEGIN with SAVEPOINT, the INSERT, RELEASE, COMMIT')
  t.match(roundTrips[2], /^RELEASE SAVEPOINT fastify_db_session_1$/)
  t.same(await itemNames(db), ['first'])
})

t.test('fastify.db.savepoint(request, fn) is request.savepoint for this registration; a non-function is refused', async (t) => {
  const { db, app } = await setup(t)
  app.post('/items', async (request) => {
    await app.db.savepoint(request, (trx) => insert(trx, 'through the instance'))
    await app.db.savepoint(request, async (trx) => { await insert(trx, 'dropped'); throw new Error('no') }).catch(() => {})
    return { ok: true }
  })
  app.post('/wrong', async (request) => request.savepoint(null as any))
  t.equal((await app.inject({ method: 'POST', url: '/items' })).statusCode, 200)
  t.same(await itemNames(db), ['through the instance'])
  const wrong = await app.inject({ method: 'POST', url: '/wrong' })
  t.equal(wrong.json().code, 'FST_DB_SESSION_INVALID_OPTION')
  t.match(wrong.json().message, "savepoint expects a function; instead got 'null'")
})

const missing = pgbouncerBinary() === null
const skip = missing && !process.env.CI ? 'pgbouncer is not installed (apt-get install -y pgbouncer)' : false

t.test('savepoints through PgBouncer in transaction mode: rolled back and released on the request\'s one server connection', { skip }, async (t) => {
  const db = await testDatabase(t)
  const bouncer = await startPgBouncer(t, db.url, 2)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE)')
  const app = Fastify({ logger: { level: 'silent' } })
  t.teardown(() => app.close())
  await app.register(dbSession, { connectionString: bouncer.urlFor(db.url), maxConnections: 4 })
  const ran: string[] = []
  app.post('/items/:n', async (request) => {
    const { n } = request.params as { n: string }
    // The savepoint is the first query: it travels with BEGIN through PgBouncer.
    await request.savepoint((trx) => insert(trx, `kept ${n}`))
    await request.savepoint(async (trx) => {
      await insert(trx, `dropped ${n}`)
      request.afterCommit(() => { ran.push(`dropped ${n}`) })
      await insert(trx, `kept ${n}`) // unique violation
    }).catch(() => {})
    request.afterCommit(() => { ran.push(`kept ${n}`) })
    return { ok: true }
  })
  const answers = await Promise.all(['1', '2', '3', '4', '5', '6'].map((n) => app.inject({ method: 'POST', url: `/items/${n}` })))
  t.same(answers.map((res) => res.statusCode), [200, 200, 200, 200, 200, 200])
  t.same((await itemNames(db)).sort(), ['kept 1', 'kept 2', 'kept 3', 'kept 4', 'kept 5', 'kept 6'])
  t.same(ran.sort(), ['kept 1', 'kept 2', 'kept 3', 'kept 4', 'kept 5', 'kept 6'])
  t.equal(await db.idleInTransaction(), 0)
})
