// The package as users load it: the built files, by name, from import and from require.
import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import dbSession, { errors, fastifyDbSession } from 'fastify-db-session'
import { testDatabase } from './helpers/database.js'

// Compiling two TypeScript projects takes a while on a loaded machine.
t.setTimeout(180_000)

t.test('require() from CommonJS gives the same function as import', async (t) => {
  // In a plain Node process, as a CommonJS user runs it (tap's loaders stay out of the way).
  const script = `
    const required = require('fastify-db-session')
    import('fastify-db-session').then((esm) => console.log(JSON.stringify({
      type: typeof required,
      sameAsImport: required === esm.default,
      named: required.fastifyDbSession === required && required.default === required,
      errors: required.errors === esm.errors
    })))`
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script])
  t.same(JSON.parse(stdout), { type: 'function', sameAsImport: true, named: true, errors: true })
})

t.test('TypeScript projects in CommonJS and in ESM (module node16) compile against the packed package and run it', async (t) => {
  // What a user installs: npm pack's tarball (dist/ is built by the test command), its
  // dependencies and peers linked from this repository's node_modules.
  const { mkdtemp, mkdir, rm, symlink, writeFile, cp } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const exec = promisify(execFile)
  const root = new URL('..', import.meta.url).pathname
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-consumers-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const packed = JSON.parse((await exec('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: root })).stdout)
  const installed = join(dir, 'node_modules', 'fastify-db-session')
  await mkdir(installed, { recursive: true })
  await exec('tar', ['-xzf', join(dir, packed[0].filename), '-C', installed, '--strip-components=1'])
  for (const name of ['fastify', 'fastify-plugin', '@fastify', 'kysely', 'pg', '@types']) {
    await symlink(join(root, 'node_modules', name), join(dir, 'node_modules', name))
  }
  const db = await testDatabase(t)
  // One compilation for both (node16 takes each file's module kind from its package.json), beside the sources.
  const kinds = [['cjs', 'commonjs'], ['esm', 'module']]
  for (const [kind, type] of kinds) {
    await cp(join(root, `test/fixtures/consumer-${kind}`), join(dir, kind), { recursive: true })
    await writeFile(join(dir, kind, 'package.json'), JSON.stringify({ type }))
  }
  await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'node16', moduleResolution: 'node16', target: 'es2022', strict: true, types: ['node'] },
    include: ['cjs', 'esm']
  }))
  // The optional peers are not installed there: the projects below compile and run without them.
  const { createRequire } = await import('node:module')
  for (const optional of ['prom-client', '@opentelemetry/api']) {
    t.throws(() => createRequire(join(dir, 'cjs', 'index.ts')).resolve(optional), { code: 'MODULE_NOT_FOUND' }, `${optional} cannot be found beside the consumers`)
  }
  const compiled = await exec(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', dir]).catch((error) => error)
  t.equal(compiled.stdout, '', 'both projects compile without errors')
  for (const [kind] of kinds) {
    const { stdout } = await exec(process.execPath, [join(dir, kind, 'index.js')], { env: { ...process.env, DATABASE_URL: db.url } })
    t.same(JSON.parse(stdout), { body: { loadedBy: kind }, sameAsImport: true, named: true, code: 'FST_DB_SESSION_ACQUIRE_TIMEOUT' }, `the ${kind} project runs`)
  }
})

t.test('the default and named exports are one plugin, registered as fastify-db-session for Fastify 5', async (t) => {
  t.equal(typeof dbSession, 'function')
  t.equal(fastifyDbSession, dbSession)
  t.match((dbSession as unknown as Record<symbol, unknown>)[Symbol.for('plugin-meta')], { name: 'fastify-db-session', fastify: '5.x' })
  t.equal(new errors.FST_DB_SESSION_ACQUIRE_TIMEOUT(100).statusCode, 503)
  t.equal(new errors.FST_DB_SESSION_ACQUIRE_TIMEOUT(100).code, 'FST_DB_SESSION_ACQUIRE_TIMEOUT')
})

t.test('one fastify-plugin for the app: the version the official plugins depend on', async (t) => {
  // With fastify-plugin 5 beside plugins on 6, an app installed two copies of it.
  const { createRequire } = await import('node:module')
  const ours = createRequire(import.meta.url).resolve('fastify-plugin')
  const official = createRequire(createRequire(import.meta.url).resolve('@fastify/rate-limit')).resolve('fastify-plugin')
  t.equal(ours, official, '@fastify/rate-limit and fastify-db-session load the same fastify-plugin')
  const { default: pkg } = await import('../package.json', { with: { type: 'json' } })
  t.match(pkg.dependencies['fastify-plugin'], /^\^6\./)
})

t.test('engines: every Node the package accepts, its peers and dependencies accept too', async (t) => {
  // kysely 0.29 wants Node 22, so a range that admits Node 20 promised what npm then warns about (EBADENGINE).
  const { readFile } = await import('node:fs/promises')
  const { subset } = await import('semver')
  const read = async (path: string) => JSON.parse(await readFile(new URL(path, import.meta.url), 'utf8'))
  const pkg = await read('../package.json')
  const names = [...Object.keys(pkg.dependencies), ...Object.keys(pkg.peerDependencies)]
  for (const name of names) {
    const engine = (await read(`../node_modules/${name}/package.json`)).engines?.node
    if (engine !== undefined) t.ok(subset(pkg.engines.node, engine), `${name} accepts every Node in '${pkg.engines.node}' (it asks for '${engine}')`)
  }
})

t.test('the built plugin works end to end', async (t) => {
  const db = await testDatabase(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyDbSession, { connectionString: db.url })
  app.get('/', async (request) => request.db.selectNoFrom((eb) => eb.val('hello').as('greeting')).executeTakeFirst())
  t.same((await app.inject('/')).json(), { greeting: 'hello' })
  t.equal(app.db.stats().commits, 1)
})

t.test('every error code is in the runtime errors, the types and the README, and no other', async (t) => {
  const { readFile } = await import('node:fs/promises')
  const typings = await readFile(new URL('../index.d.cts', import.meta.url), 'utf8')
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const runtime = Object.keys(errors).sort()
  const typed = [...typings.matchAll(/readonly (FST_DB_SESSION_\w+): DbSessionErrorClass<'(\w+)'/g)].filter((m) => m[1] === m[2]).map((m) => m[1]).sort()
  const documented = [...new Set([...readme.matchAll(/^\| `(FST_DB_SESSION_\w+)` \|/gm)].map((m) => m[1]))].sort()
  t.same(typed, runtime, 'index.d.cts lists exactly the runtime errors')
  t.same(documented, runtime, 'the README\'s error table lists exactly the runtime errors')
  t.ok(new errors.FST_DB_SESSION_INVALID_OPTION('x') instanceof TypeError, 'INVALID_OPTION is a TypeError, as index.d.cts says')
  for (const code of runtime) t.equal(new (errors as Record<string, new (...a: unknown[]) => { code: string }>)[code]('x', 'y').code, code)
})
