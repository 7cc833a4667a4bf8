// Schemas and replies the routes share.
import { Type } from '@sinclair/typebox'
import type { FastifyReply } from 'fastify'

/**
 * Ids in the one form the service issues (app.ts registers the format). Ajv's own `uuid` also
 * takes upper case and a `urn:uuid:` prefix: the first makes tokens that never verify, the second
 * reaches PostgreSQL, which refuses it.
 */
export const Uuid = Type.String({ format: 'lowercase-uuid' })

/**
 * Text PostgreSQL can store as sent: no NUL (it refuses those) and no lone surrogate halves
 * (they would come back changed).
 */
export function Text (options: { minLength?: number, maxLength: number }) {
  return Type.String({ ...options, pattern: '^[^\\u0000\\uD800-\\uDFFF]*$' })
}
export const Email = Type.String({ format: 'email', minLength: 3, maxLength: 254 })
export const Password = Text({ minLength: 10, maxLength: 200 })
export const Problem = Type.Object({ code: Type.String(), message: Type.String() })

export const Tokens = Type.Object({
  accessToken: Type.String(),
  refreshToken: Type.String(),
  expiresIn: Type.Integer()
})

export function problem (reply: FastifyReply, status: number, code: string, message: string): FastifyReply {
  return reply.code(status).send({ code, message })
}
