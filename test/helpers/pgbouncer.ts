// A real PgBouncer in transaction mode in front of the test PostgreSQL, from the committed
// sample examples/pgbouncer/pgbouncer.ini, on a free loopback port, stopped by its own pid.
import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import type { Test } from 'tap'
import { freePort } from '../../examples/embedded-postgres.mjs'

/** The pgbouncer binary, or null: tests skip without it, except under CI, where it must be there. */
export function pgbouncerBinary (): string | null {
  const found = spawnSync('sh', ['-c', 'command -v pgbouncer || ls /usr/sbin/pgbouncer'], { encoding: 'utf8' })
  const path = found.stdout.trim().split('\n')[0]
  return found.status === 0 && path !== '' ? path : null
}

/** A row of `SHOW POOLS`: one pool, for one database and user. */
export interface PoolRow {
  database: string
  user: string
  /** Client connections linked to a server connection or idle (not waiting). */
  cl_active: number
  /** Client connections waiting for a server connection. */
  cl_waiting: number
  /** Server connections linked to a client. */
  sv_active: number
  /** Server connections unused and ready. */
  sv_idle: number
  /** Server connections idle for longer than server_check_delay, to be checked before use. */
  sv_used: number
  /** Seconds the oldest waiting client has waited. */
  maxwait: number
}

export interface PgBouncer {
  /** `url` with PgBouncer's host and port instead of PostgreSQL's. */
  urlFor: (url: string) => string
  /** The `SHOW POOLS` rows of `database`, from PgBouncer's admin console. */
  pools: (database: string) => Promise<PoolRow[]>
}

/**
 * Starts PgBouncer with `default_pool_size = poolSize` and the sample's other settings;
 * `settings` replaces the values of settings the sample has (a name it lacks is an error, so
 * that a test never runs on a value it did not mean).
 */
export async function startPgBouncer (t: Test, serverUrl: string, poolSize: number, settings: Record<string, string | number> = {}): Promise<PgBouncer> {
  const binary = pgbouncerBinary()
  if (binary === null) throw new Error('pgbouncer is not installed (apt-get install -y pgbouncer)')
  const template = await readFile(new URL('../../examples/pgbouncer/pgbouncer.ini', import.meta.url), 'utf8')
  const lines = Object.keys(settings).map((name) => {
    const line = new RegExp(`^${name} = .*$`, 'm')
    if (!line.test(template)) throw new Error(`examples/pgbouncer/pgbouncer.ini has no '${name} = ' line to replace`)
    return [line, `${name} = ${settings[name]}`] as const
  })
  const server = new URL(serverUrl)
  const port = await freePort()
  // PgBouncer refuses to run as root, and only as root: then it runs as the postgres system user
  // (which Debian's package creates), in a folder that user owns; otherwise as whoever we are.
  const owner = process.getuid?.() === 0 ? userIds('postgres') : null
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-pgbouncer-'))
  if (owner !== null) await chown(dir, owner.uid, owner.gid)
  await chmod(dir, 0o700)
  const values: Record<string, string> = {
    PG_HOST: server.hostname,
    PG_PORT: server.port,
    PG_USER: decodeURIComponent(server.username),
    PG_PASSWORD: decodeURIComponent(server.password),
    LISTEN_PORT: String(port),
    POOL_SIZE: String(poolSize),
    DIR: dir
  }
  let ini = template.replace(/\$\{(\w+)\}/g, (_match, name: string) => values[name])
  for (const [line, replacement] of lines) ini = ini.replace(line, replacement)
  const iniPath = join(dir, 'pgbouncer.ini')
  await writeFile(iniPath, ini, { mode: 0o600 })
  if (owner !== null) await chown(iniPath, owner.uid, owner.gid)
  // Not daemonized (no -d): the child is PgBouncer itself, and its pid is the one to signal.
  const child = spawn(binary, [iniPath], { stdio: ['ignore', 'ignore', 'pipe'], ...(owner ?? {}) })
  let stderr = ''
  child.stderr.on('data', (chunk) => { if (stderr.length < 10_000) stderr += chunk })
  let spawnError: Error | null = null
  child.on('error', (error) => { spawnError = error })
  const stop = async (): Promise<void> => {
    await stopPgBouncer(child)
    await rm(dir, { recursive: true, force: true })
  }
  const admin = (): pg.Client => new pg.Client({ host: '127.0.0.1', port, user: values.PG_USER, database: 'pgbouncer' })
  for (let attempt = 0; ; attempt++) {
    const probe = admin()
    try {
      await probe.connect()
      await probe.end()
      break
    } catch (error) {
      await probe.end().catch(() => {})
      if (attempt > 100 || child.exitCode !== null || spawnError !== null) {
        const log = await readFile(join(dir, 'pgbouncer.log'), 'utf8').catch(() => '')
        await stop()
        throw new Error(`pgbouncer did not start: ${stderr || log || (spawnError ?? error as Error).message}`)
      }
      await sleep(50)
    }
  }
  t.teardown(stop)
  return {
    urlFor (url) {
      const through = new URL(url)
      through.hostname = '127.0.0.1'
      through.port = String(port)
      return through.toString()
    },
    async pools (database) {
      const client = admin()
      await client.connect()
      try {
        // The admin console speaks only the simple protocol.
        const { rows } = await client.query({ text: 'SHOW POOLS', queryMode: 'simple' } as pg.QueryConfig)
        // Counts come as int4 (numbers) or int8 (strings), depending on the column and version.
        return rows.filter((row) => row.database === database).map((row) => ({
          database: row.database,
          user: row.user,
          cl_active: Number(row.cl_active),
          cl_waiting: Number(row.cl_waiting),
          sv_active: Number(row.sv_active),
          sv_idle: Number(row.sv_idle),
          sv_used: Number(row.sv_used),
          maxwait: Number(row.maxwait)
        }))
      } finally {
        await client.end()
      }
    }
  }
}

/**
 * Stops the PgBouncer we spawned, by its own pid, and waits until it has exited. In 1.18 SIGINT is
 * the safe shutdown (PAUSE, then SHUTDOWN: it waits for server connections to be released, that
 * is, for transactions in progress to end); SIGTERM is the immediate one. A transaction a test left
 * open would make the safe shutdown wait, so it gets 3 s before the immediate one.
 */
async function stopPgBouncer (child: ChildProcess): Promise<void> {
  for (const [signal, millis] of [['SIGINT', 3000], ['SIGTERM', 3000], ['SIGKILL', 3000]] as const) {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return
    const exited = once(child, 'exit').then(() => true, () => true)
    child.kill(signal)
    const gone = await Promise.race([exited, sleep(millis, false)])
    if (gone) return
  }
  throw new Error(`pgbouncer (pid ${child.pid}) did not exit after SIGINT, SIGTERM and SIGKILL`)
}

function userIds (name: string): { uid: number, gid: number } {
  const out = spawnSync('id', ['-u', name], { encoding: 'utf8' })
  const group = spawnSync('id', ['-g', name], { encoding: 'utf8' })
  if (out.status !== 0) throw new Error(`no '${name}' system user: install the pgbouncer package, which creates it`)
  return { uid: Number(out.stdout), gid: Number(group.stdout) }
}
