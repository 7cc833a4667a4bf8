import { connect } from 'node:net'
import type { NetConnectOpts } from 'node:net'
import type pg from 'pg'
import { ignore } from './callbacks.js'
import { cancelKey } from './pg-internals.js'

/** The protocol's CancelRequest code (1234 << 16 | 5678). */
const CANCEL_REQUEST_CODE = 80877102

/**
 * Asks the server to cancel the statement a client is running, with that client's own cancel key,
 * as libpq's PQcancel does. Closing a client's socket does not stop a statement running in
 * PostgreSQL; a cancel does. PgBouncer passes the key on to the server the client is linked to,
 * where a pid (pg_terminate_backend) would name one of its made-up ones: so send this before the
 * client's socket closes, while the link stands. Resolves once the server has taken the request
 * (it closes the socket), or after `timeoutMillis`; never rejects.
 */
export function cancelStatement (client: pg.PoolClient, timeoutMillis: number): Promise<void> {
  const { host, port, processID, secretKey } = cancelKey(client)
  const request = Buffer.alloc(16)
  request.writeInt32BE(16, 0)
  request.writeInt32BE(CANCEL_REQUEST_CODE, 4)
  request.writeInt32BE(processID, 8)
  request.writeInt32BE(secretKey, 12)
  // A host that is a directory names a Unix socket, as for pg and libpq.
  const address: NetConnectOpts = host.startsWith('/') ? { path: `${host}/.s.PGSQL.${port}` } : { host, port }
  return new Promise((resolve) => {
    // Written, not ended: as libpq does, the server closes the socket once it has taken the
    // request. PgBouncer 1.18 drops a cancel whose sender closed first, or exits on it (its issue #801).
    const socket = connect({ ...address, signal: AbortSignal.timeout(timeoutMillis) }, () => { socket.write(request) })
    socket.on('error', ignore)
    socket.on('close', () => { resolve() })
  })
}
