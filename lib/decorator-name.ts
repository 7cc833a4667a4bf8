import type { FastifyInstance } from 'fastify'
import { InvalidOptionError } from './errors.js'

// A name written as `request.<name>` and `fastify.<name>`: letters, digits, `_` and `$`, not first a digit.
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/

/** Every registration's instance decorator, to tell "another registration of ours" from "taken by something else". */
const ours = new WeakSet<object>()

/** The `decorator` option: the name of `request.<name>` and `fastify.<name>`; `'db'` when not given. */
export function decoratorName (value: unknown): string {
  if (value === undefined) return 'db'
  if (typeof value !== 'string' || !IDENTIFIER.test(value)) {
    throw new InvalidOptionError(`decorator must be a JavaScript identifier such as 'analytics' (it names request.<decorator> and fastify.<decorator>); instead got '${String(value)}'`)
  }
  return value
}

/**
 * Refuses, at register time, a decorator name that this scope already has: another registration's
 * (in this scope or a parent one), or a property of Fastify's own or of another plugin on the
 * instance, its requests or its replies. Fastify would refuse some of these with
 * FST_ERR_DEC_ALREADY_PRESENT, accept others (a child scope's own copy) and break on a few
 * (`body`, set by its request constructor).
 */
export function checkDecoratorFree (fastify: FastifyInstance, name: string): void {
  if (fastify.hasDecorator(name) && ours.has((fastify as unknown as Record<string, object>)[name])) {
    throw new InvalidOptionError(`decorator '${name}' is already used by another registration of fastify-db-session in this scope or a parent scope; give this registration another decorator (and name), e.g. { decorator: 'analytics', name: 'analytics' }`)
  }
  if (fastify.hasDecorator(name) || fastify.hasRequestDecorator(name) || fastify.hasReplyDecorator(name)) {
    throw new InvalidOptionError(`decorator '${name}' is already a property of the Fastify instance, its requests or its replies (Fastify's own, or another plugin's); pick another decorator`)
  }
}

/** Marks a registration's instance decorator as ours, for checkDecoratorFree. */
export function markOurs (decorator: object): void {
  ours.add(decorator)
}
