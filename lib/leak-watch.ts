import type { FastifyBaseLogger } from 'fastify'
import type { Telemetry } from './metrics.js'

export interface LeakSettings {
  /** Report a unit of work that holds its connection this long; 0 is off. */
  warnMillis: number
  /** Roll it back and destroy its connection at this age; 0 is off. */
  timeoutMillis: number
}

/** Who holds a connection, for the report. */
export interface LeakOwner {
  readonly log: FastifyBaseLogger
  readonly route: string
}

/**
 * Watches units of work that hold a connection: one past `warnMillis` is logged once, with its
 * route, age and where its first query was issued, and counted in `leaks`; one past
 * `timeoutMillis` is handed to `abandon`.
 */
export class LeakWatch {
  readonly #settings: LeakSettings
  readonly #telemetry: Telemetry

  get timeoutMillis (): number {
    return this.#settings.timeoutMillis
  }

  constructor (settings: LeakSettings, telemetry: Telemetry) {
    this.#settings = settings
    this.#telemetry = telemetry
  }

  /** Starts watching; the returned function stops it (call it when the connection is given back). */
  watch (owner: LeakOwner, acquiredAt: Error, abandon: () => void): () => void {
    const { warnMillis, timeoutMillis } = this.#settings
    const since = performance.now()
    let counted = false
    const count = (): void => {
      if (!counted) this.#telemetry.leaked(1)
      counted = true
    }
    const warning = warnMillis > 0 && (timeoutMillis === 0 || warnMillis < timeoutMillis)
      ? setTimeout(() => {
        count()
        owner.log.warn(
          { route: owner.route, heldMillis: Math.round(performance.now() - since), acquiredAt: acquiredAt.stack },
          `fastify-db-session: a transaction has held its connection for more than ${warnMillis} ms (leakDetectionMillis)`
        )
      }, warnMillis)
      : undefined
    const limit = timeoutMillis > 0
      ? setTimeout(() => {
        count()
        owner.log.error(
          { route: owner.route, heldMillis: Math.round(performance.now() - since), acquiredAt: acquiredAt.stack },
          `fastify-db-session: a transaction held its connection for ${timeoutMillis} ms (leakTimeoutMillis); rolling it back and destroying the connection`
        )
        abandon()
      }, timeoutMillis)
      : undefined
    // Timers must not keep a closing process alive.
    warning?.unref()
    limit?.unref()
    return () => {
      clearTimeout(warning)
      clearTimeout(limit)
    }
  }
}
