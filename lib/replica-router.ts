import type { FastifyRequest } from 'fastify'
import type { ConnectionSource } from './connection-source.js'
import { Histogram } from './histogram.js'
import type { Lease } from './lease.js'
import { parseLsn } from './lsn.js'
import type { Replica, ReplicaHealth } from './replica-health.js'
import type { BeginSettings } from './transaction-settings.js'
import type { Placement } from './unit-of-work.js'

/** Why the primary served a read a replica could have: none was up, all lagged, none replayed the read's position in time, or the position is ahead of the primary's. */
export type FallbackReason = 'down' | 'lag' | 'waitTimedOut' | 'ahead'

/** The router's counters, reported in stats() and metrics(). */
export class RoutingCounters {
  /** Reads served by each replica, in the order of the replicas option. */
  readonly replicaReads: number[]
  readonly fallbacks: Record<FallbackReason, number> = { down: 0, lag: 0, waitTimedOut: 0, ahead: 0 }
  /** Seconds reads waited for a replica to replay their position (whether one did or not). */
  readonly waits = new Histogram()

  constructor (replicas: number) {
    this.replicaReads = new Array<number>(replicas).fill(0)
  }
}

/**
 * Picks where a unit of work that a replica may serve runs: a serving replica, in turn, that has
 * replayed the position the request must read (waiting up to `waitMillis` for one to), else the
 * primary. A replica that cannot be reached sends the read to the primary, never an error to the client.
 */
export class ReplicaRouter {
  readonly primary: ConnectionSource
  readonly health: ReplicaHealth
  readonly counters: RoutingCounters
  readonly #waitMillis: number
  /** The position a request must read at least (the lsnFrom option). */
  readonly positionOf: (request: FastifyRequest) => string | undefined
  /** Round robin over the serving replicas. */
  #turn = 0

  constructor (primary: ConnectionSource, health: ReplicaHealth, settings: { waitMillis: number, positionOf: (request: FastifyRequest) => string | undefined }) {
    this.primary = primary
    this.health = health
    this.#waitMillis = settings.waitMillis
    this.positionOf = settings.positionOf
    this.counters = new RoutingCounters(health.replicas.length)
  }

  /**
   * A connection for a read that must see at least `position` (the text of a commit position),
   * or any when undefined. A malformed position rejects with FST_DB_SESSION_INVALID_POSITION (400).
   */
  async acquire (position: string | undefined): Promise<Lease> {
    const lsn = position === undefined ? null : parseLsn(position)
    const serving = this.health.serving()
    if (serving.length === 0) return this.#fallback(this.health.whyNone())
    if (lsn === null) return this.#fromReplica(this.#next(serving))
    const caughtUp = serving.filter((replica) => (replica.replayed as bigint) >= lsn)
    if (caughtUp.length > 0) return this.#fromReplica(this.#next(caughtUp))
    // No replica can ever replay what the primary has not written: not wait for it.
    if (lsn > this.health.primaryPosition) return this.#fallback('ahead')
    const started = performance.now()
    const replica = await this.health.waitFor(lsn, this.#waitMillis)
    this.counters.waits.observe((performance.now() - started) / 1000)
    return replica === null ? this.#fallback('waitTimedOut') : this.#fromReplica(replica)
  }

  #next (replicas: Replica[]): Replica {
    this.#turn = (this.#turn + 1) % replicas.length
    return replicas[this.#turn]
  }

  async #fromReplica (replica: Replica): Promise<Lease> {
    let lease: Lease
    try {
      lease = await replica.source.acquire()
    } catch (error) {
      // Closing (FST_DB_SESSION_CLOSING) too: the primary's source then refuses the same way.
      this.health.failed(replica, error as Error)
      return this.#fallback('down')
    }
    this.counters.replicaReads[this.health.replicas.indexOf(replica)]++
    return lease
  }

  #fallback (reason: FallbackReason): Promise<Lease> {
    this.counters.fallbacks[reason]++
    return this.primary.acquire()
  }
}

/**
 * Where a unit of work with `settings` gets its connection: from the router when a replica may
 * serve it (read only, `replica` not false, replicas configured), reading at least `lsn` or the
 * position the request carries (the lsnFrom option; the db-session-lsn header by default);
 * null (the primary, directly) otherwise.
 */
export function placementFor (router: ReplicaRouter | null, settings: BeginSettings, request: FastifyRequest | null, lsn?: string): Placement | null {
  if (router === null || settings.replica !== true) return null
  return () => router.acquire(lsn ?? (request === null ? undefined : router.positionOf(request)))
}
