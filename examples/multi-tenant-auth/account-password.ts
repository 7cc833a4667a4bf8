// Checking an account's password without reading its hash: the app role may not select
// users.password_hash. The database gives the hash's settings (scheme, cost, salt), the app hashes
// the password with them, and the database says whether that is the stored hash.
import { sql } from 'kysely'
import type { Kysely, Transaction } from 'kysely'
import { hashWithSettings, settingsOf } from './passwords.js'
import type { Database } from './schema.js'

/**
 * Whether `password` is the password of the account `userId`. For no account (null, or an id
 * without one) it hashes with `dummyHash`'s settings all the same, and answers false: the same
 * work either way. The hashing runs between two statements: given the pool (`fastify.db.kysely`)
 * rather than a transaction, no connection is held while it runs.
 */
export async function verifyAccountPassword (
  db: Kysely<Database> | Transaction<Database>,
  userId: string | null,
  password: string,
  dummyHash: string
): Promise<boolean> {
  const settings = userId === null
    ? null
    : (await sql<{ settings: string | null }>`SELECT password_settings(${userId}) AS settings`.execute(db)).rows[0].settings
  const candidate = await hashWithSettings(password, settings ?? settingsOf(dummyHash))
  const { rows } = await sql<{ matches: boolean }>`SELECT password_matches(${userId}, ${candidate}) AS matches`.execute(db)
  return rows[0].matches
}
