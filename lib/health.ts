import type pg from 'pg'
import { ignore } from './callbacks.js'
import type { ConnectionSource } from './connection-source.js'
import type { Lease } from './lease.js'
import { PingFailedError, StartupFailedError } from './errors.js'
import { poolClientClass } from './pg-internals.js'

export interface StartupCheckSettings {
  /** Attempts after the first. */
  retries: number
  /** Wait before the first retry; each later wait doubles. */
  delayMillis: number
}

/**
 * Connects once with a client of its own (the pool stays empty: a route that never queries
 * still costs no connection), retrying with exponential backoff; fails with a coded error that
 * names the host and port, never the password.
 */
export async function checkStartup (pool: pg.Pool, settings: StartupCheckSettings, attemptMillis: number): Promise<void> {
  const started = Date.now()
  // A user's pool is checked as it connects.
  const Client = poolClientClass(pool)
  let delay = settings.delayMillis
  for (let attempt = 1; ; attempt++) {
    // pg-pool keeps the password out of the options' enumerable properties: a spread loses it.
    const client = new Client({ ...pool.options, password: pool.options.password, connectionTimeoutMillis: attemptMillis })
    client.on('error', ignore)
    try {
      await client.connect()
      await client.end()
      return
    } catch (error) {
      await client.end().catch(ignore)
      if (attempt > settings.retries) {
        const { host, port } = client
        throw new StartupFailedError(`at ${host}:${port} after ${attempt} attempts over ${Date.now() - started} ms`, (error as Error).message, { cause: error })
      }
    }
    await new Promise((resolve) => setTimeout(resolve, delay))
    delay *= 2
  }
}

/**
 * Takes a connection and runs `SELECT 1` within `timeoutMillis`; resolves to the round trip in
 * milliseconds. A connection that does not answer in time is destroyed, not returned.
 */
export async function ping (source: ConnectionSource, timeoutMillis: number): Promise<number> {
  const started = performance.now()
  // Set by the attempt once it has a connection, for the deadline to destroy.
  const held: { lease: Lease | null } = { lease: null }
  const attempt = (async () => {
    held.lease = await source.acquire()
    await held.lease.client.query('SELECT 1')
  })()
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMillis} ms`)), timeoutMillis)
  })
  try {
    await Promise.race([attempt, deadline])
  } catch (cause) {
    held.lease?.release(true)
    // A connection acquired after the deadline is destroyed when the attempt gets it.
    attempt.then(() => held.lease?.release(true), ignore)
    throw new PingFailedError((cause as Error).message, { cause })
  } finally {
    clearTimeout(timer)
  }
  ;(held.lease as Lease).release()
  return performance.now() - started
}
