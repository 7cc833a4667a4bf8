// The table every bench variant reads: 1,000 items, made afresh.
import pg from 'pg'

export async function seedItems (databaseUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    await client.query('DROP TABLE IF EXISTS items; CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)')
    await client.query("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 1000) AS i")
  } finally {
    await client.end()
  }
}
