// Joining a tenant with an email and a password: what POST /tenants and POST
// /invitations/accept share. Accounts are global, so whoever names an email that already has an
// account must prove they own it with its password; nobody else's password is ever set on it.
import { sql } from 'kysely'
import type { Transaction } from 'kysely'
import type { AppSettings } from '../app.js'
import { verifyAccountPassword } from '../account-password.js'
import { hashPassword } from '../passwords.js'
import type { Database, Role } from '../schema.js'

/**
 * Makes the account of `email` a member of the request's tenant (`tenantId`, also its context)
 * with `role`. An email without an account gets one, with `password`; an existing account must
 * have `password`. One scrypt either way. An account that is already a member keeps its role.
 * Returns null for a wrong password: the caller answers 401, which rolls back the membership.
 */
export async function joinWithPassword (
  db: Transaction<Database>,
  settings: AppSettings,
  member: { tenantId: string, email: string, password: string, role: Role }
): Promise<{ userId: string, role: Role } | null> {
  // One at a time per email until commit, so two first uses of an email make one account, and
  // the second proves its password like any later one.
  await sql`SELECT pg_advisory_xact_lock(hashtextextended(${'account:' + member.email}, 0))`.execute(db)
  const { rows } = await sql<{ id: string | null }>`SELECT user_id_by_email(${member.email}) AS id`.execute(db)
  const existing = rows[0].id
  if (existing === null) {
    const hash = await hashPassword(member.password, settings.passwordCost)
    const { rows } = await sql<{ id: string }>`SELECT create_user(${member.email}, ${hash}) AS id`.execute(db)
    await db.insertInto('memberships').values({ tenant_id: member.tenantId, user_id: rows[0].id, role: member.role }).execute()
    return { userId: rows[0].id, role: member.role }
  }
  // The password first (the app role cannot read hashes: the database checks it), then the
  // membership; an account that is a member already keeps its role.
  if (!(await verifyAccountPassword(db, existing, member.password, settings.dummyPasswordHash))) return null
  await db.insertInto('memberships').values({ tenant_id: member.tenantId, user_id: existing, role: member.role })
    .onConflict((conflict) => conflict.columns(['tenant_id', 'user_id']).doNothing()).execute()
  const membership = await db.selectFrom('memberships').select('role').where('user_id', '=', existing).executeTakeFirstOrThrow()
  return { userId: existing, role: membership.role }
}
