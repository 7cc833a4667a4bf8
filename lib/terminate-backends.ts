import pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { ignore, logWarning } from './callbacks.js'

/**
 * Terminates backends from a connection of its own. Closing a client's socket does not stop a
 * statement running in PostgreSQL; terminating its backend does, and rolls back what it held.
 */
export async function terminateBackends (options: pg.PoolConfig, pids: number[], timeoutMillis: number, log: FastifyBaseLogger): Promise<void> {
  // pg-pool keeps the password out of the options' enumerable properties: a spread loses it.
  const control = new pg.Client({ ...options, password: options.password, connectionTimeoutMillis: timeoutMillis })
  control.on('error', ignore)
  await control.connect()
    .then(() => control.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [pids]))
    .catch(logWarning(log, 'fastify-db-session: could not terminate the backends of stuck connections'))
  await control.end().catch(ignore)
}
