// Prepares a database for the service, in one transaction: the app's login role (its password
// made once and kept in the database), then the migrations, run as an owner role that is not a
// superuser whenever the given connection is one.
import { randomBytes } from 'node:crypto'
import { Kysely, PostgresDialect, sql } from 'kysely'
import type { Transaction } from 'kysely'
import pg from 'pg'
import { migrate } from './migrations.js'

/**
 * Migrates and returns a connection string for `appRole`. Every instance started on the same
 * database gets the same password, so starting a second one leaves the first working.
 * `adminUrl` is a superuser's (the embedded server's, or the test run's): it then creates
 * `ownerRole`, which owns the database and everything in it and runs the migrations. With a role
 * that is not a superuser, the migrations run as that role.
 */
export async function prepareDatabase (adminUrl: string, appRole = 'mt_app', ownerRole = `${appRole}_owner`): Promise<string> {
  const owner = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: adminUrl, max: 1 }) }) })
  let password: string
  try {
    password = await owner.transaction().execute(async (trx) => {
      // Starts against one database run one at a time: two at once would both create the role,
      // or both run the migrations.
      await sql`SELECT pg_advisory_xact_lock(hashtext('multi-tenant-auth: setup'))`.execute(trx)
      const password = await appRolePassword(trx, appRole)
      await becomeOwner(trx, ownerRole)
      await migrate(trx, appRole)
      return password
    })
  } finally {
    await owner.destroy()
  }
  const url = new URL(adminUrl)
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

/**
 * As a superuser: creates `ownerRole` (no login, no superuser, no BYPASSRLS), gives it the
 * database, its public schema and whatever an earlier setup made there as the superuser, and
 * switches to it for the rest of the transaction. SECURITY DEFINER functions, tables and policies
 * then belong to a role that cannot do more than own them. As anyone else: nothing.
 */
async function becomeOwner (admin: Transaction<any>, ownerRole: string): Promise<void> {
  const { rows } = await sql<{ superuser: boolean, exists: boolean, database: string }>`
    SELECT rolsuper AS superuser, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ${ownerRole}) AS exists,
      current_database() AS database
    FROM pg_roles WHERE rolname = current_user
  `.execute(admin)
  const { superuser, exists, database } = rows[0]
  if (!superuser) return
  const owner = sql.id(ownerRole)
  if (!exists) await sql`CREATE ROLE ${owner} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE`.execute(admin)
  await sql`ALTER DATABASE ${sql.id(database)} OWNER TO ${owner}`.execute(admin)
  await sql`ALTER SCHEMA public OWNER TO ${owner}`.execute(admin)
  // Tables (with their indexes, policies and sequences), views, lone sequences and functions.
  const { rows: handOver } = await sql<{ command: string }>`
    SELECT format('ALTER %s %s OWNER TO %I', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
      WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, c.oid::regclass, ${ownerRole}::text) AS command
    FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
      AND c.relowner <> ${ownerRole}::regrole
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    UNION ALL
    SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, ${ownerRole}::text)
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> ${ownerRole}::regrole
  `.execute(admin)
  for (const { command } of handOver) await sql.raw(command).execute(admin)
  await sql`SET LOCAL ROLE ${owner}`.execute(admin)
}
