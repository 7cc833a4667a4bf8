// Ids are refused at the schema unless in the one form the service issues (lower-case, hyphenated),
// unexpected errors answer a code and a generic message (the detail goes to the log), and each
// field's validation message is said once.
import t from 'tap'
import { sql } from 'kysely'
import { errors } from 'fastify-db-session'
import { capturedLogs } from '../../../test/helpers/util.js'
import { bearer, signUp, startService } from './service.js'

t.test('ids in any other form than the issued one are refused at the schema', async (t) => {
  const { app } = await startService(t)
  const owner = await signUp(app)
  const note = (await app.inject({ method: 'POST', url: '/notes', headers: bearer(owner), payload: { title: 'A note' } })).json()

  for (const [label, form] of [['urn:uuid:', (id: string) => `urn:uuid:${id}`], ['upper case', (id: string) => id.toUpperCase()]] as const) {
    const login = await app.inject({ method: 'POST', url: '/login', payload: { tenantId: form(owner.tenantId), email: owner.email, password: owner.password } })
    t.equal(login.statusCode, 400, `POST /login with a ${label} tenant id: 400, not a 500 nor tokens that never work`)
    t.match(login.json().message, /^body\/tenantId /, 'the message names the field')
    t.notMatch(login.body, /invalid input syntax|uuid:/i, 'and carries no PostgreSQL text')
    for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
      const res = await app.inject({ method, url: `/notes/${form(note.id)}`, headers: bearer(owner), payload: method === 'PATCH' ? { title: 'changed' } : undefined })
      t.same([res.statusCode, res.json().message.startsWith('params/id ')], [400, true], `${method} /notes/:id with a ${label} id: 400 naming params/id`)
    }
  }
  t.equal((await app.inject({ method: 'GET', url: `/notes/${note.id}`, headers: bearer(owner) })).json().title, 'A note', 'control: the issued form works')
})

t.test('an unexpected error answers a code and a generic message; the detail is logged', async (t) => {
  const logs = capturedLogs()
  const { app } = await startService(t, { logger: logs.options.logger })
  // A route that fails the way a bug would: PostgreSQL refuses a query.
  app.get('/broken', { onRequest: app.authenticate }, async (request) => {
    await sql`SELECT 1 / 0`.execute(request.db)
    return { never: true }
  })
  const owner = await signUp(app)
  const res = await app.inject({ method: 'GET', url: '/broken', headers: bearer(owner) })
  t.equal(res.statusCode, 500)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'requestId', 'statusCode'], 'nothing but these fields')
  t.match(body, { statusCode: 500, code: 'INTERNAL_ERROR', error: 'Internal Server Error', message: 'something went wrong; the server log has the details', requestId: String },
    'a code and a generic message')
  t.notMatch(res.body, /division/, 'PostgreSQL\'s text stays on the server')
  const logged = logs.lines.find((line) => line.level >= 50 && JSON.stringify(line).includes('division by zero'))
  t.ok(logged, 'the log has PostgreSQL\'s message')
  t.equal(logged?.reqId, body.requestId, 'under the request id the client was given')

  const invalid = await app.inject({ method: 'POST', url: '/notes', headers: bearer(owner), payload: { titel: 'typo' } })
  t.same([invalid.statusCode, invalid.json().message], [400, "body must have required property 'title'"], '4xx messages stay as useful as they were')
})

t.test('the plugin\'s coded 409 and 503 keep their code, with a message that says what to do and no database text', async (t) => {
  const { app } = await startService(t)
  const cause = new Error('could not serialize access due to read/write dependencies among transactions (secret detail)')
  app.get('/conflict', async () => { throw new errors.FST_DB_SESSION_SERIALIZATION_FAILURE({ cause }) })
  app.get('/busy', async () => { throw new errors.FST_DB_SESSION_CONNECTION_LOST('terminating connection due to administrator command (secret detail)') })
  const conflict = await app.inject({ method: 'GET', url: '/conflict' })
  t.match(conflict.json(), { statusCode: 409, code: 'FST_DB_SESSION_SERIALIZATION_FAILURE', message: /retry/, requestId: String })
  const busy = await app.inject({ method: 'GET', url: '/busy' })
  t.match(busy.json(), { statusCode: 503, code: 'FST_DB_SESSION_CONNECTION_LOST', message: /retry later/, requestId: String })
  t.notMatch(conflict.body + busy.body, /secret detail/, 'no database text')
})

t.test('one message per field, naming what is allowed', async (t) => {
  const { app } = await startService(t)
  const owner = await signUp(app)
  const res = await app.inject({ method: 'POST', url: '/members', headers: bearer(owner), payload: { email: 'someone@example.test', role: 'owner' } })
  t.equal(res.statusCode, 400)
  t.equal(res.json().message, "body/role must be one of 'admin', 'member'")
})
