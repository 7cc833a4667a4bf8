// Accepting an invitation (a sign-up's too): what turns a mailed token and a password into a
// membership. The token proves the email (only its mailbox got it); the password is a new
// account's, or the existing account's own, so nobody chooses a password for somebody else.
//
// The password hash takes ~100 ms of CPU (scrypt). No connection is held meanwhile: the
// invitation and the account are read in one short transaction, the hash runs with none open,
// and the writes happen in a second short one that checks nothing changed in between. Holding a
// pooled connection (and an open transaction) across the hash let a burst of sign-ins take every
// connection and starve other tenants' requests.
import { sql } from 'kysely'
import type { FastifyInstance } from 'fastify'
import { candidateHash, passwordMatches, passwordSettings } from '../account-password.js'
import { hashPassword } from '../passwords.js'
import type { Role } from '../schema.js'
import type { parseInvitationToken } from '../tokens.js'
import { issueTokens } from './session-tokens.js'

export type Accepted =
  | { ok: true, tenant: { id: string, name: string }, user: { id: string, email: string }, role: Role, accessToken: string, refreshToken: string, expiresIn: number }
  | { ok: false, code: 'INVALID_INVITATION' | 'INVALID_CREDENTIALS' }

/** An account appearing for the email between the read and the write is retried this many times. */
const ATTEMPTS = 3

export async function acceptInvitation (
  app: FastifyInstance,
  token: NonNullable<ReturnType<typeof parseInvitationToken>>,
  password: string
): Promise<Accepted> {
  const { settings } = app
  const tenantContext = { 'app.tenant_id': token.tenantId }
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    // 1. Read, in a short transaction: the open invitation, and the account of its email if any.
    const found = await app.db.transaction(async (trx) => {
      const invitation = await trx.selectFrom('invitations')
        .select(['id', 'email', 'role'])
        .where('token_hash', '=', token.hash)
        .where('accepted_at', 'is', null)
        .where('expires_at', '>', new Date())
        .executeTakeFirst()
      if (invitation === undefined) return null
      const { rows } = await sql<{ id: string | null }>`SELECT user_id_by_email(${invitation.email}) AS id`.execute(trx)
      const accountId = rows[0].id
      // The app role reads no hash: the settings to hash the password with (see account-password.ts).
      return { invitation, accountId, passwordSettings: await passwordSettings(trx, accountId) }
    }, { context: tenantContext })
    if (found === null) return { ok: false, code: 'INVALID_INVITATION' }

    // 2. The hash, with no connection held: one scrypt whether or not the email has an account.
    let newHash: string | null = null
    if (found.accountId === null) {
      newHash = await hashPassword(password, settings.passwordCost)
    } else if (!(await passwordMatches(app.db.kysely, found.accountId, await candidateHash(password, found.passwordSettings, settings.dummyPasswordHash)))) {
      // Nothing was written: the invitation stays open for the account's owner.
      return { ok: false, code: 'INVALID_CREDENTIALS' }
    }

    // 3. Write, in a short transaction, if nothing changed since the read.
    const outcome = await app.db.transaction(async (trx) => {
      // Locked until commit: a concurrent accept of the same token waits, then finds it used.
      const invitation = await trx.selectFrom('invitations').select('id')
        .where('id', '=', found.invitation.id)
        .where('accepted_at', 'is', null)
        .where('expires_at', '>', new Date())
        .forUpdate()
        .executeTakeFirst()
      if (invitation === undefined) return 'gone' as const
      // One at a time per email until commit, so that two first uses of an email make one account.
      await sql`SELECT pg_advisory_xact_lock(hashtextextended(${'account:' + found.invitation.email}, 0))`.execute(trx)
      const { rows } = await sql<{ id: string | null }>`SELECT user_id_by_email(${found.invitation.email}) AS id`.execute(trx)
      // An account was made for the email meanwhile (another invitation accepted at the same
      // time): read again, and prove its password instead.
      if (rows[0].id !== found.accountId) return 'changed' as const
      const userId = found.accountId ?? (await sql<{ id: string }>`SELECT create_user(${found.invitation.email}, ${newHash}) AS id`.execute(trx)).rows[0].id
      // An account that is already a member keeps its role.
      await trx.insertInto('memberships').values({ tenant_id: token.tenantId, user_id: userId, role: found.invitation.role })
        .onConflict((conflict) => conflict.columns(['tenant_id', 'user_id']).doNothing()).execute()
      const member = await trx.selectFrom('memberships').select('role').where('user_id', '=', userId).executeTakeFirstOrThrow()
      await trx.updateTable('invitations').set({ accepted_at: new Date(), accepted_by: userId }).where('id', '=', found.invitation.id).execute()
      const tenant = await trx.selectFrom('tenants').select(['id', 'name']).executeTakeFirstOrThrow()
      const tokens = await issueTokens(trx, settings, { userId, tenantId: token.tenantId })
      return { ok: true as const, tenant, user: { id: userId, email: found.invitation.email }, role: member.role, ...tokens }
    }, { context: tenantContext })
    if (outcome === 'gone') return { ok: false, code: 'INVALID_INVITATION' }
    if (outcome !== 'changed') return outcome
  }
  throw new Error(`accepting an invitation: the account of its email changed ${ATTEMPTS} times while it was read`)
}
