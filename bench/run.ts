// npm run bench: every variant as its own server process on 127.0.0.1, driven by autocannon in
// another process, pairs run alternately (A B A B ...) after a warm-up. Only ratios measured in
// the same run count; absolute figures depend on the machine and on what else it is doing.
import { spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFile, writeFile } from 'node:fs/promises'
import { cpus } from 'node:os'
import { fileURLToPath } from 'node:url'
import { freePort, startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'
import { seedItems } from './seed.js'
import { applyLayout, pinnedLayout, serverCommand, UNPINNED } from './cpu-pinning.js'
import type { Layout } from './cpu-pinning.js'
import { inProcessOverhead } from './in-process.js'
import { alternating } from './sequential.js'
import type { Latencies } from './sequential.js'

// Many short rounds rather than a few long ones: the median of their ratios follows the slow
// drifts of a shared machine less.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 8)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32)
/** Requests per sequential run (one client, one request at a time). */
const SEQUENTIAL_REQUESTS = Number(process.env.BENCH_SEQUENTIAL_REQUESTS ?? 1000)
const root = fileURLToPath(new URL('..', import.meta.url))

const VARIANTS = {
  1: 'bare',
  2: 'plugin-untouched',
  3: 'kysely-transaction',
  4: 'fastify-postgres',
  5: 'plugin-select',
  6: 'kysely-tenant',
  7: 'plugin-tenant',
  8: 'plugin-readonly-autocommit',
  9: 'plugin-readonly-transaction',
  10: 'plugin-untouched-traced',
  11: 'plugin-select-traced',
  12: 'plugin-select-prepared',
  13: 'plugin-readonly-autocommit-prepared'
} as const
type VariantNumber = keyof typeof VARIANTS
const ALL_PAIRS: Array<[VariantNumber, VariantNumber, string]> = [
  [2, 1, 'plugin registered, route untouched / bare Fastify'],
  [5, 3, 'plugin select / hand-written Kysely transaction'],
  [5, 4, 'plugin select / @fastify/postgres transact'],
  [7, 6, 'plugin with tenant context / hand-written tenant transaction'],
  [8, 4, 'plugin read-only select, autocommit / @fastify/postgres transact'],
  [9, 4, 'plugin read-only transaction (answers before COMMIT) / @fastify/postgres transact'],
  // Tracing on (an OpenTelemetry SDK registered, every span sampled): 10/1 and 11/3 against 2/1 and
  // 5/3 above, and 11/5 what the unit of work's span costs a request directly.
  [10, 1, 'plugin registered, tracing on, route untouched / bare Fastify'],
  [11, 3, 'plugin select, tracing on / hand-written Kysely transaction'],
  [11, 5, 'plugin select, tracing on / tracing off'],
  // preparedStatements: the same routes with their select parsed and planned once per connection.
  [12, 4, 'plugin select, prepared / @fastify/postgres transact'],
  [13, 4, 'plugin read-only select, autocommit, prepared / @fastify/postgres transact']
]
// BENCH_PAIRS=5/3,5/4 runs only those pairs, for a quick comparison while working: no
// saturation or in-process figures, and bench/results.json is left as it is.
const ONLY = process.env.BENCH_PAIRS?.split(',')
// BENCH_PHASES=sequential (or throughput): only that part of the selected pairs.
// BENCH_PHASES=saturation: only the saturation runs; they replace that part of bench/results.json.
const PHASES = process.env.BENCH_PHASES?.split(',') ?? ['throughput', 'sequential']
/** A quick comparison: only the tables of what ran, and bench/results.json left as it is. */
const PARTIAL = ONLY !== undefined || !PHASES.includes('throughput') || !PHASES.includes('sequential')
const PAIRS = ALL_PAIRS.filter(([a, b]) => PHASES.includes('throughput') && (ONLY === undefined || ONLY.includes(`${a}/${b}`)))
const TARGETS: Record<string, number> = { '2/1': 0.98, '5/3': 1.10, '5/4': 1.00, '7/6': 1.20, '8/4': 1.25, '12/4': 1.00, '13/4': 1.25 }
// Latency as one user feels it on an idle server: A's p50 and p99 over B's (lower is better).
// 1/4 and 3/4 are references: the bare route (no database at all) and a hand-written Kysely transaction.
const ALL_SEQUENTIAL_PAIRS: Array<[VariantNumber, VariantNumber, string]> = [
  [5, 4, 'plugin select / @fastify/postgres transact'],
  [8, 4, 'plugin read-only select, autocommit / @fastify/postgres transact'],
  [9, 4, 'plugin read-only transaction / @fastify/postgres transact'],
  [12, 4, 'plugin select, prepared / @fastify/postgres transact'],
  [13, 4, 'plugin read-only select, autocommit, prepared / @fastify/postgres transact'],
  [3, 4, 'hand-written Kysely transaction / @fastify/postgres transact'],
  [1, 4, 'bare Fastify, no database / @fastify/postgres transact']
]
const SEQUENTIAL_PAIRS = ALL_SEQUENTIAL_PAIRS.filter(([a, b]) => PHASES.includes('sequential') && (ONLY === undefined || ONLY.includes(`${a}/${b}`)))
/** At most this p50 ratio. */
const SEQUENTIAL_TARGETS: Record<string, number> = { '5/4': 0.85, '8/4': 0.65, '12/4': 0.85, '13/4': 0.65 }
/**
 * The same pairs under other conditions, to say which favour which: more connections than the
 * pool has (requests queue for connections, and how long each holds one decides), and the
 * processes left wherever the scheduler puts them (servers restarted every round, so that no
 * variant keeps a lucky or unlucky placement for the whole run).
 */
const CONDITION_PAIRS: Array<[VariantNumber, VariantNumber]> = [[5, 4], [12, 4]]
const CONDITION_ROUNDS = Number(process.env.BENCH_CONDITION_ROUNDS ?? 4)
const CONDITIONS = [
  { name: 'pinned, 50 connections, 5 s rounds', pinned: true, connections: 50, seconds: 5 },
  { name: 'unpinned, 32 connections, 3 s rounds', pinned: false, connections: 32, seconds: 3 }
]

interface Run {
  rps: number
  p50: number
  p99: number
  max: number
  errors: number
  non2xx: number
  requests: number
  cpuMicrosPerRequest: number
  /** Saturation only, measured by the server from each request's arrival to its response's end. */
  server?: { slowestServedMillis: number, slowestRefusedMillis: number, maxLoopDelayMillis: number }
}
interface Server { process: ChildProcess, port: number }

const started = Date.now()
const plannedSeconds = PAIRS.length * (ROUNDS + 1) * 2 * (SECONDS + 0.5) + SEQUENTIAL_PAIRS.length * (ROUNDS + 1) * 2 * SEQUENTIAL_REQUESTS / 1500 + 2 * (SECONDS + 1) + 25 +
  (!PARTIAL ? CONDITION_PAIRS.length * (CONDITION_ROUNDS + 1) * CONDITIONS.reduce((sum, { pinned, seconds }) => sum + 2 * (seconds + 0.5) + (pinned ? 0 : 2 * 3.5), 0) : 0)
function progress (what: string): void {
  const elapsed = (Date.now() - started) / 1000
  const left = Math.max(0, plannedSeconds - elapsed)
  process.stdout.write(`[${elapsed.toFixed(0).padStart(4)} s, ~${left.toFixed(0)} s left] ${what}\n`)
}

let layout: Layout = UNPINNED
/** The layout of the main run, for the report. */
let pinned: Layout = UNPINNED

async function startServer (variant: string, databaseUrl: string, extra: string[] = []): Promise<Server> {
  const port = await freePort()
  const [command, args] = serverCommand(layout, ['--import', 'tsx', 'bench/server.ts', variant, String(port), databaseUrl, ...extra])
  const child = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  for await (const chunk of child.stdout!) if (String(chunk).includes('ready')) break
  return { process: child, port }
}

async function stopServer ({ process: server }: Server): Promise<void> {
  server.kill('SIGTERM')
  await once(server, 'exit')
}

interface ServerFigures { micros: number, slowestServedMillis: number, slowestRefusedMillis: number, maxLoopDelayMillis: number }

async function serverFigures (server: Server): Promise<ServerFigures> {
  return (await fetch(`http://127.0.0.1:${server.port}/__cpu`)).json()
}

/** autocannon in its own process, JSON out. */
async function load (server: Server, seconds: number, connections: number, headers: Record<string, string> = {}): Promise<Run> {
  const before = (await serverFigures(server)).micros
  const args = [fileURLToPath(import.meta.resolve('autocannon/autocannon.js')), '--json', '-c', String(connections), '-d', String(seconds)]
  for (const [name, value] of Object.entries(headers)) args.push('-H', `${name}=${value}`)
  args.push(`http://127.0.0.1:${server.port}/`)
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'ignore'] })
  let out = ''
  child.stdout.on('data', (chunk) => { out += chunk })
  await once(child, 'exit')
  const result = JSON.parse(out)
  const { micros: after, ...figures } = await serverFigures(server)
  const requests = result.requests.total
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    max: result.latency.max,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
    requests,
    cpuMicrosPerRequest: requests > 0 ? (after - before) / requests : Infinity,
    server: {
      slowestServedMillis: Math.round(figures.slowestServedMillis),
      slowestRefusedMillis: Math.round(figures.slowestRefusedMillis),
      maxLoopDelayMillis: Math.round(figures.maxLoopDelayMillis)
    }
  }
}

