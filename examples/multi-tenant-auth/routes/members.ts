// Members of the caller's tenant: list, and add (owners and admins only).
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { sql } from 'kysely'
import { hashPassword } from '../passwords.js'
import { Email, isUniqueViolation, Password, Problem, problem, Uuid } from './common.js'

const Member = Type.Object({ userId: Uuid, email: Type.String(), role: Type.String() })

const memberRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.addHook('onRequest', app.authenticate)

  app.get('/members', { schema: { response: { 200: Type.Array(Member) } } }, async (request) => {
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
        role: Type.Union([Type.Literal('admin'), Type.Literal('member')]),
        password: Type.Optional(Password)
      }, { additionalProperties: false }),
      response: { 201: Member, 400: Problem, 403: Problem, 409: Problem }
    }
  }, async (request, reply) => {
    if (request.auth!.role === 'member') return problem(reply, 403, 'FORBIDDEN', 'only owners and admins add members')
    const email = request.body.email.toLowerCase()
    const { rows } = await sql<{ id: string | null }>`SELECT user_id_by_email(${email}) AS id`.execute(request.db)
    let userId = rows[0].id
    if (userId === null) {
      if (request.body.password === undefined) return problem(reply, 400, 'PASSWORD_REQUIRED', 'a new account needs an initial password')
      const hash = await hashPassword(request.body.password, app.settings.passwordCost)
      userId = (await sql<{ id: string }>`SELECT create_user(${email}, ${hash}) AS id`.execute(request.db)).rows[0].id
    }
    try {
      await request.db.insertInto('memberships').values({ tenant_id: request.auth!.tid, user_id: userId, role: request.body.role }).execute()
    } catch (error) {
      if (isUniqueViolation(error)) return problem(reply, 409, 'ALREADY_MEMBER', 'this account is already a member')
      throw error
    }
    return reply.code(201).send({ userId, email, role: request.body.role })
  })
}

export default memberRoutes
