// Small things many tests need: a promise resolved from outside, the rows of an `items` table,
// what would have crashed the process, and an example server started as its own process.
import { spawn } from 'node:child_process'
import type { ChildProcessByStdio } from 'node:child_process'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import type { Readable } from 'node:stream'
import type { Test } from 'tap'
import { freePort } from '../../examples/embedded-postgres.mjs'
import type { TestDatabase } from './database.js'

export interface Deferred<T> { promise: Promise<T>, resolve: (value: T) => void }

/** Resolves every `arrive()` once `parties` have arrived: makes a conflict between requests certain. */
export function barrier (parties: number): { arrive: () => Promise<void> } {
  let arrived = 0
  const all = deferred()
  return {
    arrive () {
      if (++arrived === parties) all.resolve()
      return all.promise
    }
  }
}

export function deferred<T = void> (): Deferred<T> {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((_resolve) => { resolve = _resolve })
  return { promise, resolve }
}

/** The `name` column of an `items` table, in id order. */
export async function itemNames (db: TestDatabase): Promise<string[]> {
  const result = await db.query('SELECT name FROM items ORDER BY id')
  return result.rows.map((row: { name: string }) => row.name)
}

/** Counts what would have crashed the process: an 'error' event nobody listened to ends up here. */
export function watchUncaught (t: Test): Error[] {
  const seen: Error[] = []
  const onError = (error: Error): void => { seen.push(error) }
  process.on('uncaughtException', onError)
  process.on('unhandledRejection', onError)
  t.teardown(() => {
    process.removeListener('uncaughtException', onError)
    process.removeListener('unhandledRejection', onError)
  })
  return seen
}

/**
 * Starts `script` with tsx on a free port, waits for its "listening on" line, and stops it (by
 * its own pid) when the test ends.
 */
export async function startScript (t: Test, script: string, env: Record<string, string>): Promise<{ server: ChildProcessByStdio<null, Readable, null>, port: number, output: string }> {
  const port = await freePort()
  const server = spawn(process.execPath, ['--import', 'tsx', script], {
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.teardown(async () => {
    if (server.exitCode === null) {
      server.kill('SIGTERM')
      await once(server, 'exit')
    }
  })
  let output = ''
  for await (const chunk of server.stdout) {
    output += chunk
    if (output.includes('listening on')) break
  }
  return { server, port, output }
}

/** A log line as pino writes it, with the fields the plugin's reports add. */
export interface LogLine {
  level: number
  msg: string
  reqId?: string
  route?: string
  heldMillis?: number
  acquiredAt?: string
  /** A retry's report: which attempt of how many, after what delay, or why it stopped. */
  attempt?: number
  of?: number
  delayMillis?: number
  reason?: string
  err?: { message?: string, code?: string }
}

/** Fastify options whose logger (warnings and up) keeps its lines in `lines`; `stream` alone for custom loggers. */
export function capturedLogs (level = 'warn'): { lines: LogLine[], stream: Writable, options: { logger: { level: string, stream: Writable } } } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk, _encoding, callback) {
      lines.push(JSON.parse(String(chunk)))
      callback()
    }
  })
  return { lines, stream, options: { logger: { level, stream } } }
}

/** What a client sees of POST /items. */
export interface ItemAnswer { status: number, code: string | undefined, message: string | undefined, retryAfter: string | null }

/** POSTs `{ name }` as JSON to `${base}/items` over HTTP, giving up after 30 s. */
export async function postItem (base: string, name: string): Promise<ItemAnswer> {
  const response = await fetch(`${base}/items`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
    signal: AbortSignal.timeout(30_000)
  })
  const body = await response.json() as { code?: string, message?: string }
  return { status: response.status, code: body.code, message: body.message, retryAfter: response.headers.get('retry-after') }
}
