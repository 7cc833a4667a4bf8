// CPU profile of bench servers under load: `node --import tsx bench/profile-server.ts [seconds] [variants]`
// (npm run build first: the servers run dist/). Each variant runs as its own process under
// `node --cpu-prof`, driven by autocannon (32 connections) for `seconds`; the profile is written to
// bench/profiles/<variant>.cpuprofile and summarised: self time per request by where the code
// lives (the plugin, Kysely, pg, Fastify, Node's own, native work, GC) and the top frames.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, readFile, readdir, rm } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { freePort, startEmbeddedPostgres } from '../examples/embedded-postgres.mjs'
import { seedItems } from './seed.js'
import { applyLayout, pinnedLayout, serverCommand } from './cpu-pinning.js'

const [secondsText = '8', variantsText = 'plugin-select,fastify-postgres'] = process.argv.slice(2)
const root = fileURLToPath(new URL('..', import.meta.url))
const out = fileURLToPath(new URL('./profiles/', import.meta.url))

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

/** Where a frame's code lives. */
function area (url: string, name: string): string {
  if (url.includes('/dist/') && !url.includes('node_modules')) return 'plugin (dist/)'
  if (url.includes('node_modules/kysely')) return 'kysely'
  if (/node_modules\/(pg|pg-pool|pg-protocol|pg-types|pg-connection-string|postgres-)/.test(url)) return 'pg'
  if (url.includes('node_modules/@fastify/postgres')) return '@fastify/postgres'
  if (/node_modules\/(fastify|@fastify|find-my-way|light-my-request|avvio|fast-json-stringify|abstract-logging|pino|secure-json-parse|toad-cache|rfdc|fast-querystring)/.test(url)) return 'fastify'
  if (url.startsWith('node:')) return 'node'
  if (url === '') return name === '(garbage collector)' ? 'gc' : name === '(idle)' || name === '(program)' ? name : 'native'
  if (url.includes('bench/')) return 'bench route'
  return 'other'
}

/** Self time per frame over the load only: samples in the first `skipMicros` (start-up, compiling) are left out. */
function summarise (profile: Profile, requests: number, skipMicros: number) {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const self = new Map<number, number>()
  let elapsed = 0
  for (let i = 0; i < profile.samples.length; i++) {
    elapsed += profile.timeDeltas[i]
    if (elapsed >= skipMicros) self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + profile.timeDeltas[i])
  }
  const areas = new Map<string, number>()
  const frames = new Map<string, number>()
  for (const [id, micros] of self) {
    const { callFrame } = byId.get(id)!
    const where = area(callFrame.url, callFrame.functionName)
    if (where === '(idle)') continue
    areas.set(where, (areas.get(where) ?? 0) + micros)
    const frame = `${callFrame.functionName || '(anonymous)'} ${callFrame.url.replace(/^.*node_modules\//, '').replace(root, '')}:${callFrame.lineNumber + 1}`
    frames.set(frame, (frames.get(frame) ?? 0) + micros)
  }
  const perRequest = (micros: number) => Number((micros / requests).toFixed(2))
  const total = [...areas.values()].reduce((sum, micros) => sum + micros, 0)
  return {
    requests,
    busyMicrosPerRequest: perRequest(total),
    areas: Object.fromEntries([...areas].sort((a, b) => b[1] - a[1]).map(([name, micros]) => [name, perRequest(micros)])),
    top: [...frames].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([frame, micros]) => ({ frame, microsPerRequest: perRequest(micros) }))
  }
}

const embedded = process.env.DATABASE_URL ? null : await startEmbeddedPostgres()
const databaseUrl = process.env.DATABASE_URL ?? embedded!.url
try {
  await seedItems(databaseUrl)
  // As npm run bench runs them: the server on a core of its own.
  const layout = pinnedLayout()
  await applyLayout(layout, databaseUrl)
  await mkdir(out, { recursive: true })
  for (const variant of variantsText.split(',')) {
    const dir = `${out}${variant}`
    await rm(dir, { recursive: true, force: true })
    const port = await freePort()
    const spawned = performance.now()
    const [command, args] = serverCommand(layout, ['--cpu-prof', `--cpu-prof-dir=${dir}`, '--import', 'tsx', 'bench/server.ts', variant, String(port), databaseUrl])
    const server = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
    for await (const chunk of server.stdout) if (String(chunk).includes('ready')) break
    const skipMicros = (performance.now() - spawned) * 1000
    const load = spawn(process.execPath, [fileURLToPath(import.meta.resolve('autocannon/autocannon.js')), '--json', '-c', '32', '-d', secondsText, `http://127.0.0.1:${port}/`], { stdio: ['ignore', 'pipe', 'ignore'] })
    let json = ''
    load.stdout.on('data', (chunk) => { json += chunk })
    await once(load, 'exit')
    const requests = JSON.parse(json).requests.total
    server.kill('SIGTERM')
    await once(server, 'exit')
    const [file] = await readdir(dir)
    const profile = JSON.parse(await readFile(`${dir}/${file}`, 'utf8')) as Profile
    console.log(JSON.stringify({ variant, ...summarise(profile, requests, skipMicros) }, null, 2))
  }
} finally {
  await embedded?.stop()
}
