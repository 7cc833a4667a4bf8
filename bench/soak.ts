// npm run soak: many requests with a random mix of endings against one server process, then a
// ledger check. Every request's handler inserts the request's id into `ledger` through request.db
// before meeting its fate; afterwards a row must exist for every request answered 2xx and for no
// other. Then: no connection leaked, no backend left in a transaction, and a flat heap.
//
// SOAK_REQUESTS (100000), SOAK_CONCURRENCY (50), SOAK_POOL (20), SOAK_SEED (random),
// SOAK_MEMORY_LIMIT_MB (20), DATABASE_URL (else an embedded PostgreSQL). Exit code 0 when every
// check passes, 1 otherwise.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Agent, request as httpRequest } from 'node:http'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { freePort, startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'

function setting (name: string, fallback: number): number {
  const text = process.env[name]
  if (text === undefined || text === '') return fallback
  const value = Number(text)
  if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer; instead got '${text}'`)
  return value
}

const TOTAL = setting('SOAK_REQUESTS', 100_000)
const CONCURRENCY = setting('SOAK_CONCURRENCY', 50)
const POOL = setting('SOAK_POOL', 20)
const SEED = setting('SOAK_SEED', 1 + Math.floor(Math.random() * 2 ** 31))
const MEMORY_LIMIT_MB = setting('SOAK_MEMORY_LIMIT_MB', 20)
const HANDLER_TIMEOUT = 60
/** The share of client hang-ups made 0-10 ms after sending rather than on the handler's 103. */
const EARLY_ABORTS = 0.25
/** A request with no answer by then counts as hung. */
const CLIENT_TIMEOUT = 15_000
const PROGRESS_EVERY = 3000
const root = fileURLToPath(new URL('..', import.meta.url))
// Deadlines below are unref'd: a pending one must not keep the process alive after the report.

/** Each fate, its share of the requests (SOAK_MIX, e.g. `ok:40,kill:0`, changes them), and the answers it calls for. */
const FATES = [
  { name: 'ok', weight: 40, expected: '200 or 201', accepts: (status: number) => status === 200 || status === 201 },
  { name: 'throw', weight: 12, expected: '500', accepts: (status: number) => status === 500 },
  { name: 'status', weight: 12, expected: '422', accepts: (status: number) => status === 422 },
  { name: 'abort', weight: 12, expected: 'hung up by the client (3 in 4 on the 103 after the insert, 1 in 4 at 0-10 ms)', accepts: (status: number) => status === ABORTED },
  { name: 'timeout', weight: 8, expected: '503 FST_ERR_HANDLER_TIMEOUT', accepts: (status: number, code?: string) => status === 503 && code === 'FST_ERR_HANDLER_TIMEOUT' },
  { name: 'timeout-query', weight: 4, expected: '503 FST_ERR_HANDLER_TIMEOUT', accepts: (status: number, code?: string) => status === 503 && code === 'FST_ERR_HANDLER_TIMEOUT' },
  { name: 'kill', weight: 12, expected: '5xx', accepts: (status: number) => status >= 500 && status < 600 }
]
for (const part of (process.env.SOAK_MIX ?? '').split(',').filter(Boolean)) {
  const [name, weight] = part.split(':')
  const fate = FATES.find((candidate) => candidate.name === name)
  if (fate === undefined || !(Number(weight) >= 0)) throw new TypeError(`SOAK_MIX must look like 'ok:40,kill:12' with fates ${FATES.map((f) => f.name).join(', ')}; instead got '${part}'`)
  fate.weight = Number(weight)
}

// What a request ended with: an HTTP status, or one of these.
const NOT_SENT = 0
const ABORTED = -1
const SOCKET_ERROR = -2
const HUNG = -3
const ABORT_FATE = FATES.findIndex((fate) => fate.name === 'abort')
const endingName = (status: number): string =>
  ({ [NOT_SENT]: 'not sent', [ABORTED]: 'aborted', [SOCKET_ERROR]: 'socket error', [HUNG]: 'hung' } as Record<number, string>)[status] ?? String(status)

/** mulberry32: the same seed gives the same sequence of fates and client delays. */
function random (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
}

const rand = random(SEED)
const fates = new Uint8Array(TOTAL)
const weightSum = FATES.reduce((sum, fate) => sum + fate.weight, 0)
for (let i = 0; i < TOTAL; i++) {
  let pick = rand() * weightSum
  let fate = 0
  while (pick >= FATES[fate].weight) pick -= FATES[fate++].weight
  fates[i] = fate
}
const endings = new Int16Array(TOTAL)
const latencies = new Float32Array(TOTAL)
/** fate → ending → error code (or '' for none) → count. */
const codes = new Map<string, number>()
let bodyMismatches = 0
let done = 0
let stopping = false

interface MemorySample { label: string, requests: number, heapUsed: number, rss: number }
interface ServerStats { db: Record<string, number>, counters: { inflight: number, handled: number, lateQueries: Record<string, number>, killMissed: number, abortNeverCame: number, uncaught: number, logged: Record<string, number> } }
interface Check { check: string, passed: boolean, detail: string }

const started = Date.now()
const seconds = (): string => ((Date.now() - started) / 1000).toFixed(0).padStart(4)
const mb = (bytes: number): number => Number((bytes / 2 ** 20).toFixed(2))
const say = (line: string): void => { process.stdout.write(`[${seconds()} s] ${line}\n`) }

/** The server process, started at once (so that a failure can end it), and its lines once it is ready. */
function startServer (databaseUrl: string, port: number): { child: ChildProcess, ready: Promise<AsyncIterator<string>> } {
  const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/soak-server.ts', String(port), databaseUrl, String(POOL), String(HANDLER_TIMEOUT)], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'inherit']
  })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const ready = Promise.race([lines.next(), sleep(60_000, null, { ref: false }).then(() => ({ done: true, value: 'nothing within 60 s' }))]).then((first) => {
    if (first.value !== 'ready') throw new Error(`the soak server did not start (it said '${first.value ?? ''}')`)
    return lines
  })
  return { child, ready }
}

async function main (): Promise<boolean> {
  say(`${TOTAL} requests, ${CONCURRENCY} in flight, pool of ${POOL}, seed ${SEED}, mix ${FATES.map((f) => `${f.name}:${f.weight}`).join(',')}`)
  const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres()
  const serverUrl = process.env.DATABASE_URL ?? embedded!.url
  const admin = new pg.Client({ connectionString: serverUrl })
  // PostgreSQL stopping under it (an interrupt) must not crash this process before the cleanup.
  admin.on('error', (error) => say(`the admin connection failed: ${error.message}`))
  const name = `soak_${Date.now()}_${process.pid}`
  let child: ChildProcess | null = null
  let created = false
  // If this process is made to exit (embedded-postgres's signal hook does), the server goes too.
  const killChild = (): void => { child?.kill('SIGKILL') }
  process.once('exit', killChild)
  // Interrupted: send no more requests, then check, report and clean up as usual. (With the
  // embedded PostgreSQL, its package's own signal hook stops it and exits first.)
  const interrupt = (): void => {
    if (!stopping) say('interrupted: sending no more requests')
    stopping = true
  }
  process.on('SIGINT', interrupt)
  process.on('SIGTERM', interrupt)
  try {
    await admin.connect()
    await admin.query(`CREATE DATABASE ${name}`)
    created = true
    const url = new URL(serverUrl)
    url.pathname = '/' + name
    const databaseUrl = url.toString()
    const setup = new pg.Client({ connectionString: databaseUrl })
    await setup.connect()
    await setup.query('CREATE TABLE ledger (id integer PRIMARY KEY, fate text NOT NULL)')
    await setup.end()
    say(`PostgreSQL ready (${embedded ? 'embedded' : 'DATABASE_URL'}), database ${name}`)

    const port = await freePort()
    const server = startServer(databaseUrl, port)
    child = server.child
    const lines = await server.ready
    let childExit: { code: number | null, signal: string | null } | null = null
    child.once('exit', (code, signal) => {
      childExit = { code, signal }
      if (!stopping) say(`the soak server exited (code ${code}, signal ${signal}) during the run`)
      stopping = true
    })
    say(`server process ${child.pid} on 127.0.0.1:${port}`)

    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY })
    const base = `http://127.0.0.1:${port}`
    const getJson = async <T>(path: string): Promise<T> => (await fetch(base + path)).json() as Promise<T>

    const memory: MemorySample[] = []
    const sampleMemory = async (label: string): Promise<void> => {
      const requests = done
      const { heapUsed, rss, gc } = await getJson<{ heapUsed: number, rss: number, gc: boolean }>('/__memory')
      if (!gc) throw new Error('the soak server has no global.gc(): it must run with --expose-gc')
      memory.push({ label, requests, heapUsed, rss })
    }
    const pending: Array<Promise<void>> = []

    function send (index: number): Promise<void> {
      const fate = fates[index]
      const { name } = FATES[fate]
      const sent = performance.now()
      return new Promise((resolve) => {
        let ended = false
        const end = (status: number, code = ''): void => {
          if (ended) return
          ended = true
          clearTimeout(timer)
          endings[index] = status
          latencies[index] = performance.now() - sent
          const key = `${fate}|${status}|${code}`
          codes.set(key, (codes.get(key) ?? 0) + 1)
          done++
          resolve()
        }
        const request = httpRequest({ agent, host: '127.0.0.1', port, method: 'POST', path: `/soak/${name}/${index + 1}`, headers: { 'content-length': '0' } })
        const timer = setTimeout(() => {
          end(HUNG)
          request.destroy()
        }, CLIENT_TIMEOUT)
        const hangUp = (): void => {
          end(ABORTED)
          request.destroy()
        }
        if (fate === ABORT_FATE && rand() < EARLY_ABORTS) {
          // Anywhere: before the handler runs, during BEGIN or the insert, or after.
          setTimeout(hangUp, rand() * 10)
        } else if (fate === ABORT_FATE) {
          // The 103 says the row is in: hang up while the handler still waits.
          request.on('information', () => setTimeout(hangUp, rand() * 15))
        }
        request.on('response', (response) => {
          const chunks: Buffer[] = []
          response.on('data', (chunk: Buffer) => chunks.push(chunk))
          response.on('error', () => end(SOCKET_ERROR, 'response error'))
          response.on('end', () => {
            const text = Buffer.concat(chunks).toString()
            let body: { id?: number, code?: string } = {}
            try {
              body = JSON.parse(text)
            } catch {}
            const status = response.statusCode!
            if (status < 300 && body.id !== index + 1) bodyMismatches++
            end(status, body.code ?? '')
          })
        })
        request.on('error', (error: NodeJS.ErrnoException) => end(SOCKET_ERROR, error.code ?? error.message))
        request.end()
      })
    }

    let next = 0
    async function worker (): Promise<void> {
      // stopping is set by the server's exit, elsewhere: checked before each request.
      while (next < TOTAL) {
        if (stopping) return
        await send(next++)
      }
    }

    let lastDone = 0
    let lastTime = Date.now()
    let nextSample = 1
    const progress = setInterval(() => {
      const now = Date.now()
      const rate = (done - lastDone) / ((now - lastTime) / 1000)
      const overall = done / ((now - started) / 1000)
      lastDone = done
      lastTime = now
      const left = rate > 0 ? `~${((TOTAL - done) / rate).toFixed(0)} s left` : '? s left'
      const tally = new Map<string, number>()
      for (const [key, n] of codes) {
        const ending = Number(key.split('|')[1])
        const label = ending >= 200 && ending < 300 ? '2xx' : endingName(ending)
        tally.set(label, (tally.get(label) ?? 0) + n)
      }
      const tallyText = [...tally].sort().map(([label, n]) => `${label} ${n}`).join(', ')
      say(`${done}/${TOTAL} (${(100 * done / TOTAL).toFixed(1)}%), ${rate.toFixed(0)} req/s (${overall.toFixed(0)} overall), ${left} | ${tallyText}`)
    }, PROGRESS_EVERY)
    const sampler = setInterval(() => {
      // Heap samples at every tenth of the run, taken under load (after a full GC in the server).
      if (nextSample <= 9 && done >= (TOTAL * nextSample) / 10) {
        pending.push(sampleMemory(`${nextSample * 10}%`).catch((error) => say(`memory sample failed: ${error.message}`)))
        nextSample++
      }
    }, 50)

    const loadStarted = Date.now()
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    const loadSeconds = (Date.now() - loadStarted) / 1000
    clearInterval(progress)
    clearInterval(sampler)
    await Promise.all(pending)
    say(`${done} requests answered or ended in ${loadSeconds.toFixed(1)} s (${(done / loadSeconds).toFixed(0)} req/s); draining`)

    // Drained: no handler running (the timeout route stalls past its 503), no connection out.
    let drained: ServerStats | null = null
    let stats: ServerStats | null = null
    if (childExit === null) {
      const drainEnd = Date.now() + 15_000
      do {
        stats = await getJson<ServerStats>('/__stats')
        if (stats.counters.inflight === 0 && stats.db.active === 0 && stats.db.waiting === 0) drained = stats
        else await sleep(100)
      } while (drained === null && Date.now() < drainEnd)
      await sampleMemory('end')
    }

    const backendsAfterDrain = await backendStates(admin, name)
    const ledger = new pg.Client({ connectionString: databaseUrl })
    await ledger.connect()
    const { rows } = await ledger.query<{ id: number, fate: string }>('SELECT id, fate FROM ledger')
    await ledger.end()

    // Close the server: its plugin's leaks counter is read after fastify.close().
    agent.destroy()
    let final: ServerStats | null = null
    if (childExit === null) {
      stopping = true
      child.kill('SIGTERM')
      const deadline = sleep(20_000, null, { ref: false })
      const line = await Promise.race([lines.next().then((r) => r.value ?? null), deadline])
      if (line?.startsWith('final ')) final = JSON.parse(line.slice('final '.length))
      if (childExit === null) await Promise.race([once(child, 'exit'), sleep(5000, null, { ref: false })])
      if (childExit === null) {
        say('the soak server did not exit; killing it')
        child.kill('SIGKILL')
      }
    }
    const backendsAfterClose = await backendStates(admin, name)

    return report({ rows, drained, stats, final, childExit, backendsAfterDrain, backendsAfterClose, memory, loadSeconds })
  } finally {
    process.removeListener('exit', killChild)
    process.removeListener('SIGINT', interrupt)
    process.removeListener('SIGTERM', interrupt)
    if (child !== null && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    if (created) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch((error) => say(`could not drop ${name}: ${error.message}`))
    await admin.end().catch(() => {})
    if (embedded) {
      say('stopping PostgreSQL')
      await embedded.stop()
    }
    say('done')
  }
}

