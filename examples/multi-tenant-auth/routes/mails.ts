// The mails the service sends. Each carries a token that proves the recipient reads that mailbox;
// in production it would be a link to the service's page that takes a password.
import type { Mail } from '../mailer.js'

export function signUpMail (mail: { to: string, tenantName: string, token: string, expiresAt: Date }): Mail {
  return {
    to: mail.to,
    subject: `Confirm your new tenant ${mail.tenantName}`,
    text: [
      `Someone (you, we hope) signed up the tenant "${mail.tenantName}" with this address.`,
      'To become its owner, accept with this token and a password: a new one if this address has',
      'no account yet, or your account\'s own password if it has one (POST /invitations/accept).',
      'If it was not you, ignore this mail: nothing happens without the token.',
      '',
      `Token: ${mail.token}`,
      '',
      `It expires at ${mail.expiresAt.toISOString()}.`
    ].join('\n')
  }
}

export function invitationMail (mail: { to: string, tenantName: string, role: string, token: string, expiresAt: Date }): Mail {
  return {
    to: mail.to,
    subject: `You are invited to ${mail.tenantName}`,
    text: [
      `You are invited to join "${mail.tenantName}" as ${mail.role === 'admin' ? 'an admin' : 'a member'}.`,
      'To join, accept with this token and a password: a new one if this address has no account',
      'yet, or your account\'s own password if it has one (POST /invitations/accept).',
      '',
      `Token: ${mail.token}`,
      '',
      `It expires at ${mail.expiresAt.toISOString()}.`
    ].join('\n')
  }
}
