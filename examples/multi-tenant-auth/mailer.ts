// Mail, which is how the service learns that someone owns an email: sign-up confirmations and
// invitations carry a token that only the mailbox's owner receives.
//
// The example's mailer writes each message to a folder (its outbox) instead of sending it: the
// walk-through and the tests read it there, as a person reads their mail, with nothing to install.
// A folder rather than a table, because sending mail is not database work: a real mailer talks to
// SMTP or an HTTP API, outside any transaction, and this one keeps that shape. Production swaps in
// its own `Mailer`.
import { randomBytes } from 'node:crypto'
import { mkdir, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export interface Mail {
  to: string
  subject: string
  text: string
}

export interface Mailer {
  send: (mail: Mail) => Promise<void>
}

let sequence = 0

/** A header holds one line: a tenant's name with a line break must not add headers of its own. */
function oneLine (text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what it removes
  return text.replace(/[\u0000-\u001f\u007f]/g, ' ')
}

/**
 * Writes each message to `folder` as `<time>-<sequence>-<random>.eml` (names sort in the order
 * written), readable by the server's user only: the tokens inside are secrets. A message appears
 * whole or not at all (written aside, then renamed).
 */
export function outboxMailer (folder: string): Mailer {
  let ready: Promise<unknown> | null = null
  return {
    async send (mail) {
      ready ??= mkdir(folder, { recursive: true, mode: 0o700 }).catch((error) => { ready = null; throw error })
      await ready
      const name = `${new Date().toISOString().replace(/[:.]/g, '-')}-${String(++sequence).padStart(6, '0')}-${randomBytes(4).toString('hex')}.eml`
      const headers = `To: ${oneLine(mail.to)}\nSubject: ${oneLine(mail.subject)}\nDate: ${new Date().toUTCString()}\n`
      const aside = join(folder, `.${name}.tmp`)
      await writeFile(aside, `${headers}\n${mail.text}\n`, { mode: 0o600 })
      await rename(aside, join(folder, name))
    }
  }
}
