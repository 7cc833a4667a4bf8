// Prepares a database for the service, as its owner and in one transaction: the app's login
// role (its password made once and kept in the database), then the migrations.
import { randomBytes } from 'node:crypto'
import { Kysely, PostgresDialect, sql } from 'kysely'
import type { Transaction } from 'kysely'
import pg from 'pg'
import { migrate } from './migrations.js'

/**
 * Migrates as the owner and returns a connection string for `appRole`. Every instance started on
 * the same database gets the same password, so starting a second one leaves the first working.
 */
export async function prepareDatabase (ownerUrl: string, appRole = 'mt_app'): Promise<string> {
  const owner = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: ownerUrl, max: 1 }) }) })
  let password: string
  try {
    password = await owner.transaction().execute(async (trx) => {
      // Starts against one database run one at a time: two at once would both create the role,
      // or both run the migrations.
      await sql`SELECT pg_advisory_xact_lock(hashtext('multi-tenant-auth: setup'))`.execute(trx)
      const password = await appRolePassword(trx, appRole)
      await migrate(trx, appRole)
      return password
    })
  } finally {
    await owner.destroy()
  }
  const url = new URL(ownerUrl)
  url.username = appRole
  url.password = password
  return url.toString()
}

/**
 * The app role's password. The role is created (no superuser, no BYPASSRLS, owns nothing) with a
 * random password the first time; the password is kept in `app_private.role_passwords`, a schema
 * the app role has no privilege on, and read back at every later start. A role found without a
 * kept password (a database set up before passwords were kept) gets a new one, kept from then on.
 */
async function appRolePassword (owner: Transaction<any>, appRole: string): Promise<string> {
  await sql`
    CREATE SCHEMA IF NOT EXISTS app_private;
    REVOKE ALL ON SCHEMA app_private FROM PUBLIC;
    CREATE TABLE IF NOT EXISTS app_private.role_passwords (
      role name PRIMARY KEY,
      password text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now()
    );
  `.execute(owner)
  const { rows } = await sql<{ exists: boolean, password: string | null }>`
    SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${appRole}) AS exists,
      (SELECT password FROM app_private.role_passwords WHERE role = ${appRole}) AS password
  `.execute(owner)
  const { exists, password: kept } = rows[0]
  if (exists && kept !== null) return kept

  const password = randomBytes(24).toString('base64url')
  const role = sql.id(appRole)
  if (exists) {
    await sql`ALTER ROLE ${role} PASSWORD ${sql.lit(password)}`.execute(owner)
  } else {
    await sql`CREATE ROLE ${role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD ${sql.lit(password)}`.execute(owner)
  }
  await sql`
    INSERT INTO app_private.role_passwords (role, password) VALUES (${appRole}, ${password})
    ON CONFLICT (role) DO UPDATE SET password = excluded.password, created_at = now()
  `.execute(owner)
  return password
}
