// The service with a read replica: its read routes run on a real hot standby, and a client that
// sends back the db-session-lsn of its last write always finds what it wrote, even with the
// standby's replay paused; without it, the standby's older data shows the reads really go there.
// A logout ends the session at once, though the standby has not replayed it.
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { InjectOptions } from 'fastify'
import { startReplicationPair } from '../../../test/helpers/standby.js'
import { buildApp } from '../app.js'
import { outboxMailer } from '../mailer.js'
import { prepareDatabase } from '../setup.js'
import { bearer, readOutbox, signUp, TEST_PASSWORD_COST } from './service.js'

t.setTimeout(180_000)

t.test('a note created then read back at once is always found; reads run on the standby', async (t) => {
  const { primary, standby, caughtUp } = await startReplicationPair(t)
  await primary.query('CREATE DATABASE mt')
  const appUrl = await prepareDatabase(primary.url('mt'), 'mt_app')
  const replicaUrl = new URL(appUrl)
  replicaUrl.port = String(standby.port)
  const outbox = await mkdtemp(join(tmpdir(), 'mt-outbox-'))
  t.teardown(() => rm(outbox, { recursive: true, force: true }))
  const app = await buildApp({ databaseUrl: appUrl, replicaUrls: [replicaUrl.toString()], tokenSecret: randomBytes(32), mailer: outboxMailer(outbox), passwordCost: TEST_PASSWORD_COST })
  t.teardown(() => app.close())
  readOutbox(app, outbox)

  const owner = await signUp(app)
  // The account reaches the standby; from here on its replay is paused.
  await caughtUp()
  await standby.query('SELECT pg_wal_replay_pause()')
  t.teardown(() => standby.query('SELECT pg_wal_replay_resume()'))

  // The client keeps the position of its last write and sends it with every request.
  let lsn: string | undefined
  const send = async (options: InjectOptions) => {
    const res = await app.inject({ ...options, headers: { ...bearer(owner), ...(lsn === undefined ? {} : { 'db-session-lsn': lsn }) } })
    const position = res.headers['db-session-lsn']
    if (typeof position === 'string') lsn = position
    return res
  }

  const titles: string[] = []
  for (let i = 0; i < 5; i++) {
    const created = await send({ method: 'POST', url: '/notes', payload: { title: `note ${i}`, body: 'written on the primary' } })
    t.equal(created.statusCode, 201)
    t.match(lsn, /^[0-9A-F]+\/[0-9A-F]+$/, 'the write sent its position')
    titles.push(`note ${i}`)
    const read = await send({ method: 'GET', url: `/notes/${created.json().id}` })
    t.equal(read.statusCode, 200, `note ${i} is found at once`)
    t.equal(read.json().title, `note ${i}`)
    const list = await send({ method: 'GET', url: '/notes' })
    t.same(list.json().map((note: { title: string }) => note.title).sort(), titles, 'and listed')
  }
  t.equal((await send({ method: 'GET', url: '/me' })).json().user.id, owner.userId)
  t.equal((await send({ method: 'GET', url: '/members' })).statusCode, 200)

  // Without the position, the standby (replay paused) serves what it had: none of the notes.
  const stale = await app.inject({ method: 'GET', url: '/notes', headers: bearer(owner) })
  t.same(stale.json(), [], 'a read without the header ran on the standby')
  // A logout reaches the standby only once its replay resumes; the session check asks the primary,
  // so the logged-out access token reads nothing, even from the standby, with or without a position.
  t.equal((await app.inject({ method: 'POST', url: '/logout', payload: { refreshToken: owner.refreshToken } })).statusCode, 204)
  const afterLogout = await app.inject({ method: 'GET', url: '/notes', headers: bearer(owner) })
  t.equal(afterLogout.statusCode, 401, 'a logged-out token is refused at once on a read route')
  t.equal(afterLogout.json().code, 'SESSION_ENDED')
  t.equal((await app.inject({ method: 'GET', url: '/me', headers: bearer(owner) })).statusCode, 401)
  const stats = app.db.stats()
  t.ok(stats.replicas[0].replicaReads >= 1, 'the standby served reads')
  t.comment(`reads from the standby ${stats.replicaReads}, from the primary after waiting ${stats.replicaFallbacks.waitTimedOut}`)
})
