// Members of the caller's tenant: list, and invite (owners and admins only). An invitation
// makes no account and grants nothing until POST /invitations/accept; its token goes to the
// invitee by mail, never to the inviter, who could otherwise accept in the invitee's name.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { newInvitationToken } from '../tokens.js'
import { invitationMail } from './mails.js'
import { Email, Problem, problem, Uuid } from './common.js'

const Member = Type.Object({ userId: Uuid, email: Type.String(), role: Type.String() })
const Invitation = Type.Object({
  email: Type.String(),
  role: Type.String(),
  expiresAt: Type.Unsafe<Date>(Type.String({ format: 'date-time' }))
})

const memberRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.addHook('onRequest', app.authenticate)

  // A read only transaction: with replicas (replicaUrls), it runs there.
  app.get('/members', { config: { db: { accessMode: 'read only' } }, schema: { response: { 200: Type.Array(Member) } } }, async (request) => {
    return request.db.selectFrom('memberships')
      .innerJoin('users', 'users.id', 'memberships.user_id')
      .select(['users.id as userId', 'users.email', 'memberships.role'])
      .orderBy('memberships.created_at')
      .execute()
  })

  app.post('/members', {
    schema: {
      body: Type.Object({
        email: Email,
        role: Type.Unsafe<'admin' | 'member'>(Type.String({ enum: ['admin', 'member'] }))
      }, { additionalProperties: false }),
      response: { 201: Invitation, 403: Problem, 409: Problem }
    }
  }, async (request, reply) => {
    const auth = request.auth!
    if (auth.role === 'member') return problem(reply, 403, 'FORBIDDEN', 'only owners and admins add members')
    const email = request.body.email.toLowerCase()
    // Only this tenant's members are visible here (GET /members shows them anyway), so this says
    // nothing about whether the email has an account elsewhere.
    const member = await request.db.selectFrom('memberships')
      .innerJoin('users', 'users.id', 'memberships.user_id')
      .select('users.id')
      .where('users.email', '=', email)
      .executeTakeFirst()
    if (member !== undefined) return problem(reply, 409, 'ALREADY_MEMBER', 'this account is already a member')
    // The same answer whether or not the email has an account: the invitee proves it on accepting.
    const { token, hash } = newInvitationToken(auth.tid)
    const expiresAt = new Date(Date.now() + app.settings.invitationDays * 86_400_000)
    await request.db.insertInto('invitations').values({
      tenant_id: auth.tid,
      email,
      role: request.body.role,
      token_hash: hash,
      expires_at: expiresAt,
      created_by: auth.sub
    }).execute()
    const tenant = await request.db.selectFrom('tenants').select('name').executeTakeFirstOrThrow()
    // Mailed only once this transaction has committed (before the 201 leaves): a request that
    // rolls back, its COMMIT included, mails nothing. A mailer that fails is logged and counted
    // (stats().callbackErrors); the invitation stands, and can be sent again.
    const mail = invitationMail({ to: email, tenantName: tenant.name, role: request.body.role, token, expiresAt })
    request.afterCommit(() => app.mailer.send(mail))
    return reply.code(201).send({ email, role: request.body.role, expiresAt })
  })
}

export default memberRoutes