async function backendStates (admin: pg.Client, database: string): Promise<Record<string, number>> {
  const { rows } = await admin.query<{ state: string | null, n: number }>(
    'SELECT state, count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 GROUP BY state', [database])
  return Object.fromEntries(rows.map((row) => [row.state ?? '(none)', row.n]))
}

/** Least-squares slope of heapUsed over requests done: bytes per request. */
function heapSlope (samples: MemorySample[]): number {
  const n = samples.length
  if (n < 2) return NaN
  const meanX = samples.reduce((sum, s) => sum + s.requests, 0) / n
  const meanY = samples.reduce((sum, s) => sum + s.heapUsed, 0) / n
  let covariance = 0
  let variance = 0
  for (const s of samples) {
    covariance += (s.requests - meanX) * (s.heapUsed - meanY)
    variance += (s.requests - meanX) ** 2
  }
  return covariance / variance
}

function percentile (sorted: Float32Array, p: number): number {
  if (sorted.length === 0) return 0
  return Number(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))].toFixed(1))
}

interface Outcome {
  rows: Array<{ id: number, fate: string }>
  drained: ServerStats | null
  stats: ServerStats | null
  final: ServerStats | null
  childExit: { code: number | null, signal: string | null } | null
  backendsAfterDrain: Record<string, number>
  backendsAfterClose: Record<string, number>
  memory: MemorySample[]
  loadSeconds: number
}

