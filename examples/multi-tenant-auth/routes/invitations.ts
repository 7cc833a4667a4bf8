// Accepting an invitation: its token (mailed to the invitee in production) and a password. An
// email without an account gets one with that password; an existing account must be given its own
// password, so an invitation never lets anyone into somebody else's account.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { parseInvitationToken } from '../tokens.js'
import { joinWithPassword } from './accounts.js'
import { Password, Problem, problem, Tokens, Uuid } from './common.js'
import { issueTokens } from './session-tokens.js'

const invitationRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { settings } = app

  app.post('/invitations/accept', {
    // Each attempt may check an existing account's password: limited per address like sign-ups.
    config: { rateLimit: { max: settings.signupAttempts, timeWindow: settings.loginWindowMillis } },
    schema: {
      body: Type.Object({ token: Type.String({ maxLength: 200 }), password: Password }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          tenant: Type.Object({ id: Uuid, name: Type.String() }),
          user: Type.Object({ id: Uuid, email: Type.String() }),
          role: Type.String(),
          ...Tokens.properties
        }),
        401: Problem
      }
    }
  }, async (request, reply) => {
    const parsed = parseInvitationToken(request.body.token)
    if (parsed === null) return problem(reply, 401, 'INVALID_INVITATION', 'invalid, used or expired invitation')
    request.dbContext = { tenantId: parsed.tenantId }
    // Locked until this request's transaction ends: a concurrent accept of the same token waits,
    // then finds it used (or, if this one answered 401 and rolled back, still open).
    const invitation = await request.db.selectFrom('invitations')
      .select(['id', 'email', 'role'])
      .where('token_hash', '=', parsed.hash)
      .where('accepted_at', 'is', null)
      .where('expires_at', '>', new Date())
      .forUpdate()
      .executeTakeFirst()
    if (invitation === undefined) return problem(reply, 401, 'INVALID_INVITATION', 'invalid, used or expired invitation')
    const member = await joinWithPassword(request.db, settings, { tenantId: parsed.tenantId, email: invitation.email, password: request.body.password, role: invitation.role })
    // The email has an account and this is not its password: the 401 rolls back the membership
    // just made, and the invitation stays open for the account's owner.
    if (member === null) return problem(reply, 401, 'INVALID_CREDENTIALS', 'invalid email or password')
    await request.db.updateTable('invitations').set({ accepted_at: new Date(), accepted_by: member.userId })
      .where('id', '=', invitation.id).execute()
    const tenant = await request.db.selectFrom('tenants').select(['id', 'name']).executeTakeFirstOrThrow()
    const tokens = await issueTokens(request.db, settings, { userId: member.userId, tenantId: parsed.tenantId, role: member.role })
    return { tenant, user: { id: member.userId, email: invitation.email }, role: member.role, ...tokens }
  })
}

export default invitationRoutes