type SaturationRun = Run & { acquireTimeoutMillis: number, served: number, refusedOnTime: boolean }

/**
 * 200 clients against a pool of 10 whose requests hold their connection 20 ms: with a generous
 * acquire timeout, and with a short one (every new connection then outlives some deadlines).
 */
async function saturationRuns (): Promise<Record<'generous' | 'short', SaturationRun>> {
  const result: Partial<Record<'generous' | 'short', SaturationRun>> = {}
  for (const [name, millis] of [['generous', 5000], ['short', 100]] as const) {
    progress(`saturation: 200 clients, pool of 10, ${name} acquire timeout (${millis} ms)`)
    const server = await startServer('saturation', databaseUrl, [String(millis)])
    const run = await load(server, SECONDS + 1, 200)
    await stopServer(server)
    // Every refused request answered within the timeout, give or take how late the event loop
    // ran (a timer cannot fire sooner than the loop gets to it).
    const refusedOnTime = (run.server?.slowestRefusedMillis ?? 0) <= millis + (run.server?.maxLoopDelayMillis ?? 0)
    result[name] = { acquireTimeoutMillis: millis, ...run, served: run.requests - run.non2xx, refusedOnTime }
  }
  return result as Record<'generous' | 'short', SaturationRun>
}

function printSaturation (saturation: Record<'generous' | 'short', SaturationRun>): void {
  console.log('Saturation (200 clients, pool of 10, 20 ms per request):')
  console.table(Object.fromEntries(Object.values(saturation).map((run) => [`${run.acquireTimeoutMillis} ms`, {
    rps: Math.round(run.rps), served: run.served, refused: run.non2xx, p99: run.p99, max: run.max, errors: run.errors, ...run.server
  }])))
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres()
const databaseUrl = process.env.DATABASE_URL ?? embedded!.url
const servers = new Map<VariantNumber, Server>()
try {
  await seedItems(databaseUrl)
  layout = process.env.BENCH_PIN === '0' ? UNPINNED : pinnedLayout()
  pinned = layout
  await applyLayout(layout, databaseUrl)
  progress(`PostgreSQL ready; servers on CPU ${layout.server ?? 'any'}, PostgreSQL and load on CPU ${layout.rest ?? 'any'}; starting servers`)
  for (const [number, variant] of Object.entries(VARIANTS)) {
    if (![...PAIRS, ...SEQUENTIAL_PAIRS].some((pair) => pair.includes(Number(number) as VariantNumber))) continue
    servers.set(Number(number) as VariantNumber, await startServer(variant, databaseUrl))
  }

  const runs = new Map<VariantNumber, Run[]>()
  const ratios: Record<string, { rps: number[], cpu: number[] }> = {}
  const headers = { 'x-tenant': 'tenant-42' }
  for (const [a, b, label] of PAIRS) {
    const key = `${a}/${b}`
    ratios[key] = { rps: [], cpu: [] }
    for (let round = 0; round <= ROUNDS; round++) {
      progress(`pair ${key} (${label}): ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`}`)
      const runA = await load(servers.get(a)!, SECONDS, CONNECTIONS, headers)
      const runB = await load(servers.get(b)!, SECONDS, CONNECTIONS, headers)
      if (round === 0) continue
      runs.set(a, [...(runs.get(a) ?? []), runA])
      runs.set(b, [...(runs.get(b) ?? []), runB])
      ratios[key].rps.push(runA.rps / runB.rps)
      ratios[key].cpu.push(runB.cpuMicrosPerRequest / runA.cpuMicrosPerRequest)
    }
  }

  const latencies = new Map<VariantNumber, Latencies[]>()
  const latencyRatios: Record<string, { p50: number[], p99: number[] }> = {}
  for (const [a, b, label] of SEQUENTIAL_PAIRS) {
    const key = `${a}/${b}`
    latencyRatios[key] = { p50: [], p99: [] }
    for (let round = 0; round <= ROUNDS; round++) {
      progress(`sequential ${key} (${label}): ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`}, ${SEQUENTIAL_REQUESTS} requests each`)
      const [runA, runB] = await alternating(servers.get(a)!.port, servers.get(b)!.port, SEQUENTIAL_REQUESTS, headers)
      if (round === 0) continue
      latencies.set(a, [...(latencies.get(a) ?? []), runA])
      latencies.set(b, [...(latencies.get(b) ?? []), runB])
      latencyRatios[key].p50.push(runA.p50 / runB.p50)
      latencyRatios[key].p99.push(runA.p99 / runB.p99)
    }
  }
  const latencyRows = Object.entries(latencyRatios).map(([key, { p50, p99 }]) => ({
    ratio: key,
    target: SEQUENTIAL_TARGETS[key],
    p50Ratio: Number(median(p50).toFixed(3)),
    p99Ratio: Number(median(p99).toFixed(3)),
    p50Rounds: p50.map((r) => Number(r.toFixed(3))),
    met: SEQUENTIAL_TARGETS[key] === undefined ? undefined : median(p50) <= SEQUENTIAL_TARGETS[key]
  }))
  const latencyTable = [...latencies].sort(([a], [b]) => a - b).map(([number, list]) => ({
    variant: `${number}. ${VARIANTS[number]}`,
    runs: list.length,
    p50Micros: Math.round(median(list.map((r) => r.p50))),
    p99Micros: Math.round(median(list.map((r) => r.p99))),
    errors: list.reduce((sum, r) => sum + r.errors, 0)
  }))

  if (PARTIAL && PHASES.includes('saturation')) {
    const saturation = await saturationRuns()
    printSaturation(saturation)
    const report = JSON.parse(await readFile(new URL('./results.json', import.meta.url), 'utf8'))
    await writeFile(new URL('./results.json', import.meta.url), JSON.stringify({ ...report, saturation: { ...saturation, date: new Date().toISOString() } }, null, 2) + '\n')
    progress('saturation written to bench/results.json (the rest of it left as it was)')
  }
  if (PARTIAL) {
    if (PAIRS.length > 0) console.table(Object.entries(ratios).map(([ratio, { rps, cpu }]) => ({ ratio, rps: median(rps).toFixed(3), cpu: median(cpu).toFixed(3), rounds: rps.map((r) => r.toFixed(2)).join(' ') })))
    if (SEQUENTIAL_PAIRS.length > 0) {
      console.log('Sequential latency (A/B, lower is better):')
      console.table(latencyRows.map(({ p50Rounds, ...row }) => ({ ...row, p50Rounds: p50Rounds.map((r) => r.toFixed(2)).join(' ') })))
    }
  } else {
    const saturation = await saturationRuns()

    progress('in-process overhead: fastify.inject on an untouched route, with and without the plugin')
    const inProcess = await inProcessOverhead(databaseUrl)

    const conditionRows = []
    for (const condition of CONDITIONS) {
      if (!condition.pinned) {
        layout = UNPINNED
        await applyLayout(UNPINNED, databaseUrl)
      }
      for (const [a, b] of CONDITION_PAIRS) {
        const rps: number[] = []
        const cpu: number[] = []
        for (let round = 0; round <= CONDITION_ROUNDS; round++) {
          progress(`condition '${condition.name}': pair ${a}/${b}, ${round === 0 ? 'warm-up' : `round ${round}/${CONDITION_ROUNDS}`}`)
          const pair: Server[] = []
          for (const number of [a, b]) {
            if (condition.pinned) {
              pair.push(servers.get(number)!)
              continue
            }
            // A new process each round, placed anew, warmed up for a second before it counts.
            const server = await startServer(VARIANTS[number], databaseUrl)
            await load(server, 1, condition.connections, headers)
            pair.push(server)
          }
          const runA = await load(pair[0], condition.seconds, condition.connections, headers)
          const runB = await load(pair[1], condition.seconds, condition.connections, headers)
          if (!condition.pinned) await Promise.all(pair.map(stopServer))
          if (round === 0) continue
          rps.push(runA.rps / runB.rps)
          cpu.push(runB.cpuMicrosPerRequest / runA.cpuMicrosPerRequest)
        }
        conditionRows.push({
          condition: condition.name,
          ratio: `${a}/${b}`,
          rpsRatio: Number(median(rps).toFixed(3)),
          cpuRatio: Number(median(cpu).toFixed(3)),
          rounds: rps.map((r) => Number(r.toFixed(3)))
        })
      }
    }

    const table = Object.entries(VARIANTS).map(([number, variant]) => {
      const list = runs.get(Number(number) as VariantNumber) ?? []
      return {
        variant: `${number}. ${variant}`,
        rounds: list.length,
        rps: Math.round(median(list.map((r) => r.rps))),
        p50: median(list.map((r) => r.p50)),
        p99: median(list.map((r) => r.p99)),
        errors: list.reduce((sum, r) => sum + r.errors + r.non2xx, 0),
        cpuMicrosPerRequest: Number(median(list.map((r) => r.cpuMicrosPerRequest)).toFixed(1))
      }
    })
    const ratioRows = Object.entries(ratios).map(([key, { rps, cpu }]) => ({
      ratio: key,
      target: TARGETS[key] ?? null,
      rpsRatio: Number(median(rps).toFixed(3)),
      cpuRatio: Number(median(cpu).toFixed(3)),
      rounds: rps.map((r) => Number(r.toFixed(3))),
      // The tracing pairs have no target: they say what tracing costs.
      met: TARGETS[key] === undefined ? null : median(rps) >= TARGETS[key] || median(cpu) >= TARGETS[key]
    }))
    const report = {
      machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
      settings: { rounds: ROUNDS, seconds: SECONDS, connections: CONNECTIONS, pool: 10, serverCpus: pinned.server ?? 'any', databaseAndLoadCpus: pinned.rest ?? 'any' },
      variants: table,
      ratios: ratioRows,
      sequential: { requestsPerRun: SEQUENTIAL_REQUESTS, variants: latencyTable, ratios: latencyRows },
      conditions: conditionRows,
      saturation,
      inProcess,
      date: new Date().toISOString()
    }
    await writeFile(new URL('./results.json', import.meta.url), JSON.stringify(report, null, 2) + '\n')

    console.log('\nVariants (medians over rounds):')
    console.table(table)
    console.log('Ratios (median of per-round ratios; rps = A/B throughput, cpu = B/A server CPU per request):')
    console.table(ratioRows.map(({ rounds, ...row }) => row))
    console.log(`Sequential latency (one client, one request at a time, ${SEQUENTIAL_REQUESTS} per run; medians over runs, µs):`)
    console.table(latencyTable)
    console.log('Sequential latency ratios (median of per-round A/B; lower is better):')
    console.table(latencyRows.map(({ p50Rounds, ...row }) => row))
    console.log(`Other conditions (median of ${CONDITION_ROUNDS} rounds' A/B):`)
    console.table(conditionRows.map(({ rounds, ...row }) => ({ ...row, rounds: rounds.map((r) => r.toFixed(2)).join(' ') })))
    printSaturation(saturation)
    console.log('In-process overhead (fastify.inject, untouched route):')
    console.table(inProcess)
    console.log(`bench: done in ${((Date.now() - started) / 1000).toFixed(0)} s; report in bench/results.json`)
  }
} finally {
  // Each server closes its pool before PostgreSQL stops: a pool cut off by the stop reports errors.
  await Promise.all([...servers.values()].map(stopServer))
  await embedded?.stop()
}
