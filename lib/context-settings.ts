import pg from 'pg'
import type { FastifyRequest } from 'fastify'
import type { DbContextValue } from '../index.js'
import { InvalidContextError, InvalidOptionError } from './errors.js'

// A custom setting is `namespace.name`; PostgreSQL accepts more, but this is what set_config
// users mean, and it keeps built-in settings (search_path, role) out of reach by mistake.
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$/

export function checkSettingNames (names: string[], where: string): void {
  for (const name of names) {
    if (!SETTING_NAME.test(name)) {
      throw new InvalidOptionError(`${where}'${name}' is not a valid setting name; use namespace.name, like 'app.tenant_id'`)
    }
  }
}

/**
 * The statement that follows BEGIN in the same round trip: one SELECT of transaction-local
 * set_config calls (never SET, which would outlive the transaction on a pooled connection).
 * Values are quoted by pg's escapeLiteral, so that the statement is complete in itself: it
 * travels as a prelude before the first query, or in a simple-protocol string with BEGIN.
 * null and undefined set the empty string, so a value never survives from an earlier request.
 */
export function contextStatement (values: Record<string, DbContextValue>): string {
  let sql = 'SELECT '
  let first = true
  for (const name in values) {
    const value = values[name]
    const text = value === null || value === undefined ? '' : String(value)
    if (text.includes('\0')) throw new InvalidContextError(name)
    sql += `${first ? '' : ', '}set_config(${pg.escapeLiteral(name)}, ${pg.escapeLiteral(text)}, true)`
    first = false
  }
  return sql
}

export type RequestContext = Record<string, (request: FastifyRequest) => DbContextValue>

/** Checks the option's names once, and returns what builds a request's statement. */
export function requestContextResolver (context: RequestContext | undefined): ((request: FastifyRequest) => string) | null {
  if (context === undefined) return null
  if (context === null || typeof context !== 'object') {
    throw new InvalidOptionError(`context must be an object of setting names to functions (request) => value; instead got '${String(context)}'`)
  }
  const names = Object.keys(context)
  if (names.length === 0) return null
  checkSettingNames(names, 'context: ')
  for (const name of names) {
    if (typeof context[name] !== 'function') {
      throw new InvalidOptionError(`context['${name}'] must be a function (request) => value; instead got '${String(context[name])}'`)
    }
  }
  return (request) => {
    const values: Record<string, DbContextValue> = {}
    for (const name of names) values[name] = context[name](request)
    return contextStatement(values)
  }
}
