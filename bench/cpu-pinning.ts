// Where the bench's processes run. On a small machine the scheduler places the server, PostgreSQL
// and the load generator anew for every process it starts, and a server that happens to share a
// core with its database backend answers a sequential request tens of µs sooner or later than one
// that does not: two processes of the same variant differed by 15% in p50 (see README,
// Performance). Pinned, the servers get a core of their own and PostgreSQL and the load generator
// the others, the layout of an app server beside its database server, and the same for every variant.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { cpus } from 'node:os'
import pg from 'pg'

export interface Layout {
  /** The CPU list the variant servers run on (taskset's syntax), or null: wherever the scheduler puts them. */
  server: string | null
  /** The CPU list PostgreSQL, this process and the load generators run on, or null. */
  rest: string | null
}

export const UNPINNED: Layout = { server: null, rest: null }
const ALL = `0-${cpus().length - 1}`

/** The last core for the servers, the others for the rest; unpinned with one core or without taskset. */
export function pinnedLayout (): Layout {
  const count = cpus().length
  if (count < 2) return UNPINNED
  const layout = { server: String(count - 1), rest: count === 2 ? '0' : `0-${count - 2}` }
  try {
    // No taskset, or CPUs this process may not use (a container's cpuset): left to the scheduler.
    setAffinity(process.pid, layout.rest)
  } catch {
    return UNPINNED
  }
  return layout
}

function setAffinity (pid: number, list: string): void {
  // -a: every thread of the process (Node's, or PostgreSQL's one).
  execFileSync('taskset', ['-a', '-p', '-c', list, String(pid)], { stdio: 'ignore' })
}

/**
 * Moves this process (and so the load generators it starts from now on) and PostgreSQL's
 * postmaster (and so the backends it forks from now on) to the layout's `rest`, or everywhere.
 */
export async function applyLayout (layout: Layout, databaseUrl: string): Promise<void> {
  const list = layout.rest ?? ALL
  setAffinity(process.pid, list)
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
    // A backend's parent is the postmaster (field 4 of /proc/<pid>/stat): only on this machine.
    const stat = readFileSync(`/proc/${rows[0].pid}/stat`, 'utf8')
    const postmaster = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    setAffinity(postmaster, list)
  } catch {
    // PostgreSQL elsewhere (DATABASE_URL to another host): only this machine's processes move.
  } finally {
    await client.end()
  }
}

/** The command and arguments that start `args` with node on the layout's server CPUs. */
export function serverCommand (layout: Layout, args: string[]): [string, string[]] {
  return layout.server === null ? [process.execPath, args] : ['taskset', ['-c', layout.server, process.execPath, ...args]]
}
