import { DatabaseUnavailableError, withRetryAfter } from './errors.js'

export interface CircuitBreakerSettings {
  /** Consecutive connection failures that open the circuit. */
  failureThreshold: number
  /** How long an open circuit refuses acquires before it lets one probe through. */
  coolDownMillis: number
}

/**
 * Fails acquires fast while the database is down: after `failureThreshold` connection failures
 * in a row it refuses every acquire for `coolDownMillis`, then lets one through as a probe; the
 * probe's success closes the circuit, its failure opens it again. Waiting requests would
 * otherwise pile up, each holding a socket and a promise until its own connect fails.
 */
export class CircuitBreaker {
  readonly #settings: CircuitBreakerSettings
  #failures = 0
  #openUntil = 0
  #probing = false

  constructor (settings: CircuitBreakerSettings) {
    this.#settings = settings
  }

  get open (): boolean {
    return this.#failures >= this.#settings.failureThreshold
  }

  /** Throws the fail-fast error while open; after the cool-down, admits one caller as the probe. */
  admit (): void {
    if (!this.open) return
    const now = Date.now()
    if (now >= this.#openUntil && !this.#probing) {
      this.#probing = true
      return
    }
    const seconds = Math.max(1, Math.ceil((this.#openUntil - now) / 1000))
    throw withRetryAfter(new DatabaseUnavailableError(this.#failures, seconds), seconds)
  }

  succeeded (): void {
    this.#failures = 0
    this.#probing = false
  }

  /** The attempt told nothing (the pool was full): a probe's slot goes to the next caller. */
  inconclusive (): void {
    this.#probing = false
  }

  failed (): void {
    this.#failures++
    this.#probing = false
    if (this.open) this.#openUntil = Date.now() + this.#settings.coolDownMillis
  }
}
