// fastify.db.transaction(fn) and fastify.db.kysely: work outside requests, same guarantees.
import t from 'tap'
import { sql } from 'kysely'
import type { Transaction } from 'kysely'
import { testDatabase } from './helpers/database.js'
import type { TestDatabase } from './helpers/database.js'

type Test = Parameters<Parameters<typeof t.test>[0]>[0]

async function setup (t: Test) {
  const db = await testDatabase(t)
  await db.query('CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)')
  // Checked at COMMIT, not at INSERT: a duplicate fails the COMMIT itself.
  await db.query('CREATE TABLE codes (code int NOT NULL, CONSTRAINT codes_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED)')
  const app = await db.app()
  return { db, app }
}

async function itemNames (db: TestDatabase): Promise<string[]> {
  const { rows } = await db.query('SELECT name FROM items ORDER BY id')
  return rows.map((row) => row.name)
}

t.test('transaction(fn) commits when fn resolves, and resolves to its result', async (t) => {
  const { db, app } = await setup(t)
  const result = await app.db.transaction(async (trx) => {
    const row = await trx.insertInto('items').values({ name: 'apple' }).returning('id').executeTakeFirstOrThrow()
    t.equal(await db.idleInTransaction(), 1, 'the work runs inside a transaction')
    t.same(await itemNames(db), [], 'not visible to others before COMMIT')
    return row.id
  })
  t.equal(result, 1)
  t.same(await itemNames(db), ['apple'], 'committed')
  const stats = app.db.stats()
  t.equal(stats.commits, 1)
  t.equal(stats.rollbacks, 0)
  t.equal(stats.active, 0)
  t.equal(stats.idle, 1, 'the connection went back to the pool')
  t.equal(await db.idleInTransaction(), 0)
})

