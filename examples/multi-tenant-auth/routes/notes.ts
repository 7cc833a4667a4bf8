// Notes, the tenant-owned resource. No query here filters by tenant: row-level security does,
// so a forgotten `where tenant_id = ...` cannot show another tenant's rows.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Transaction } from 'kysely'
import type { Database } from '../schema.js'
import type { FastifyRequest } from 'fastify'
import { Problem, problem, Text, Uuid } from './common.js'

// Serialized as ISO strings; Kysely hands back Dates.
const DateTime = Type.Unsafe<Date>(Type.String({ format: 'date-time' }))
const Note = Type.Object({
  id: Uuid,
  title: Type.String(),
  body: Type.String(),
  authorId: Uuid,
  createdAt: DateTime,
  updatedAt: DateTime
})
const NoteParams = Type.Object({ id: Uuid })
const columns = ['id', 'title', 'body', 'author_id as authorId', 'created_at as createdAt', 'updated_at as updatedAt'] as const

const noteRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.addHook('onRequest', app.authenticate)

  // Reads are read only transactions: with replicas (replicaUrls), they run there.
  const readOnly = { db: { accessMode: 'read only' } } as const

  app.get('/notes', { config: readOnly, schema: { response: { 200: Type.Array(Note) } } }, async (request) => {
    return request.db.selectFrom('notes').select(columns).orderBy('created_at', 'desc').limit(100).execute()
  })

  app.post('/notes', {
    schema: {
      body: Type.Object({ title: Text({ minLength: 1, maxLength: 200 }), body: Type.Optional(Text({ maxLength: 10_000 })) }, { additionalProperties: false }),
      response: { 201: Note }
    }
  }, async (request, reply) => {
    const note = await request.db.insertInto('notes')
      .values({ title: request.body.title, body: request.body.body ?? '', author_id: request.auth!.sub })
      .returning(columns)
      .executeTakeFirstOrThrow()
    return reply.code(201).send(note)
  })

  app.get('/notes/:id', { config: readOnly, schema: { params: NoteParams, response: { 200: Note, 404: Problem } } }, async (request, reply) => {
    const note = await request.db.selectFrom('notes').select(columns).where('id', '=', request.params.id).executeTakeFirst()
    return note ?? problem(reply, 404, 'NOT_FOUND', 'no such note')
  })

  /** Whether the caller may change the note: its author, or an owner or admin. Locks the row. */
  async function editable (db: Transaction<Database>, id: string, auth: NonNullable<FastifyRequest['auth']>): Promise<'ok' | 'missing' | 'forbidden'> {
    const note = await db.selectFrom('notes').select('author_id').where('id', '=', id).forUpdate().executeTakeFirst()
    if (note === undefined) return 'missing'
    return note.author_id === auth.sub || auth.role !== 'member' ? 'ok' : 'forbidden'
  }

  app.patch('/notes/:id', {
    schema: {
      params: NoteParams,
      body: Type.Object({ title: Type.Optional(Text({ minLength: 1, maxLength: 200 })), body: Type.Optional(Text({ maxLength: 10_000 })) }, { additionalProperties: false, minProperties: 1 }),
      response: { 200: Note, 403: Problem, 404: Problem }
    }
  }, async (request, reply) => {
    const access = await editable(request.db, request.params.id, request.auth!)
    if (access === 'missing') return problem(reply, 404, 'NOT_FOUND', 'no such note')
    if (access === 'forbidden') return problem(reply, 403, 'FORBIDDEN', 'only its author or an admin changes a note')
    return request.db.updateTable('notes')
      .set({ ...request.body, updated_at: new Date() })
      .where('id', '=', request.params.id)
      .returning(columns)
      .executeTakeFirstOrThrow()
  })

  app.delete('/notes/:id', { schema: { params: NoteParams, response: { 204: Type.Null(), 403: Problem, 404: Problem } } }, async (request, reply) => {
    const access = await editable(request.db, request.params.id, request.auth!)
    if (access === 'missing') return problem(reply, 404, 'NOT_FOUND', 'no such note')
    if (access === 'forbidden') return problem(reply, 403, 'FORBIDDEN', 'only its author or an admin deletes a note')
    await request.db.deleteFrom('notes').where('id', '=', request.params.id).execute()
    return reply.code(204).send(null)
  })
}

export default noteRoutes
