import { InvalidOptionError } from './errors.js'

/**
 * Refuses a key of `given` that is not in `known`, naming the closest known one: a misspelt key
 * would otherwise be dropped in silence, as the plugin's own options never are.
 */
export function refuseUnknownKeys (given: object, known: readonly string[], subject: string): void {
  for (const key of Object.keys(given)) {
    if (!known.includes(key)) {
      const closest = closestName(key, known)
      const hint = closest === null ? '' : ` (did you mean '${closest}'?)`
      throw new InvalidOptionError(`${subject} has an unknown key '${key}'${hint}; known keys are ${known.join(', ')}`)
    }
  }
}

/**
 * The known name closest to a misspelt one (`isolationLvl` → `isolationLevel`), or null when none
 * is close: at most a third of its letters (and at least two) differ, ignoring case.
 */
export function closestName (given: string, known: readonly string[]): string | null {
  let best: string | null = null
  let bestDistance = Math.max(2, Math.floor(given.length / 3)) + 1
  for (const name of known) {
    const distance = editDistance(given.toLowerCase(), name.toLowerCase())
    if (distance < bestDistance) {
      best = name
      bestDistance = distance
    }
  }
  return best
}

/** Levenshtein distance: the fewest insertions, deletions and substitutions that turn a into b. */
function editDistance (a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[b.length]
}