function report (outcome: Outcome): boolean {
  const { rows, drained, stats, final, childExit, backendsAfterDrain, backendsAfterClose, memory, loadSeconds } = outcome
  const committed = new Uint8Array(TOTAL)
  let stray = 0
  for (const row of rows) {
    if (row.id >= 1 && row.id <= TOTAL && row.fate === FATES[fates[row.id - 1]].name) committed[row.id - 1] = 1
    else stray++
  }

  const perFate = FATES.map(() => ({ sent: 0, asExpected: 0, committed: 0, lost: 0, phantom: 0, unexpected: new Map<string, number>() }))
  const statusColumns = new Set<number>()
  let lost = 0
  let phantom = 0
  let unexpected = 0
  let hung = 0
  let notSent = 0
  for (let i = 0; i < TOTAL; i++) {
    const ending = endings[i]
    const fate = perFate[fates[i]]
    if (ending === NOT_SENT) {
      notSent++
      continue
    }
    fate.sent++
    statusColumns.add(ending)
    if (ending === HUNG) hung++
    if (committed[i]) fate.committed++
    const answered2xx = ending >= 200 && ending < 300
    if (answered2xx && !committed[i]) { fate.lost++; lost++ }
    if (!answered2xx && committed[i]) { fate.phantom++; phantom++ }
  }
  for (const [key, n] of codes) {
    const [fateText, endingText, code] = key.split('|')
    const fate = Number(fateText)
    if (FATES[fate].accepts(Number(endingText), code)) perFate[fate].asExpected += n
    else {
      unexpected += n
      const label = `${endingName(Number(endingText))}${code ? ' ' + code : ''}`
      perFate[fate].unexpected.set(label, (perFate[fate].unexpected.get(label) ?? 0) + n)
    }
  }

  const columns = [...statusColumns].sort((a, b) => (a < 0 ? 1000 - a : a) - (b < 0 ? 1000 - b : b))
  console.log(`\nOutcomes per fate (${TOTAL} requests, seed ${SEED}):`)
  console.table(Object.fromEntries(FATES.map((fate, f) => {
    const row: Record<string, string | number> = { expected: fate.expected, sent: perFate[f].sent }
    for (const status of columns) {
      let n = 0
      for (const [key, count] of codes) if (key.startsWith(`${f}|${status}|`)) n += count
      row[endingName(status)] = n
    }
    const lat = latencies.filter((_, i) => fates[i] === f && endings[i] !== NOT_SENT).sort()
    Object.assign(row, {
      'as expected': perFate[f].asExpected,
      'rows committed': perFate[f].committed,
      'p50 ms': percentile(lat, 0.5),
      'p99 ms': percentile(lat, 0.99),
      'max ms': percentile(lat, 1)
    })
    return [fate.name, row]
  })))

  console.log('Answers by fate, status and error code:')
  console.table([...codes].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([key, n]) => {
    const [fate, ending, code] = key.split('|')
    return { fate: FATES[Number(fate)].name, answer: endingName(Number(ending)), code: code || '-', count: n }
  }))

  const late = { ...(final ?? stats)?.counters.lateQueries }
  const lateRan = late.ran ?? 0
  const lateOther = Object.entries(late).filter(([code]) => code !== 'FST_DB_SESSION_TRANSACTION_FINISHED' && code !== 'ran')
  const counters = (final ?? stats)?.counters
  const heapAt10 = memory.find((sample) => sample.label === '10%')
  const heapAtEnd = memory.find((sample) => sample.label === 'end')
  const growth = heapAt10 && heapAtEnd ? heapAtEnd.heapUsed - heapAt10.heapUsed : NaN
  const slope = heapSlope(memory.filter((sample) => sample.label !== 'end'))
  const describe = (map: Map<string, number>): string => [...map].map(([label, n]) => `${label}: ${n}`).join(', ')
  const idleInTransaction = (states: Record<string, number>): number =>
    Object.entries(states).filter(([state]) => state.startsWith('idle in transaction')).reduce((sum, [, n]) => sum + n, 0)
  const backendCount = (states: Record<string, number>): number => Object.values(states).reduce((sum, n) => sum + n, 0)

  const checks: Check[] = [
    { check: 'every request sent', passed: notSent === 0, detail: `${TOTAL - notSent} of ${TOTAL}` },
    { check: 'every 2xx answer has its row committed', passed: lost === 0, detail: `${lost} missing${lost ? ' (' + perFate.map((f, i) => f.lost ? `${FATES[i].name}: ${f.lost}` : '').filter(Boolean).join(', ') + ')' : ''}` },
    { check: 'no row committed for a request not answered 2xx', passed: phantom === 0, detail: `${phantom} committed${phantom ? ' (' + perFate.map((f, i) => f.phantom ? `${FATES[i].name}: ${f.phantom}` : '').filter(Boolean).join(', ') + ')' : ''}` },
    { check: 'no stray row (late query, unknown id)', passed: stray === 0, detail: `${stray} of ${rows.length} rows` },
    { check: 'every request got the answer its fate calls for', passed: unexpected === 0, detail: unexpected === 0 ? 'all' : perFate.map((f, i) => f.unexpected.size ? `${FATES[i].name}: ${describe(f.unexpected)}` : '').filter(Boolean).join('; ') },
    { check: 'no request hung', passed: hung === 0, detail: `${hung} without an answer after ${CLIENT_TIMEOUT / 1000} s` },
    { check: 'every 2xx body carries its own id', passed: bodyMismatches === 0, detail: `${bodyMismatches} mismatched` },
    { check: 'queries after the finish are refused', passed: lateRan === 0 && lateOther.length === 0, detail: Object.entries(late).map(([code, n]) => `${code}: ${n}`).join(', ') || 'none made' },
    { check: 'drained: no handler running, active 0, waiting 0', passed: drained !== null, detail: stats ? `inflight ${stats.counters.inflight}, active ${stats.db.active}, waiting ${stats.db.waiting}` : 'no stats' },
    { check: 'no backend idle in transaction after the drain', passed: idleInTransaction(backendsAfterDrain) === 0, detail: JSON.stringify(backendsAfterDrain) },
    { check: 'close(): leaks 0, no connection open', passed: final !== null && final.db.leaks === 0 && final.db.total === 0, detail: final ? `leaks ${final.db.leaks}, total ${final.db.total}` : 'no final stats' },
    { check: 'no backend left after close', passed: backendCount(backendsAfterClose) === 0, detail: JSON.stringify(backendsAfterClose) },
    { check: 'server: no crash, no uncaught error', passed: childExit !== null && (childExit as { code: number | null }).code === 0 && counters?.uncaught === 0, detail: `exit ${JSON.stringify(childExit)}, uncaught ${counters?.uncaught}` },
    { check: 'every kill found its backend', passed: counters?.killMissed === 0, detail: `${counters?.killMissed} missed` },
    { check: 'every abort came while its handler waited', passed: counters?.abortNeverCame === 0, detail: `${counters?.abortNeverCame} never came` },
    { check: `heap growth (10% → end) within ${MEMORY_LIMIT_MB} MB`, passed: Number.isFinite(growth) && growth <= MEMORY_LIMIT_MB * 2 ** 20, detail: Number.isFinite(growth) ? `${mb(growth)} MB (×${(heapAtEnd!.heapUsed / heapAt10!.heapUsed).toFixed(3)}); trend under load ${Number.isFinite(slope) ? (slope * 10_000 / 1024).toFixed(1) : '?'} KB per 10k requests` : 'not sampled' }
  ]

  console.log('Pool (fastify.db.stats()):')
  console.table({
    'after the drain': drained?.db ?? stats?.db,
    'after close()': final?.db
  })
  console.log('Backends of the soak database in pg_stat_activity, by state:')
  console.table({ 'after the drain': backendsAfterDrain, 'after close()': backendsAfterClose })
  console.log('Server heap after a full GC:')
  console.table(memory.map((sample) => ({ at: sample.label, requests: sample.requests, 'heapUsed MB': mb(sample.heapUsed), 'rss MB': mb(sample.rss) })))
  if (counters && Object.keys(counters.logged).length > 0) {
    console.log('Server log (warn and above), by message:')
    console.table(Object.entries(counters.logged).sort(([, a], [, b]) => b - a).map(([message, n]) => ({ message: message.slice(0, 160), count: n })))
  }
  console.log('Checks:')
  console.table(checks.map(({ check, passed, detail }) => ({ check, result: passed ? 'pass' : 'FAIL', detail })))
  const passed = checks.every((check) => check.passed)
  console.log(`soak: ${passed ? 'passed' : 'FAILED'}; ${TOTAL - notSent} requests in ${loadSeconds.toFixed(1)} s (${((TOTAL - notSent) / loadSeconds).toFixed(0)} req/s), ${((Date.now() - started) / 1000).toFixed(0)} s in all; ${rows.length} rows committed`)
  return passed
}

// An explicit exit: embedded-postgres's exit hook turns 'beforeExit' into process.exit(0),
// which would drop a process.exitCode of 1.
main().then((passed) => passed ? 0 : 1, (error) => {
  console.error('soak: failed to run:', error)
  return 1
}).then((code) => {
  process.stdout.write('', () => process.exit(code))
})
