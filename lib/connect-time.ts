/**
 * How long the pool took to open each new connection (db.client.connection.create_time): the
 * owned pool's Client class notes when a client is made (pg-pool makes one only to connect it at
 * once), and pg-pool's 'connect' event, after the connection is ready, reads it. A user's own
 * pool's clients carry no note, and are not timed.
 */
const kMadeAt = Symbol('fastify-db-session.madeAt')

type Noted = object & { [kMadeAt]?: number }

/** Called by the owned pool's Client class as each client is made. */
export function noteConnecting (client: object): void {
  (client as Noted)[kMadeAt] = performance.now()
}

/** Seconds from the client's making to now (its connect has just completed); null for a client not noted. */
export function connectSeconds (client: object): number | null {
  const madeAt = (client as Noted)[kMadeAt]
  return madeAt === undefined ? null : (performance.now() - madeAt) / 1000
}
