// Each test file gets a database of its own on the run's server, so connection counts in
// pg_stat_activity are exact even while files run in parallel.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import Fastify from 'fastify'
import { sql } from 'kysely'
import type { FastifyInstance, FastifyServerOptions, LightMyRequestResponse } from 'fastify'
import dbSession from '../../lib/index.js'
import type { DbSessionConnectionStringOptions } from '../../index.js'

export interface TestDatabase {
  /** Connection string of this file's own database. */
  url: string
  name: string
  /** Runs SQL in this file's database on a connection outside any plugin pool. */
  query: <R extends pg.QueryResultRow = any>(sql: string, values?: unknown[]) => Promise<pg.QueryResult<R>>
  /** Backends connected to this file's database (the helper's own excluded). */
  connections: () => Promise<number>
  /** Backends left inside a transaction: should always be 0 once requests are done. */
  idleInTransaction: () => Promise<number>
  /** Runs `fn` with a server-level connection after the database is dropped (e.g. to drop a role). */
  afterDrop: (fn: (admin: pg.Client) => Promise<unknown>) => void
  /** A Fastify app with the plugin registered on this database; closed when the test ends. */
  app: (options?: Partial<DbSessionConnectionStringOptions>, fastifyOptions?: FastifyServerOptions) => Promise<FastifyInstance>
}

interface Teardown { teardown: (fn: () => unknown) => void }

export async function testDatabase (t: Teardown): Promise<TestDatabase> {
  const serverUrl = process.env.DATABASE_URL
  if (!serverUrl) throw new Error('DATABASE_URL is not set: run the tests with `npm test`, which starts PostgreSQL')
  const name = 'test_' + randomBytes(6).toString('hex')
  const admin = new pg.Client({ connectionString: serverUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  const url = new URL(serverUrl)
  url.pathname = '/' + name
  const helper = new pg.Client({ connectionString: url.toString() })
  await helper.connect()
  const apps: FastifyInstance[] = []
  const afterDrop: Array<(admin: pg.Client) => Promise<unknown>> = []
  // One teardown, in order: apps first, so dropping the database never cuts a live pool.
  t.teardown(async () => {
    await Promise.all(apps.map((app) => app.close()))
    await helper.end()
    await admin.query(`DROP DATABASE ${name} WITH (FORCE)`)
    for (const fn of afterDrop) await fn(admin)
    await admin.end()
  })

  async function count (where: string): Promise<number> {
    const { rows } = await helper.query(
      // Client backends only: an autovacuum worker visiting the database also shows its name.
      `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() ${where}`,
      [name]
    )
    return rows[0].n
  }

  return {
    url: url.toString(),
    name,
    query: (sql, values) => helper.query(sql, values),
    connections: () => count(''),
    idleInTransaction: () => count("AND state LIKE 'idle in transaction%'"),
    afterDrop: (fn) => { afterDrop.push(fn) },
    async app (options = {}, fastifyOptions = {}) {
      const app = Fastify(fastifyOptions)
      apps.push(app)
      await app.register(dbSession, { connectionString: url.toString(), ...options })
      return app
    }
  }
}

/**
 * Polls until `check` holds or `millis` pass; returns the last value seen. Generous by default: it
 * returns as soon as the check holds, and a loaded CI machine can take seconds to end a backend.
 */
export async function eventually<T> (read: () => Promise<T>, check: (value: T) => boolean, millis = 10_000): Promise<T> {
  const end = Date.now() + millis
  let value = await read()
  while (!check(value) && Date.now() < end) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    value = await read()
  }
  return value
}

/**
 * On an app with one connection: a request that holds it (it inserted 'holder' and waits for
 * `release`), then one queued for it (it would insert 'waiter'), both in flight when this returns:
 * the holder's INSERT has completed, and the waiter is in the pool's queue.
 */
export async function holderAndQueuedWaiter (app: FastifyInstance): Promise<{ holder: Promise<LightMyRequestResponse>, waiter: Promise<LightMyRequestResponse>, release: () => void }> {
  let release: () => void = () => {}
  let inserted: () => void = () => {}
  const holding = new Promise<void>((resolve) => { release = resolve })
  const holds = new Promise<void>((resolve) => { inserted = resolve })
  app.post('/hold', async (request) => {
    // SQL text: this helper is compiled with the examples too, whose request.db has other tables.
    await sql`INSERT INTO items (name) VALUES ('holder')`.execute(request.db)
    inserted()
    await holding
    return { ok: true }
  })
  app.post('/wait', async (request) => {
    await sql`INSERT INTO items (name) VALUES ('waiter')`.execute(request.db)
    return { ok: true }
  })
  const holder = app.inject({ method: 'POST', url: '/hold' })
  // Its INSERT done, not only its connection counted as active (which it is while being made).
  await holds
  const waiter = app.inject({ method: 'POST', url: '/wait' })
  await eventually(async () => app.db.stats(), (s) => s.waiting === 1)
  return { holder, waiter, release }
}
