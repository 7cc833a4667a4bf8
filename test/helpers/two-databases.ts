// Two databases and an app with a registration on each (the `decorator` option): request.db on
// one, request.analytics on the other. The module augmentation is the README's typing pattern.
import type { Test } from 'tap'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import type { Generated, Transaction } from 'kysely'
import dbSession from '../../lib/index.js'
import type { DbRouteConfig, FastifyDbSession } from '../../index.js'
import { eventually, testDatabase } from './database.js'
import type { TestDatabase } from './database.js'

export interface AnalyticsDatabase {
  events: { id: Generated<number>, name: string }
  codes: { code: number }
}
// The typing pattern of the README: the second registration's decorators, declared by the app.
declare module 'fastify' {
  interface FastifyRequest { readonly analytics: Transaction<AnalyticsDatabase> }
  interface FastifyInstance { analytics: FastifyDbSession<AnalyticsDatabase> }
  interface FastifyContextConfig { analytics?: DbRouteConfig }
}

export interface Setup { main: TestDatabase, analytics: TestDatabase, app: FastifyInstance }

/**
 * Two databases on the test server, and an app with request.db on `main` (registered first) and
 * request.analytics on `analytics`. Each has an ordinary table and one whose uniqueness is checked at COMMIT.
 */
export async function setup (t: Test, fastifyOptions: FastifyServerOptions = {}, options: { closeTimeoutMillis?: number } = {}): Promise<Setup> {
  // Created first, dropped last (teardowns run last-in, first-out): the app is closed before either drop.
  const analytics = await testDatabase(t)
  const main = await testDatabase(t)
  await main.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  await analytics.query('CREATE TABLE events (id serial PRIMARY KEY, name text NOT NULL)')
  for (const db of [main, analytics]) {
    await db.query('CREATE TABLE codes (code int NOT NULL, CONSTRAINT codes_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED)')
  }
  const app = await main.app(options, fastifyOptions)
  await app.register(dbSession, { connectionString: analytics.url, decorator: 'analytics', ...options })
  return { main, analytics, app }
}

export async function names (db: TestDatabase, table: 'items' | 'events'): Promise<string[]> {
  const { rows } = await db.query(`SELECT name FROM ${table} ORDER BY id`)
  return rows.map((row: { name: string }) => row.name)
}

/** Writes one row to each database: an item through request.db, an event through request.analytics. */
export async function writeBoth (request: { db: Transaction<any>, analytics: Transaction<AnalyticsDatabase> }, name: string): Promise<void> {
  await request.db.insertInto('items').values({ name }).execute()
  await request.analytics.insertInto('events').values({ name }).execute()
}

/** Both registrations' counters: how many of their units of work committed and rolled back, and connections held. */
export function outcomes (app: FastifyInstance) {
  const [db, analytics] = [app.db.stats(), app.analytics.stats()]
  return { db: { commits: db.commits, rollbacks: db.rollbacks, active: db.active }, analytics: { commits: analytics.commits, rollbacks: analytics.rollbacks, active: analytics.active } }
}

export async function settled (app: FastifyInstance, expected: ReturnType<typeof outcomes>) {
  return eventually(async () => outcomes(app), (seen) => JSON.stringify(seen) === JSON.stringify(expected))
}

export async function nothingLeftOpen (t: Test, { main, analytics }: Setup): Promise<void> {
  t.equal(await main.idleInTransaction(), 0, 'no backend idle in a transaction on the main database')
  t.equal(await analytics.idleInTransaction(), 0, 'nor on the analytics database')
}
