// Accepting an invitation, or a sign-up's confirmation (an invitation to own the new tenant): its
// token, mailed to the invitee, and a password. An email without an account gets one with that
// password; an existing account must be given its own password, so an invitation never lets
// anyone into somebody else's account.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { parseInvitationToken } from '../tokens.js'
import { acceptInvitation } from './accounts.js'
import { Password, Problem, problem, Tokens, Uuid } from './common.js'

const invitationRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { settings } = app

  app.post('/invitations/accept', {
    // Each attempt costs a password hash: limited per address like sign-ups.
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
    // No request.db here: acceptInvitation hashes the password between two short transactions of
    // its own, and request.db's transaction would hold a connection across the hash.
    const parsed = parseInvitationToken(request.body.token)
    const accepted = parsed === null ? null : await acceptInvitation(app, parsed, request.body.password)
    if (accepted === null || (!accepted.ok && accepted.code === 'INVALID_INVITATION')) {
      return problem(reply, 401, 'INVALID_INVITATION', 'invalid, used or expired invitation')
    }
    if (!accepted.ok) return problem(reply, 401, 'INVALID_CREDENTIALS', 'invalid email or password')
    const { ok, ...answer } = accepted
    return answer
  })
}

export default invitationRoutes
