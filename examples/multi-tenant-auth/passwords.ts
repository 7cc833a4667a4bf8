// Password hashing with scrypt (memory-hard, in node:crypto), a random salt per user.
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto'
import type { ScryptOptions } from 'node:crypto'

export interface PasswordCost {
  /** scrypt's N: 2^15 (32 MiB per hash) in production; tests use less. */
  N: number
  r: number
  p: number
}

export const PRODUCTION_COST: PasswordCost = { N: 2 ** 15, r: 8, p: 1 }

function derive (password: string, salt: Buffer, cost: PasswordCost): Promise<Buffer> {
  const options: ScryptOptions = { ...cost, maxmem: 256 * cost.N * cost.r }
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFKC'), salt, 32, options, (error, key) => error ? reject(error) : resolve(key))
  })
}

/** `scrypt$N$r$p$salt$hash`, all it takes to verify later even after the cost changes. */
export async function hashPassword (password: string, cost: PasswordCost): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt, cost)
  return ['scrypt', cost.N, cost.r, cost.p, salt.toString('base64url'), key.toString('base64url')].join('$')
}

/**
 * `password` hashed with the settings of a stored hash (`scrypt$N$r$p$salt`, the stored hash
 * without its key): the stored hash itself exactly when the password is right. How the app checks
 * a password without being able to read the stored hash (see password_matches in migrations.ts).
 */
export async function hashWithSettings (password: string, settings: string): Promise<string> {
  const [scheme, N, r, p, salt] = settings.split('$')
  if (scheme !== 'scrypt' || salt === undefined) throw new Error(`not scrypt settings: '${settings}'`)
  const key = await derive(password, Buffer.from(salt, 'base64url'), { N: Number(N), r: Number(r), p: Number(p) })
  return [scheme, N, r, p, salt, key.toString('base64url')].join('$')
}

/** The settings part of a stored hash: all but the key. */
export function settingsOf (stored: string): string {
  return stored.slice(0, stored.lastIndexOf('$'))
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const [scheme, N, r, p, salt, hash] = stored.split('$')
  if (scheme !== 'scrypt') return false
  const expected = Buffer.from(hash, 'base64url')
  const key = await derive(password, Buffer.from(salt, 'base64url'), { N: Number(N), r: Number(r), p: Number(p) })
  return key.length === expected.length && timingSafeEqual(key, expected)
}