t.test('transaction(fn) rolls back when fn throws, and rethrows the very same error', async (t) => {
  const { db, app } = await setup(t)
  const original = new Error('changed my mind')
  let caught: unknown
  try {
    await app.db.transaction(async (trx) => {
      await trx.insertInto('items').values({ name: 'apple' }).execute()
      throw original
    })
  } catch (error) {
    caught = error
  }
  t.equal(caught, original, 'the original error object')
  t.same(await itemNames(db), [], 'rolled back')
  const stats = app.db.stats()
  t.equal(stats.rollbacks, 1)
  t.equal(stats.commits, 0)
  t.equal(stats.destroyed, 0, 'a clean rollback returns the connection')
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('a deferred unique constraint violated at COMMIT rejects with COMMIT_FAILED, cause 23505', async (t) => {
  const { db, app } = await setup(t)
  let bodyFinished = false
  const err = await app.db.transaction(async (trx) => {
    await trx.insertInto('codes').values({ code: 7 }).execute()
    await trx.insertInto('codes').values({ code: 7 }).execute()
    await trx.insertInto('items').values({ name: 'alongside' }).execute()
    bodyFinished = true
    return 'unreachable'
  }).then(() => null, (error: Error & { code?: string, cause?: { code?: string } }) => error)
  t.ok(bodyFinished, 'both inserts passed: the check waits for COMMIT')
  t.ok(err, 'transaction() rejected')
  t.equal(err?.code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.equal(err?.cause?.code, '23505', 'the database error is the cause')
  const { rows } = await db.query('SELECT count(*)::int AS n FROM codes')
  t.equal(rows[0].n, 0, 'nothing of the transaction was kept')
  t.same(await itemNames(db), [])
  const stats = app.db.stats()
  t.equal(stats.commitFailures, 1)
  t.equal(stats.commits, 0)
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('trx used after fn returned rejects with TRANSACTION_FINISHED and writes nothing', async (t) => {
  const { db, app } = await setup(t)
  let kept: Transaction<any> | undefined
  await app.db.transaction(async (trx) => {
    kept = trx
    await trx.insertInto('items').values({ name: 'inside' }).execute()
  })
  t.ok(kept)
  await t.rejects(
    kept!.insertInto('items').values({ name: 'late' }).execute(),
    { code: 'FST_DB_SESSION_TRANSACTION_FINISHED' }
  )
  await t.rejects(sql`SELECT 1`.execute(kept!), { code: 'FST_DB_SESSION_TRANSACTION_FINISHED' })
  t.same(await itemNames(db), ['inside'], 'the late insert wrote nothing')
  const stats = app.db.stats()
  t.equal(stats.acquires, 1, 'the late queries took no connection')
  t.equal(stats.commits, 1)
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('settings { isolationLevel, accessMode } are applied to the transaction', async (t) => {
  const { db, app } = await setup(t)
  const settings = { isolationLevel: 'serializable', accessMode: 'read only' } as const
  const seen = await app.db.transaction(async (trx) => {
    const { rows } = await sql<{ isolation: string, readOnly: string }>`
      SELECT current_setting('transaction_isolation') AS isolation, current_setting('transaction_read_only') AS "readOnly"`.execute(trx)
    return rows[0]
  }, settings)
  t.same(seen, { isolation: 'serializable', readOnly: 'on' })

  await t.rejects(
    app.db.transaction((trx) => trx.insertInto('items').values({ name: 'nope' }).execute(), settings),
    { code: '25006' },
    'a write in a read-only transaction fails'
  )
  t.same(await itemNames(db), [])

  // Settings belong to that call only: the next transaction is the default read committed, read write.
  const plain = await app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: 'default' }).execute()
    const { rows } = await sql<{ isolation: string }>`SELECT current_setting('transaction_isolation') AS isolation`.execute(trx)
    return rows[0].isolation
  })
  t.equal(plain, 'read committed')
  t.same(await itemNames(db), ['default'])
  t.equal(app.db.stats().active, 0)
})

t.test('invalid arguments throw INVALID_OPTION without touching the database', async (t) => {
  const { app } = await setup(t)
  await t.rejects(app.db.transaction('not a function' as any), { code: 'FST_DB_SESSION_INVALID_OPTION' })
  await t.rejects(app.db.transaction(undefined as any), { code: 'FST_DB_SESSION_INVALID_OPTION' })
  await t.rejects(
    app.db.transaction(async () => 1, { isolationLevel: 'chaos' as any }),
    { code: 'FST_DB_SESSION_INVALID_OPTION' }
  )
  t.equal(app.db.stats().acquires, 0)
})

t.test('a failed query caught inside fn, then resolving: rejects with TRANSACTION_ABORTED', async (t) => {
  const { db, app } = await setup(t)
  let caughtCode: string | undefined
  const err = await app.db.transaction(async (trx) => {
    await trx.insertInto('items').values({ name: 'first' }).execute()
    try {
      await trx.insertInto('items').values({ id: 1, name: 'duplicate id' }).execute()
    } catch (error) {
      caughtCode = (error as { code?: string }).code
    }
    return 'fine, supposedly'
  }).then(() => null, (error: Error & { code?: string }) => error)
  t.equal(caughtCode, '23505', 'the inner query failed and was caught')
  t.equal(err?.code, 'FST_DB_SESSION_TRANSACTION_ABORTED')
  t.same(await itemNames(db), [], 'PostgreSQL rolled back the whole transaction')
  const stats = app.db.stats()
  t.equal(stats.commits, 0)
  t.equal(stats.commitFailures, 1)
  t.equal(stats.destroyed, 0, 'the connection is healthy and was returned')
  t.equal(stats.active, 0)
  t.equal(await db.idleInTransaction(), 0)
})

t.test('fastify.db.kysely: its own transactions commit and roll back, plain queries work, nothing stays checked out', async (t) => {
  const { db, app } = await setup(t)
  await app.db.kysely.transaction().execute(async (trx) => {
    await trx.insertInto('items').values({ name: 'committed' }).execute()
  })
  t.same(await itemNames(db), ['committed'])
  t.equal(app.db.stats().active, 0)

  const original = new Error('roll it back')
  await t.rejects(app.db.kysely.transaction().execute(async (trx) => {
    await trx.insertInto('items').values({ name: 'rolled back' }).execute()
    throw original
  }), original)
  t.same(await itemNames(db), ['committed'], 'the rolled-back row is absent')
  t.equal(app.db.stats().active, 0)

  const rows = await app.db.kysely.selectFrom('items').select('name').execute()
  t.same(rows, [{ name: 'committed' }], 'a plain query reads')
  const inserted = await app.db.kysely.insertInto('items').values({ name: 'autocommit' }).executeTakeFirst()
  t.equal(inserted.numInsertedOrUpdatedRows, 1n)
  t.same(await itemNames(db), ['committed', 'autocommit'], 'a plain write autocommits')

  const stats = app.db.stats()
  t.equal(stats.active, 0)
  t.equal(stats.destroyed, 0)
  t.equal(stats.acquires, 4)
  t.equal(stats.total, 1, 'all of it on one pooled connection')
  t.equal(await db.idleInTransaction(), 0)
  t.equal(await db.connections(), 1)
})
