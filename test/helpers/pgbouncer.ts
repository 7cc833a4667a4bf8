// A real PgBouncer in transaction mode in front of the test PostgreSQL, from the committed
// sample examples/pgbouncer/pgbouncer.ini, on a free loopback port, stopped by its own pid.
import { spawn, spawnSync } from 'node:child_process'
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

export interface PgBouncer {
  /** `url` with PgBouncer's host and port instead of PostgreSQL's. */
  urlFor: (url: string) => string
  /** Rows of `SHOW POOLS` for `database`, from PgBouncer's admin console. */
  pools: (database: string) => Promise<Array<Record<string, string>>>
}

export async function startPgBouncer (t: Test, serverUrl: string, poolSize: number): Promise<PgBouncer> {
  const binary = pgbouncerBinary()
  if (binary === null) throw new Error('pgbouncer is not installed (apt-get install -y pgbouncer)')
  const server = new URL(serverUrl)
  const port = await freePort()
  // PgBouncer refuses to run as root: it runs as the postgres system user, in a folder it owns.
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-pgbouncer-'))
  const { uid, gid } = userIds('postgres')
  await chown(dir, uid, gid)
  await chmod(dir, 0o700)
  const template = await readFile(new URL('../../examples/pgbouncer/pgbouncer.ini', import.meta.url), 'utf8')
  const values: Record<string, string> = {
    PG_HOST: server.hostname,
    PG_PORT: server.port,
    PG_USER: decodeURIComponent(server.username),
    PG_PASSWORD: decodeURIComponent(server.password),
    LISTEN_PORT: String(port),
    POOL_SIZE: String(poolSize),
    DIR: dir
  }
  const ini = template.replace(/\$\{(\w+)\}/g, (_match, name: string) => values[name])
  const iniPath = join(dir, 'pgbouncer.ini')
  await writeFile(iniPath, ini, { mode: 0o600 })
  await chown(iniPath, uid, gid)
  const child = spawn('runuser', ['-u', 'postgres', '--', binary, iniPath], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk) => { stderr += chunk })
  const pidFile = join(dir, 'pgbouncer.pid')
  const admin = (): pg.Client => new pg.Client({ host: '127.0.0.1', port, user: values.PG_USER, database: 'pgbouncer' })
  for (let attempt = 0; ; attempt++) {
    const probe = admin()
    try {
      await probe.connect()
      await probe.end()
      break
    } catch (error) {
      await probe.end().catch(() => {})
      if (attempt > 100 || child.exitCode !== null) throw new Error(`pgbouncer did not start: ${stderr || (error as Error).message}`)
      await sleep(50)
    }
  }
  const pid = Number((await readFile(pidFile, 'utf8')).trim())
  t.teardown(async () => {
    // Its own pid, from its own pid file: SIGINT is PgBouncer's fast, clean shutdown.
    process.kill(pid, 'SIGINT')
    for (let i = 0; i < 100 && child.exitCode === null; i++) await sleep(20)
    await rm(dir, { recursive: true, force: true })
  })
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
        return rows.filter((row) => row.database === database)
      } finally {
        await client.end()
      }
    }
  }
}

function userIds (name: string): { uid: number, gid: number } {
  const out = spawnSync('id', ['-u', name], { encoding: 'utf8' })
  const group = spawnSync('id', ['-g', name], { encoding: 'utf8' })
  if (out.status !== 0) throw new Error(`no '${name}' system user: install the pgbouncer package, which creates it`)
  return { uid: Number(out.stdout), gid: Number(group.stdout) }
}
