// What the afterCommit / afterRollback tests share: a database with an `items` table (its unique
// name checked at COMMIT) and an `effects` table that callbacks write to on a connection of their own.
import type { Test } from 'tap'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { testDatabase } from './database.js'
import type { TestDatabase } from './database.js'

export async function setup (t: Test, options = {}, fastifyOptions = {}): Promise<{ db: TestDatabase, app: FastifyInstance }> {
  const db = await testDatabase(t)
  await db.query(`CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL,
    CONSTRAINT unique_name UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)`)
  // What callbacks did, written on the helper's own connection: outside every transaction of the app.
  await db.query('CREATE TABLE effects (id serial PRIMARY KEY, name text NOT NULL)')
  const app = await db.app(options, fastifyOptions)
  return { db, app }
}

export async function effects (db: TestDatabase): Promise<string[]> {
  const { rows } = await db.query('SELECT name FROM effects ORDER BY id')
  return rows.map((row: { name: string }) => row.name)
}

/** Registers an afterCommit and an afterRollback that each note, in `ran`, that they ran. */
export function both (request: FastifyRequest, ran: string[]): void {
  request.afterCommit(() => { ran.push('afterCommit') })
  request.afterRollback(() => { ran.push('afterRollback') })
}
