// The same code through the three ways to hold a Kysely transaction on one database: request.db
// (through app.inject), fastify.db.transaction, and a plain Kysely transaction (PostgresDialect on
// its own pg.Pool), for the Kysely compatibility tests. Each run reports its outcome in one shape.
import pg from 'pg'
import Cursor from 'pg-cursor'
import { Kysely, PostgresDialect } from 'kysely'
import type { Transaction } from 'kysely'
import type { FastifyInstance } from 'fastify'
import type { Test } from 'tap'
import type { DbSessionConnectionStringOptions } from '../../index.js'
import { testDatabase } from './database.js'
import type { TestDatabase } from './database.js'

export const WAYS = ['request.db', 'fastify.db.transaction', 'plain Kysely'] as const
export type Way = typeof WAYS[number]

/** What a run came to: the body's value (bigints as strings), or the error that ended it (its string code, else its name). */
export interface Outcome { value?: unknown, error?: string, status?: number }
export type Body = (trx: Transaction<any>, way: Way) => Promise<unknown>

/** An error's identity, as users match it: a string `code` (pg's SQLSTATE, the plugin's FST_*), else its class name. */
export function describe (error: unknown): string {
  const { code, name } = error as { code?: unknown, name?: string }
  return typeof code === 'string' ? code : String(name)
}

function plain (value: unknown): unknown {
  return value === undefined ? null : JSON.parse(JSON.stringify(value, (_key, v) => typeof v === 'bigint' ? String(v) : v))
}

export interface ThreeWays {
  db: TestDatabase
  app: FastifyInstance
  /** The plain Kysely, on its own pg.Pool (with pg-cursor). */
  kysely: Kysely<any>
  pool: pg.Pool
  /** Errors the plain pool's clients emitted while checked out (pg-pool does not listen to those). */
  clientErrors: Error[]
  /** Runs `body` each way in turn; the request's outcome is its response's. */
  run: (body: Body) => Promise<Record<Way, Outcome>>
  /** Runs `body` one way. */
  runOne: (way: Way, body: Body) => Promise<Outcome>
}

export async function threeWays (t: Test, options: Partial<DbSessionConnectionStringOptions> = {}, setup = ''): Promise<ThreeWays> {
  const db = await testDatabase(t)
  if (setup !== '') await db.query(setup)
  const app = await db.app({ cursor: Cursor, ...options })
  let current: Body | null = null
  app.setErrorHandler((error, _request, reply) => reply.code((error as { statusCode?: number }).statusCode ?? 500).send({ error: describe(error) }))
  app.post('/run', async (request) => ({ value: plain(await (current as Body)(request.db, 'request.db')) }))
  await app.ready()
  const pool = new pg.Pool({ connectionString: db.url, max: 4 })
  // pg-pool listens to idle clients only: a checked-out client whose backend dies emits an 'error'
  // that would crash the process. Kept here, for the tests to show it.
  const clientErrors: Error[] = []
  pool.on('error', () => {})
  pool.on('connect', (client) => client.on('error', (error) => { clientErrors.push(error) }))
  const kysely = new Kysely<any>({ dialect: new PostgresDialect({ pool, cursor: Cursor }), plugins: options.plugins ?? [] })
  t.teardown(() => kysely.destroy())

  async function runOne (way: Way, body: Body): Promise<Outcome> {
    if (way === 'request.db') {
      current = body
      const res = await app.inject({ method: 'POST', url: '/run' })
      const answer = res.json()
      // An error raised after the error handler ran (in onSend: COMMIT's) has Fastify's own shape.
      if (!('value' in answer)) return { error: answer.code ?? answer.error, status: res.statusCode }
      return { value: answer.value, status: res.statusCode }
    }
    const transaction = way === 'plain Kysely'
      ? (fn: (trx: Transaction<any>) => Promise<unknown>) => kysely.transaction().execute(fn)
      : app.db.transaction
    return transaction((trx) => body(trx, way)).then((value) => ({ value: plain(value) }), (error: unknown) => ({ error: describe(error) }))
  }

  return {
    db,
    app,
    kysely,
    pool,
    clientErrors,
    runOne,
    async run (body) {
      const outcomes = {} as Record<Way, Outcome>
      for (const way of WAYS) outcomes[way] = await runOne(way, body)
      return outcomes
    }
  }
}
