// The compiled plugin, as users run it (`npm run bench` builds it first): tsx's transpile of lib/
// wraps every function it creates in a naming helper, a per-request cost the package does not have.
import type plugin from '../lib/index.js'

const compiled = '../dist/index.js'
const { default: dbSession } = await import(compiled) as { default: typeof plugin }
export default dbSession
