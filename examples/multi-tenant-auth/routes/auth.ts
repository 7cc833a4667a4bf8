// Sign-up (a tenant, and an invitation mailed to its owner), log in, refresh (rotated; a reused
// token revokes its family), log out, me.
import { randomUUID } from 'node:crypto'
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { verifyAccountPassword } from '../account-password.js'
import { newInvitationToken, parseRefreshToken } from '../tokens.js'
import { Email, Problem, problem, Text, Tokens, Uuid } from './common.js'
import { signUpMail } from './mails.js'
import { limitPerAddress } from './rate-limits.js'
import { issueTokens } from './session-tokens.js'

const authRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { settings } = app

  app.post('/tenants', {
    // Each sign-up sends a mail: limited per address.
    config: { rateLimit: { max: settings.signupAttempts, timeWindow: settings.loginWindowMillis } },
    schema: {
      body: Type.Object({ name: Text({ minLength: 1, maxLength: 100 }), email: Email }, { additionalProperties: false }),
      response: { 202: Type.Object({ message: Type.String() }) }
    }
  }, async (request, reply) => {
    const email = request.body.email.toLowerCase()
    const tenantId = randomUUID()
    const { token, hash } = newInvitationToken(tenantId)
    const expiresAt = new Date(Date.now() + settings.invitationDays * 86_400_000)
    // The tenant, and an invitation to own it: no account is made or looked at until the owner
    // proves the email by accepting with the mailed token. So the answer (and its time) is the
    // same whether or not the email has an account, and nobody can sign up someone else's.
    // Mailed once the transaction has committed (transaction() resolves after that), with no
    // connection held; nothing is mailed when it rolls back.
    await app.db.transaction(async (trx, unit) => {
      await trx.insertInto('tenants').values({ id: tenantId, name: request.body.name }).execute()
      await trx.insertInto('invitations').values({ tenant_id: tenantId, email, role: 'owner', token_hash: hash, expires_at: expiresAt, created_by: null }).execute()
      unit.afterCommit(() => app.mailer.send(signUpMail({ to: email, tenantName: request.body.name, token, expiresAt })))
    }, { context: { 'app.tenant_id': tenantId } })
    return reply.code(202).send({ message: `to confirm, accept the invitation mailed to ${email}` })
  })

  app.post('/login', {
    // Each attempt costs a password hash. Per address, whatever the email, before the body is read...
    onRequest: limitPerAddress(app, settings.loginAttemptsPerAddress, settings.loginWindowMillis),
    config: {
      // ...and per address and email, to slow down guessing one account's password.
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
    // No request.db: its transaction would hold a pooled connection across the ~100 ms hash.
    // The account is read in one short transaction, the hash runs with no connection held, and
    // the session is written in another.
    const context = { 'app.tenant_id': request.body.tenantId }
    // Only members of this tenant are visible here (row-level security on users and memberships).
    const member = await app.db.transaction((trx) => trx.selectFrom('users')
      .innerJoin('memberships', 'memberships.user_id', 'users.id')
      .select('users.id')
      .where('users.email', '=', request.body.email.toLowerCase())
      .executeTakeFirst(), { context })
    // An unknown email costs the same scrypt as a wrong password: no timing oracle.
    // The database compares the hash (the app role cannot read it): two statements on the pool,
    // with no connection held while the password is hashed.
    const valid = await verifyAccountPassword(app.db.kysely, member?.id ?? null, request.body.password, settings.dummyPasswordHash)
    if (member === undefined || !valid) return problem(reply, 401, 'INVALID_CREDENTIALS', 'invalid email, password or tenant')
    return app.db.transaction((trx) => issueTokens(trx, settings, { userId: member.id, tenantId: request.body.tenantId }), { context })
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
    const membership = await request.db.selectFrom('memberships').select('user_id')
      .where('user_id', '=', used.user_id).executeTakeFirst()
    if (membership === undefined) return problem(reply, 401, 'INVALID_REFRESH_TOKEN', 'no longer a member of this tenant')
    return issueTokens(request.db, settings, { userId: used.user_id, tenantId: parsed.tenantId }, used.family_id)
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

  // A read only transaction: with replicas (replicaUrls), it runs there.
  app.get('/me', {
    config: { db: { accessMode: 'read only' } },
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
    // authenticate found the membership; it can have been removed since, by a commit in between.
    if (row === undefined) return problem(reply, 401, 'NOT_A_MEMBER', 'this account is no longer a member of this tenant')
    return { user: { id: row.id, email: row.email }, tenant: { id: row.tenantId, name: row.name }, role: row.role }
  })
}

export default authRoutes
