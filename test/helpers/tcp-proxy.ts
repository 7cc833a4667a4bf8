// A loopback TCP proxy in front of the test PostgreSQL whose behaviour a test switches:
// 'up' forwards, 'down' drops each new connection at once (a database that is gone), 'silent'
// accepts and never answers, and stops forwarding on open connections too (a database that hangs).
import { connect, createServer } from 'node:net'
import type { Socket } from 'node:net'

export type ProxyMode = 'up' | 'down' | 'silent'

export interface TcpProxy {
  port: number
  mode: ProxyMode
  /** Connections accepted so far, whatever the mode. */
  readonly accepted: number
  /**
   * When a client sends a chunk containing this text: forward it, then cut the client off at once
   * (the server still gets it and answers into the void), and the server side a moment later.
   */
  cutAfterClientSends: string | null
  /** In 'up' mode, how long a new connection waits before it reaches the server (a slow connect). */
  connectDelayMillis: number
  /** A connection string to the database `url` names, through the proxy. */
  urlFor: (url: string) => string
}

interface Teardown { teardown: (fn: () => unknown) => void }

export async function startProxy (t: Teardown, targetUrl: string, mode: ProxyMode = 'up'): Promise<TcpProxy> {
  const target = new URL(targetUrl)
  const sockets = new Set<Socket>()
  let accepted = 0
  const server = createServer((socket) => {
    accepted++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    if (proxy.mode === 'down') {
      socket.destroy()
      return
    }
    if (proxy.mode === 'silent') return
    if (proxy.connectDelayMillis > 0) {
      // What the client sends meanwhile waits in the paused socket.
      socket.pause()
      setTimeout(() => { if (!socket.destroyed) forward(socket); socket.resume() }, proxy.connectDelayMillis)
      return
    }
    forward(socket)
  })
  function forward (socket: Socket): void {
    const upstream = connect(Number(target.port), target.hostname)
    sockets.add(upstream)
    upstream.on('close', () => { sockets.delete(upstream); socket.destroy() })
    upstream.on('error', () => {})
    // Left open a moment after a cut, so that the server can finish what it was sent.
    socket.on('close', () => { if (proxy.cutAfterClientSends === null) upstream.destroy() })
    // Forwarded chunk by chunk, so that going silent also stalls connections already open.
    socket.on('data', (chunk: Buffer) => {
      if (proxy.mode !== 'up') return
      upstream.write(chunk)
      if (proxy.cutAfterClientSends !== null && chunk.includes(proxy.cutAfterClientSends)) {
        socket.destroy()
        setTimeout(() => upstream.destroy(), 300)
      }
    })
    upstream.on('data', (chunk) => { if (proxy.mode === 'up' && !socket.destroyed) socket.write(chunk) })
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  const proxy: TcpProxy = {
    port,
    mode,
    cutAfterClientSends: null,
    connectDelayMillis: 0,
    get accepted () { return accepted },
    urlFor (url: string) {
      const through = new URL(url)
      through.hostname = '127.0.0.1'
      through.port = String(port)
      return through.toString()
    }
  }
  return proxy
}
