// How long one request takes when the server is not busy: one client, one request at a time on
// one kept-alive connection, each timed in this process with process.hrtime.bigint() from the
// write of the request to the end of its response (autocannon reports whole milliseconds).
import { Agent, request } from 'node:http'

export interface Latencies {
  /** Microseconds, medians and 99th percentiles of one run. */
  p50: number
  p99: number
  requests: number
  errors: number
}

function percentile (sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

function once (agent: Agent, port: number, headers: Record<string, string>): Promise<{ micros: number, ok: boolean }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint()
    const req = request({ host: '127.0.0.1', port, path: '/', agent, headers }, (response) => {
      response.resume()
      response.on('end', () => {
        resolve({ micros: Number(process.hrtime.bigint() - start) / 1000, ok: response.statusCode === 200 })
      })
    })
    req.on('error', reject)
    req.end()
  })
}

/** `count` requests in a row to 127.0.0.1:`port`/, each one after the previous answered. */
export async function sequential (port: number, count: number, headers: Record<string, string> = {}): Promise<Latencies> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  const micros: number[] = []
  let errors = 0
  try {
    for (let i = 0; i < count; i++) {
      const { micros: taken, ok } = await once(agent, port, headers)
      micros.push(taken)
      if (!ok) errors++
    }
  } finally {
    agent.destroy()
  }
  micros.sort((a, b) => a - b)
  return { p50: percentile(micros, 0.5), p99: percentile(micros, 0.99), requests: count, errors }
}

/**
 * `count` requests to each of two servers, one request at a time, alternating A B B A A B … (each
 * takes the first turn equally often), each on its own kept-alive connection: a disturbance of
 * the machine (another process, the host) falls on both alike, which two back-to-back runs of
 * a second each do not ensure.
 */
export async function alternating (portA: number, portB: number, count: number, headers: Record<string, string> = {}): Promise<[Latencies, Latencies]> {
  const agents = [new Agent({ keepAlive: true, maxSockets: 1 }), new Agent({ keepAlive: true, maxSockets: 1 })]
  const ports = [portA, portB]
  const micros: number[][] = [[], []]
  const errors = [0, 0]
  try {
    for (let i = 0; i < count; i++) {
      for (const which of i % 2 === 0 ? [0, 1] : [1, 0]) {
        const { micros: taken, ok } = await once(agents[which], ports[which], headers)
        micros[which].push(taken)
        if (!ok) errors[which]++
      }
    }
  } finally {
    for (const agent of agents) agent.destroy()
  }
  return [0, 1].map((which) => {
    const sorted = micros[which].sort((a, b) => a - b)
    return { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), requests: count, errors: errors[which] }
  }) as [Latencies, Latencies]
}
