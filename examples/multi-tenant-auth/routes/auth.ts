// Tenants with their owner (a new account, or an existing one proving its password), log in,
// refresh (rotated; a reused token revokes its family), log out, me.
import { randomUUID } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { verifyAccountPassword } from '../account-password.js'
import { parseRefreshToken } from '../tokens.js'
import { joinWithPassword } from './accounts.js'
import { Email, Password, Problem, problem, Text, Tokens, Uuid } from './common.js'
import { issueTokens } from './session-tokens.js'

const authRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { settings } = app

  app.post('/tenants', {
    // Each sign-up checks a password when the email has an account: limited like logins.
    config: { rateLimit: { max: settings.signupAttempts, timeWindow: settings.loginWindowMillis } },
    schema: {
      body: Type.Object({ name: Text({ minLength: 1, maxLength: 100 }), email: Email, password: Password }, { additionalProperties: false }),
      response: {
        201: Type.Object({ tenant: Type.Object({ id: Uuid, name: Type.String() }), user: Type.Object({ id: Uuid, email: Type.String() }), ...Tokens.properties }),
        401: Problem
      }
    }
  }, async (request, reply) => {
    const email = request.body.email.toLowerCase()
    const tenantId = randomUUID()
    // The context functions run at the first query: the new tenant is this request's tenant.
    request.dbContext = { tenantId }
    await request.db.insertInto('tenants').values({ id: tenantId, name: request.body.name }).execute()
    // A new email gets an account; an existing account's owner signs in with its password to own
    // the new tenant too. A wrong one is 401, which rolls back the tenant and the membership.
    const owner = await joinWithPassword(request.db, settings, { tenantId, email, password: request.body.password, role: 'owner' })
    if (owner === null) return problem(reply, 401, 'INVALID_CREDENTIALS', 'invalid email or password')
    const tokens = await issueTokens(request.db, settings, { userId: owner.userId, tenantId, role: 'owner' })
    return reply.code(201).send({ tenant: { id: tenantId, name: request.body.name }, user: { id: owner.userId, email }, ...tokens })
  })

  app.post('/login', {
    config: {
      rateLimit: {
        max: settings.loginAttempts,
        timeWindow: settings.loginWindowMillis,
        hook: 'preHandler',
        keyGenerator: (request) => `${request.ip}|${String((request.body as { email?: string })?.email).toLowerCase()}`
      }
    },
    schema: {
      body: Type.Object({ tenantId: Uuid, email: Email, password: Text({ minLength: 1, maxLength: 200 }) }, { additionalProperties: false }),
      response: { 200: Tokens, 401: Problem }
    }
  }, async (request, reply) => {
    request.dbContext = { tenantId: request.body.tenantId }
    // Only members of this tenant are visible here (row-level security on users and memberships).
    const member = await request.db.selectFrom('users')
      .innerJoin('memberships', 'memberships.user_id', 'users.id')
      .select(['users.id', 'memberships.role'])
      .where('users.email', '=', request.body.email.toLowerCase())
      .executeTakeFirst()
    // An unknown email costs the same scrypt as a wrong password: no timing oracle.
    const valid = await verifyAccountPassword(request.db, member?.id ?? null, request.body.password, settings.dummyPasswordHash)
    if (member === undefined || !valid) return problem(reply, 401, 'INVALID_CREDENTIALS', 'invalid email, password or tenant')
    return issueTokens(request.db, settings, { userId: member.id, tenantId: request.body.tenantId, role: member.role })
  })

  app.post('/refresh', {
    schema: {
      body: Type.Object({ refreshToken: Type.String({ maxLength: 200 }) }, { additionalProperties: false }),
      response: { 200: Tokens, 401: Problem }
    }
  }, async (request, reply) => {
    const parsed = parseRefreshToken(request.body.refreshToken)
    if (parsed === null) return problem(reply, 401, 'INVALID_REFRESH_TOKEN', 'invalid refresh token')
    request.dbContext = { tenantId: parsed.tenantId }
    // Rotation: only the first use of a token succeeds.
    const used = await request.db.updateTable('refresh_tokens')
      .set({ used_at: new Date() })
      .where('token_hash', '=', parsed.hash)
      .where('used_at', 'is', null)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', new Date())
      .returning(['family_id', 'user_id'])
      .executeTakeFirst()
    if (used === undefined) {
      const known = await request.db.selectFrom('refresh_tokens').select(['family_id', 'used_at'])
        .where('token_hash', '=', parsed.hash).executeTakeFirst()
      if (known?.used_at != null) {
        // A used token came back: it was stolen or replayed. Revoke its whole family in this
        // request's transaction, and have it commit although the answer is 401 (a transaction of
        // its own would need a second connection while this one is held).
        await request.db.updateTable('refresh_tokens').set({ revoked_at: new Date() })
          .where('family_id', '=', known.family_id).where('revoked_at', 'is', null).execute()
        request.commitDespiteError = true
        return problem(reply, 401, 'REFRESH_TOKEN_REUSED', 'this refresh token was already used; its session is revoked')
      }
      return problem(reply, 401, 'INVALID_REFRESH_TOKEN', 'invalid refresh token')
    }
    const membership = await request.db.selectFrom('memberships').select('role')
      .where('user_id', '=', used.user_id).executeTakeFirst()
    if (membership === undefined) return problem(reply, 401, 'INVALID_REFRESH_TOKEN', 'no longer a member of this tenant')
    return issueTokens(request.db, settings, { userId: used.user_id, tenantId: parsed.tenantId, role: membership.role }, used.family_id)
  })

  app.post('/logout', {
    schema: { body: Type.Object({ refreshToken: Type.String({ maxLength: 200 }) }, { additionalProperties: false }) }
  }, async (request, reply) => {
    const parsed = parseRefreshToken(request.body.refreshToken)
    if (parsed !== null) {
      request.dbContext = { tenantId: parsed.tenantId }
      await request.db.updateTable('refresh_tokens').set({ revoked_at: new Date() })
        .where('family_id', '=', (eb) => eb.selectFrom('refresh_tokens').select('family_id').where('token_hash', '=', parsed.hash))
        .where('revoked_at', 'is', null)
        .execute()
    }
    // The same answer whether or not the token existed.
    return reply.code(204).send()
  })

  app.get('/me', {
    onRequest: app.authenticate,
    schema: {
      response: {
        200: Type.Object({
          user: Type.Object({ id: Uuid, email: Type.String() }),
          tenant: Type.Object({ id: Uuid, name: Type.String() }),
          role: Type.String()
        }),
        401: Problem
      }
    }
  }, async (request, reply) => {
    const row = await request.db.selectFrom('users')
      .innerJoin('memberships', 'memberships.user_id', 'users.id')
      .innerJoin('tenants', 'tenants.id', 'memberships.tenant_id')
      .select(['users.id', 'users.email', 'tenants.id as tenantId', 'tenants.name', 'memberships.role'])
      .where('users.id', '=', request.auth!.sub)
      .executeTakeFirst()
    // A token outlives a removed membership by at most its few minutes; it opens nothing.
    if (row === undefined) return problem(reply, 401, 'NOT_A_MEMBER', 'this account is no longer a member of this tenant')
    return { user: { id: row.id, email: row.email }, tenant: { id: row.tenantId, name: row.name }, role: row.role }
  })
}

export default authRoutes
