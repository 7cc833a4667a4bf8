/** A histogram in seconds with fixed upper bounds, as Prometheus defines one. */
export interface HistogramSnapshot {
  /** Observations made. */
  count: number
  /** Their sum, in seconds. */
  sum: number
  /** Cumulative counts: how many observations were at most `le` seconds (`+Inf` is `count`). */
  buckets: Array<{ le: number, count: number }>
}

// From one millisecond to a minute: acquire waits and transaction lengths both fall in it.
export const DEFAULT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

export class Histogram {
  readonly #bounds: readonly number[]
  /** Per-bucket (not cumulative) counts; one more than bounds, for above the last. */
  readonly #counts: number[]
  #sum = 0

  constructor (bounds: readonly number[] = DEFAULT_BUCKETS) {
    this.#bounds = bounds
    this.#counts = new Array<number>(bounds.length + 1).fill(0)
  }

  observe (seconds: number): void {
    this.#sum += seconds
    let i = 0
    while (i < this.#bounds.length && seconds > this.#bounds[i]) i++
    this.#counts[i]++
  }

  snapshot (): HistogramSnapshot {
    let cumulative = 0
    const buckets = this.#bounds.map((le, i) => {
      cumulative += this.#counts[i]
      return { le, count: cumulative }
    })
    return { count: cumulative + this.#counts[this.#bounds.length], sum: this.#sum, buckets }
  }
}
