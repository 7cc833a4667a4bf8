// Issuing the token pair for a member of a tenant: a refresh token in the session's family, and an
// access token naming the session. The role is not in the token: each request reads it.
import type { Transaction } from 'kysely'
import type { AppSettings } from '../app.js'
import type { Database } from '../schema.js'
import { newFamilyId, newRefreshToken, signAccessToken } from '../tokens.js'

export async function issueTokens (
  db: Transaction<Database>,
  settings: AppSettings,
  member: { userId: string, tenantId: string },
  familyId: string = newFamilyId()
): Promise<{ accessToken: string, refreshToken: string, expiresIn: number }> {
  const { token, hash } = newRefreshToken(member.tenantId)
  await db.insertInto('refresh_tokens').values({
    token_hash: hash,
    family_id: familyId,
    tenant_id: member.tenantId,
    user_id: member.userId,
    expires_at: new Date(Date.now() + settings.refreshTokenDays * 86_400_000)
  }).execute()
  return {
    accessToken: signAccessToken(settings.tokenSecret, { sub: member.userId, tid: member.tenantId, sid: familyId }, settings.accessTokenSeconds),
    refreshToken: token,
    expiresIn: settings.accessTokenSeconds
  }
}
