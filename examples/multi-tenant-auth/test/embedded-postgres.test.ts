// The embedded PostgreSQL that `npm start` and `npm test` run: its superuser's password is random
// per data folder and kept where only its owner reads it, and the two ways a start used to die
// with a raw stack (a folder PostgreSQL's user cannot reach, a folder another server holds) are
// said in a sentence, with status 1.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdtemp, readFile, rm, stat, unlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { Test } from 'tap'
import pg from 'pg'
import { PASSWORD_FILE, startEmbeddedPostgres } from '../../embedded-postgres.mjs'
import { blockedFolder } from '../../embedded-postgres-preflight.mjs'
import { currentUser } from './service.js'

/** A folder of this test's own, readable on the way down by PostgreSQL's user, removed after. */
async function folder (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-embedded-test-'))
  await chmod(dir, 0o755)
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function start (t: Test, databaseDir?: string): Promise<{ url: string, port: number, stop: () => Promise<void> }> {
  const server = await startEmbeddedPostgres(databaseDir === undefined ? {} : { databaseDir, persistent: true })
  let stopped = false
  t.teardown(() => stopped ? undefined : server.stop())
  return { ...server, stop: async () => { stopped = true; await server.stop() } }
}

// Seven PostgreSQL starts (initdb for five) on a loaded machine: more than tap's default 30 s.
t.setTimeout(180_000)

const passwordOf = (url: string): string => decodeURIComponent(new URL(url).password)
const withPassword = (url: string, password: string): string => {
  const changed = new URL(url)
  changed.password = password
  return changed.toString()
}

/** `npm start`'s server as its own process on the embedded database in `dataDir`: its exit code and what it wrote. */
async function runServer (dataDir: string): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const env: Record<string, string | undefined> = { ...process.env, DATA_DIR: dataDir, PORT: '0' }
  delete env.DATABASE_URL
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/multi-tenant-auth/server.ts'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => { stdout += chunk })
  child.stderr.on('data', (chunk) => { stderr += chunk })
  // A server that started after all would listen: stop it (by its own pid) rather than wait.
  child.stdout.on('data', () => { if (stdout.includes('listening on')) child.kill('SIGTERM') })
  const [code] = await once(child, 'exit')
  return { code, stdout, stderr }
}

t.test('each data folder gets a random superuser password, kept in it for its owner alone', async (t) => {
  const [dirA, dirB] = [join(await folder(t), 'data'), join(await folder(t), 'data')]
  const a = await start(t, dirA)
  const b = await start(t, dirB)
  t.not(passwordOf(a.url), passwordOf(b.url), 'two new folders, two passwords')
  t.ok(passwordOf(a.url).length >= 40, 'a long one')
  for (const [dir, server] of [[dirA, a], [dirB, b]] as const) {
    const file = await stat(join(dir, PASSWORD_FILE))
    t.equal(file.mode & 0o777, 0o600, 'the password file is mode 600')
    t.equal(file.uid, process.getuid?.(), 'owned by whoever started the server')
    t.equal((await readFile(join(dir, PASSWORD_FILE), 'utf8')).trim(), passwordOf(server.url), 'and holds the password')
    t.equal(await currentUser(server.url), 'postgres', 'which logs in')
    await t.rejects(currentUser(withPassword(server.url, 'postgres')), { code: '28P01' }, 'the old fixed password is refused')
  }

  // A restart of a kept folder reads the same password.
  await a.stop()
  const again = await start(t, dirA)
  t.equal(passwordOf(again.url), passwordOf(a.url), 'a restart reuses the folder\'s password')
  t.equal(await currentUser(again.url), 'postgres')

  // A throwaway server (what `npm test` runs) gets one of its own too.
  const throwaway = await start(t)
  t.notOk([passwordOf(a.url), passwordOf(b.url), 'postgres'].includes(passwordOf(throwaway.url)), 'a throwaway server: another password')
  t.equal(await currentUser(throwaway.url), 'postgres')
})

t.test('a folder made when the password was fixed gets a random one at its next start', async (t) => {
  const dir = join(await folder(t), 'data')
  const first = await start(t, dir)
  // What an earlier version left: the superuser's password 'postgres', and no password file.
  const admin = new pg.Client({ connectionString: first.url })
  await admin.connect()
  await admin.query("ALTER ROLE postgres PASSWORD 'postgres'")
  await admin.end()
  await unlink(join(dir, PASSWORD_FILE))
  await first.stop()

  const second = await start(t, dir)
  t.not(passwordOf(second.url), 'postgres', 'a new password')
  t.equal(await currentUser(second.url), 'postgres', 'which works')
  await t.rejects(currentUser(withPassword(second.url, 'postgres')), { code: '28P01' }, 'and the fixed one no longer does')
  t.equal((await stat(join(dir, PASSWORD_FILE))).mode & 0o777, 0o600, 'kept in a new mode-600 file')
})

t.test('a second npm start on a data folder in use says so, and leaves the first running', async (t) => {
  const dir = join(await folder(t), 'data')
  const first = await start(t, dir)
  const second = await runServer(dir)
  t.equal(second.code, 1, 'the second start exits with status 1')
  t.match(second.stderr, /another PostgreSQL \(process \d+\) already runs on the data folder .*data: is the service started twice\?/, second.stderr)
  t.notMatch(second.stderr, /triggerUncaughtException|^\s+at /m, 'a sentence, no stack')
  t.equal(second.stdout, '', 'and it never listened')
  t.equal(await currentUser(first.url), 'postgres', 'the first server still answers')
})

t.test('a data folder that PostgreSQL\'s user cannot reach: what to do, before anything starts', async (t) => {
  // Like a checkout in root's home folder (mode 700): the parent of the data folder lets nobody through.
  const closed = await mkdtemp(join(tmpdir(), 'fastify-db-session-closed-'))
  t.teardown(() => rm(closed, { recursive: true, force: true }))
  await chmod(closed, 0o700)
  const dataDir = join(closed, 'data')
  if (process.getuid?.() === 0) {
    // As root PostgreSQL runs as the 'postgres' user: this is the folder it would die on.
    const result = await runServer(dataDir)
    t.equal(result.code, 1, 'exits with status 1')
    t.match(result.stderr, `PostgreSQL may not run as root, so embedded-postgres runs it as the 'postgres' user, which cannot reach ${dataDir}`)
    t.match(result.stderr, `${closed} is mode 700`)
    t.match(result.stderr, `chmod o+x ${closed}`, 'and says what to do')
    t.notMatch(result.stderr, /EACCES|^\s+at /m, 'no raw spawn error, no stack')
    await t.rejects(stat(dataDir), { code: 'ENOENT' }, 'nothing was made')
    await chmod(closed, 0o701)
    t.equal(await blockedFolder(dataDir, { uid: 12345, gid: 12345 }), null, 'after chmod o+x the way is open')
  } else {
    // Not root: PostgreSQL runs as us, so the check applies to our own ids.
    await chmod(closed, 0o600)
    t.same(await blockedFolder(dataDir, { uid: process.getuid!(), gid: process.getgid!() }), { folder: closed, mode: 0o600 })
    await chmod(closed, 0o700)
    t.equal(await blockedFolder(dataDir, { uid: process.getuid!(), gid: process.getgid!() }), null)
  }
})
