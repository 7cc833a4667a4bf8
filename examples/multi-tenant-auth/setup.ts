// Prepares a database for the service: migrations as the owner, then the app role's URL.
import { randomBytes } from 'node:crypto'
import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import { migrate } from './migrations.js'

/** Migrates as the owner and returns a connection string for `appRole` with a fresh password. */
export async function prepareDatabase (ownerUrl: string, appRole = 'mt_app'): Promise<string> {
  const password = randomBytes(24).toString('base64url')
  const owner = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: ownerUrl, max: 1 }) }) })
  try {
    await migrate(owner, appRole, password)
  } finally {
    await owner.destroy()
  }
  const url = new URL(ownerUrl)
  url.username = appRole
  url.password = password
  return url.toString()
}
