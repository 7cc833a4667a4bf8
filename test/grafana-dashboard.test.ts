// examples/grafana/fastify-db-session.json: every metric its queries use exists in metrics(),
// every metric of metrics() is on it, and every query is valid PromQL (promtool check rules).
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { testDatabase } from './helpers/database.js'

interface Target { expr: string, refId: string, datasource: { uid: string } }
interface Panel { type: string, title: string, datasource?: { uid: string }, targets?: Target[] }
interface Dashboard { panels: Panel[], templating: { list: Array<{ name: string, definition?: string }> } }

const dashboard: Dashboard = JSON.parse(await readFile(new URL('../examples/grafana/fastify-db-session.json', import.meta.url), 'utf8'))
const panels = dashboard.panels.filter((panel) => panel.type !== 'row')
const queries = [
  ...panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr)),
  ...dashboard.templating.list.flatMap((variable) => variable.definition ?? [])
]
const queried = new Set(queries.flatMap((query) => query.match(/\bfastify_db_session_\w+/g) ?? []))

// Same convention as the PgBouncer tests: without promtool the PromQL check is skipped on a
// developer's machine; under CI (.ci/run installs Debian's prometheus package) it must run.
const missing = spawnSync('promtool', ['--version']).error !== undefined
if (missing && process.env.CI) throw new Error('CI is set but promtool is not installed: .ci/run must apt-get install -y prometheus')

t.test('every metric the dashboard queries is in metrics(), and every metric of metrics() is on the dashboard', async (t) => {
  const db = await testDatabase(t)
  const app = await db.app()
  const text = app.db.metrics()
  const samples = new Set(text.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => line.slice(0, line.indexOf('{'))))
  const families = new Set([...text.matchAll(/^# TYPE (\w+) /gm)].map((match) => match[1]))
  t.ok(queried.size >= families.size, `the dashboard queries ${queried.size} names`)
  t.same([...queried].filter((name) => !samples.has(name)), [], 'no query names a series that metrics() does not write')
  const onDashboard = (family: string) => [...queried].some((name) => name === family || name.startsWith(family + '_'))
  t.same([...families].filter((family) => !onDashboard(family)), [], 'every metric family has a panel')
})

t.test('the dashboard\'s shape: panels on the chosen data source, each with queries, the pool variable from our metrics', async (t) => {
  t.ok(panels.length >= 10, `${panels.length} panels`)
  for (const panel of panels) {
    t.equal(panel.datasource?.uid, '$' + '{datasource}', `${panel.title}: on the dashboard's data source variable`)
    t.ok((panel.targets ?? []).length > 0, `${panel.title}: has queries`)
    for (const target of panel.targets ?? []) t.match(target.expr, /\{pool=~"\$pool"/, `${panel.title} ${target.refId}: filtered by the pool variable`)
  }
  const titles = panels.map((panel) => panel.title.toLowerCase()).join(' | ')
  for (const topic of ['connections', 'wait', 'hold', 'outcomes', 'failures', 'leaks', 'circuit']) t.match(titles, topic, `a panel on ${topic}`)
  t.same(dashboard.templating.list.map((variable) => variable.name), ['datasource', 'pool'])
})

t.test('every query is valid PromQL: promtool check rules on them as recording rules', { skip: missing ? 'promtool is not installed (apt-get install -y prometheus); the queries are not parsed' : false }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'fastify-db-session-dashboard-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // Grafana's variables as Prometheus would see them once Grafana replaced them.
  const promql = (query: string) => query.replaceAll('$__rate_interval', '5m').replaceAll('$pool', '.*')
  const rules = queries.filter((query) => !query.startsWith('label_values(')).map((query, i) => `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(promql(query))}\n`)
  const file = join(dir, 'rules.yml')
  await writeFile(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('')}`)
  const check = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' })
  t.equal(check.status, 0, `promtool check rules: ${check.stdout}${check.stderr}`)
  t.match(check.stdout, `SUCCESS: ${rules.length} rules found`)
})
