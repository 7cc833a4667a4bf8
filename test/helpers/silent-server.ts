// A TCP server on 127.0.0.1 that accepts connections and never answers: a database that hangs
// before its first byte (a connect can then only time out). Closed, with its sockets, when the test ends.
import { createServer } from 'node:net'
import type { Socket } from 'node:net'

export interface SilentServer {
  port: number
  /** A connection string to it (no database answers there). */
  url: string
  /** Connections accepted and still open. */
  readonly open: number
  /** Connections accepted so far. */
  readonly accepted: number
  /** Connections the client side closed (or that were destroyed) so far. */
  readonly closed: number
}

interface Teardown { teardown: (fn: () => unknown) => void }

export async function startSilentServer (t: Teardown): Promise<SilentServer> {
  const sockets = new Set<Socket>()
  let accepted = 0
  let closed = 0
  const server = createServer((socket) => {
    accepted++
    sockets.add(socket)
    // Read what the client sends, so that it is never held up writing.
    socket.resume()
    socket.on('error', () => {})
    socket.on('close', () => { closed++; sockets.delete(socket) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  const { port } = server.address() as { port: number }
  return {
    port,
    url: `postgres://nobody:secret@127.0.0.1:${port}/none`,
    get open () { return sockets.size },
    get accepted () { return accepted },
    get closed () { return closed }
  }
}
