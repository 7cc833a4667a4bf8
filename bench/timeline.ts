// Where one request's time goes when the server is not busy: each variant of timeline-server.ts
// served sequentially (one client, one request at a time), its p50 in the client and, from the
// server, the median time after onRequest of each step: the statement batches sent to
// PostgreSQL and their answers, the handler's query result, the response's end. Pinned as
// `npm run bench` pins (cpu-pinning.ts). Prints the table `npm run bench`'s README figures quote.
// `npm run build && node --import tsx bench/timeline.ts [variants,...]`; BENCH_ROUNDS, BENCH_SEQUENTIAL_REQUESTS.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { freePort, startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'
import { seedItems } from './seed.js'
import { applyLayout, pinnedLayout, serverCommand } from './cpu-pinning.js'
import { sequential } from './sequential.js'

const ALL = ['fastify-postgres', 'plugin-select', 'plugin-select-prepared', 'plugin-readonly-autocommit', 'plugin-readonly-autocommit-prepared', 'pg-three-round-trips', 'pg-batch', 'pg-single', 'pg-single-prepared']
const variants = process.argv[2]?.split(',') ?? ALL
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const REQUESTS = Number(process.env.BENCH_SEQUENTIAL_REQUESTS ?? 2000)
const root = fileURLToPath(new URL('..', import.meta.url))
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]

const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres()
const databaseUrl = process.env.DATABASE_URL ?? embedded!.url
const servers: Array<{ variant: string, port: number, child: ReturnType<typeof spawn>, p50: number[], steps: Array<Record<string, number>> }> = []
try {
  await seedItems(databaseUrl)
  const layout = pinnedLayout()
  await applyLayout(layout, databaseUrl)
  for (const variant of variants) {
    const port = await freePort()
    const [command, args] = serverCommand(layout, ['--import', 'tsx', 'bench/timeline-server.ts', variant, String(port), databaseUrl])
    const child = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
    for await (const chunk of child.stdout!) if (String(chunk).includes('ready')) break
    servers.push({ variant, port, child, p50: [], steps: [] })
  }
  for (let round = 0; round <= ROUNDS; round++) {
    process.stdout.write(`round ${round}/${ROUNDS}${round === 0 ? ' (warm-up)' : ''}\n`)
    for (const server of servers) {
      const { p50 } = await sequential(server.port, REQUESTS)
      const steps = await (await fetch(`http://127.0.0.1:${server.port}/__timeline`)).json() as Record<string, number>
      if (round === 0) continue
      server.p50.push(p50)
      server.steps.push(steps)
    }
  }
  const base = servers[0]
  console.log(`p50 in the client (µs), its ratio to ${base.variant} (median of per-round ratios), and each step's median µs after onRequest in the server:`)
  console.table(Object.fromEntries(servers.map((server) => {
    const row: Record<string, number> = { p50: Math.round(median(server.p50)), ratio: Number(median(server.p50.map((p, i) => p / base.p50[i])).toFixed(3)) }
    // Steps in the order they happen.
    const order = Object.keys(server.steps[0]).sort((a, b) => server.steps[0][a] - server.steps[0][b])
    for (const step of order) row[step] = median(server.steps.map((steps) => steps[step]))
    return [server.variant, row]
  })))
} finally {
  for (const server of servers) {
    server.child.kill('SIGTERM')
    await once(server.child, 'exit')
  }
  await embedded?.stop()
}
