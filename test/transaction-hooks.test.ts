// fastify.db.transaction(fn): fn(trx, unit) gets afterCommit, afterRollback and savepoint with
// the meanings they have on a request; transaction() resolves after the afterCommit callbacks ran.
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { sql } from 'kysely'
import { effects, setup } from './helpers/hooks.js'
import { capturedLogs, itemNames } from './helpers/util.js'

// Each test makes a database and a pool; on a loaded machine the file outlasts tap's default 30 s.
t.setTimeout(120_000)

t.test('transaction(): afterCommit callbacks run after COMMIT, in order, and transaction() resolves after them', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const result = await app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values({ name: 'apple' }).execute()
    unit.afterCommit(async () => {
      ran.push(`first sees ${(await itemNames(db)).join(',')}`)
      await sleep(50)
      await db.query("INSERT INTO effects (name) VALUES ('mailed')")
    })
    unit.afterCommit(() => { ran.push('second') })
    unit.afterRollback(() => { ran.push('afterRollback') })
    return 'done'
  })
  const seen = await effects(db)
  t.equal(result, 'done')
  t.same(seen, ['mailed'], 'the async callback had finished when transaction() resolved')
  t.same(ran, ['first sees apple', 'second'])
})

t.test('transaction(): fn throws: afterRollback runs, afterCommit never, the error is rethrown', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const failure = new Error('changed my mind')
  const caught = await app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values({ name: 'apple' }).execute()
    unit.afterCommit(() => { ran.push('afterCommit') })
    unit.afterRollback(() => { ran.push('afterRollback') })
    throw failure
  }).catch((error: unknown) => error)
  t.equal(caught, failure)
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('transaction(): a failed COMMIT runs afterRollback, not afterCommit', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const caught = await app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values([{ name: 'twin' }, { name: 'twin' }]).execute()
    unit.afterCommit(() => { ran.push('afterCommit') })
    unit.afterRollback(() => { ran.push('afterRollback') })
  }).catch((error: { code?: string }) => error)
  t.equal(caught?.code, 'FST_DB_SESSION_COMMIT_FAILED')
  t.same(ran, ['afterRollback'])
  t.same(await itemNames(db), [])
})

t.test('transaction(): fastify.close() during fn runs afterRollback', async (t) => {
  const { db, app } = await setup(t, { closeTimeoutMillis: 5000 })
  const ran: string[] = []
  let started: () => void = () => {}
  const inside = new Promise<void>((resolve) => { started = resolve })
  const outcome = app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values({ name: 'closing' }).execute()
    unit.afterCommit(() => { ran.push('afterCommit') })
    unit.afterRollback(() => { ran.push('afterRollback') })
    started()
    await sql`SELECT pg_sleep(0.5)`.execute(trx)
  }).catch((error: { code?: string }) => error)
  await inside
  await app.close()
  t.same(ran, ['afterRollback'])
  t.ok(await outcome, 'transaction() rejected')
  t.same(await itemNames(db), [])
})

t.test('transaction(): savepoints, with callbacks following them', async (t) => {
  const { db, app } = await setup(t)
  const ran: string[] = []
  const result = await app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values({ name: 'before' }).execute()
    const inner = await unit.savepoint(async (sp) => {
      await sp.insertInto('items').values({ name: 'released' }).execute()
      unit.afterCommit(() => { ran.push('released: afterCommit') })
      return 'inner result'
    })
    await unit.savepoint(async (sp) => {
      await sp.insertInto('items').values({ name: 'dropped' }).execute()
      unit.afterCommit(() => { ran.push('dropped: afterCommit') })
      unit.afterRollback(() => { ran.push('dropped: afterRollback') })
      await unit.savepoint(async (nested) => { await nested.insertInto('items').values({ name: 'nested dropped' }).execute() })
      throw new Error('undo this part')
    }).catch((error: Error) => { ran.push(`rethrown: ${error.message}`) })
    return inner
  })
  t.equal(result, 'inner result')
  t.same(ran, ['dropped: afterRollback', 'rethrown: undo this part', 'released: afterCommit'])
  t.same(await itemNames(db), ['before', 'released'])
})

t.test('transaction(): a unit that never queried runs afterCommit when fn resolves, afterRollback when it throws', async (t) => {
  const { app } = await setup(t)
  const ran: string[] = []
  await app.db.transaction(async (_trx, unit) => {
    unit.afterCommit(() => { ran.push('afterCommit 1') })
    unit.afterRollback(() => { ran.push('afterRollback 1') })
  })
  await app.db.transaction(async (_trx, unit) => {
    unit.afterCommit(() => { ran.push('afterCommit 2') })
    unit.afterRollback(() => { ran.push('afterRollback 2') })
    throw new Error('no')
  }).catch(() => {})
  t.same(ran, ['afterCommit 1', 'afterRollback 2'])
  t.equal(app.db.stats().acquires, 0)
})

t.test('transaction(): a failing callback is logged through fastify.log and counted; transaction() still resolves', async (t) => {
  const logs = capturedLogs()
  const { db, app } = await setup(t, {}, logs.options)
  const ran: string[] = []
  const result = await app.db.transaction(async (trx, unit) => {
    await trx.insertInto('items').values({ name: 'kept' }).execute()
    unit.afterCommit(async () => { throw new Error('queue down') })
    unit.afterCommit(() => { ran.push('next') })
    return 'committed'
  })
  t.equal(result, 'committed')
  t.same(ran, ['next'])
  t.same(await itemNames(db), ['kept'])
  t.equal(app.db.stats().callbackErrors, 1)
  t.ok(logs.lines.some((line) => line.level === 50 && line.msg.includes('an afterCommit callback failed') && line.route === 'fastify.db.transaction'))
})

t.test('transaction(): unit methods refuse a non-function, and registering after the end', async (t) => {
  const { app } = await setup(t)
  let kept: any
  const codes = await app.db.transaction(async (_trx, unit) => {
    kept = unit
    const errors: string[] = []
    for (const call of [() => unit.afterCommit(1 as any), () => unit.afterRollback(1 as any), () => unit.savepoint(1 as any)]) {
      try {
        await call()
      } catch (error) {
        errors.push((error as { code: string }).code)
      }
    }
    return errors
  })
  t.same(codes, ['FST_DB_SESSION_INVALID_OPTION', 'FST_DB_SESSION_INVALID_OPTION', 'FST_DB_SESSION_INVALID_OPTION'])
  t.throws(() => kept.afterCommit(() => {}), { code: 'FST_DB_SESSION_TRANSACTION_FINISHED' })
})
