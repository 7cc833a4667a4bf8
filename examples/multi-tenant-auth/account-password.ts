// Checking an account's password without reading its hash: the app role may not select
// users.password_hash. The database gives the hash's settings (scheme, cost, salt), the app hashes
// the password with them, and the database says whether that is the stored hash. Three steps, so
// that the hash (~100 ms of CPU) can run with no connection held: settings in one statement or
// short transaction, the hash with none, the comparison in the next.
import { sql } from 'kysely'
import type { Kysely, Transaction } from 'kysely'
import { hashWithSettings, settingsOf } from './passwords.js'
import type { Database } from './schema.js'

type Db = Kysely<Database> | Transaction<Database>

/** 1. The settings to hash a password for the account `userId` with (null: no such account). */
export async function passwordSettings (db: Db, userId: string | null): Promise<string | null> {
  if (userId === null) return null
  const { rows } = await sql<{ settings: string | null }>`SELECT password_settings(${userId}) AS settings`.execute(db)
  return rows[0].settings
}

/**
 * 2. `password` hashed with those settings, or with `dummyHash`'s for no account: the same work
 * either way, so that an unknown email takes as long as a wrong password.
 */
export async function candidateHash (password: string, settings: string | null, dummyHash: string): Promise<string> {
  return hashWithSettings(password, settings ?? settingsOf(dummyHash))
}

/** 3. Whether the candidate is the account's stored hash (false for no account). */
export async function passwordMatches (db: Db, userId: string | null, candidate: string): Promise<boolean> {
  const { rows } = await sql<{ matches: boolean }>`SELECT password_matches(${userId}, ${candidate}) AS matches`.execute(db)
  return rows[0].matches
}

/** The three steps on one `db`: given the pool (`fastify.db.kysely`), no connection is held during the hash. */
export async function verifyAccountPassword (db: Db, userId: string | null, password: string, dummyHash: string): Promise<boolean> {
  const candidate = await candidateHash(password, await passwordSettings(db, userId), dummyHash)
  return passwordMatches(db, userId, candidate)
}
