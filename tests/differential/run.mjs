// The differential test of Gatehouse's policy engine (docs/policy.md, "Differential test").
//
// Generates (policy, request) cases from a seeded PRNG, decides each with @cloud-copilot/iam-simulate
// (runSimulation; AGPL-3.0-or-later, a test-only dependency installed by scripts/setup) and with
// Gatehouse (policy_diff_driver, the engine as the gateway links it), and fails listing every
// disagreement that no entry of allowlist.mjs explains.
//
//   node run.mjs --driver PATH [--seed N] [--cases N] [--show N] [--dump FILE]
//
// The cases stay inside what both sides model: one account (Gatehouse has no cross-account
// rules), real AWS actions and resource types (iam-simulate validates them against iam-data),
// global condition keys, and no SCPs, RCPs, boundaries or session policies.
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { allowlist } from './allowlist.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const simulatePath = join(here, 'node_modules', '@cloud-copilot', 'iam-simulate', 'dist', 'esm', 'index.js')

function parseArgs(argv) {
  const args = { seed: 20261203, cases: 3000, show: 25, driver: '', dump: '' }
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '')
    if (!(key in args) || i + 1 >= argv.length) {
      throw new Error(`usage: node run.mjs --driver PATH [--seed N] [--cases N] [--show N] [--dump FILE] (bad: ${argv[i]})`)
    }
    args[key] = typeof args[key] === 'number' ? Number(argv[i + 1]) : argv[i + 1]
  }
  if (!args.driver) throw new Error('--driver PATH is required')
  return args
}

// ---- a small seeded PRNG (mulberry32): the same seed gives the same cases everywhere -----------

function prng(seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const r = {
    next,
    chance: (p) => next() < p,
    int: (n) => Math.floor(next() * n),
    pick: (list) => list[Math.floor(next() * list.length)],
    some: (list, min, max) => {
      const n = min + Math.floor(next() * (max - min + 1))
      const out = []
      for (let i = 0; i < n; i++) out.push(r.pick(list))
      return [...new Set(out)]
    },
  }
  return r
}

// ---- the vocabulary ------------------------------------------------------------------------------

const ACCOUNT = '123456789012'
const iam = (rest) => `arn:aws:iam::${ACCOUNT}:${rest}`

// principal: what iam-simulate is given; arns: Gatehouse's Principal.arns (its own ARN first, then
// aliases); principalArn: aws:PrincipalArn as AWS sets it (a session's is its role's ARN).
const PRINCIPALS = [
  { principal: iam('role/app'), arns: [iam('role/app')], principalArn: iam('role/app') },
  { principal: iam('role/ops'), arns: [iam('role/ops')], principalArn: iam('role/ops') },
  { principal: iam('role/upload'), arns: [iam('role/upload')], principalArn: iam('role/upload') },
  { principal: iam('user/alice'), arns: [iam('user/alice')], principalArn: iam('user/alice'), username: 'alice' },
  { principal: iam('user/bob'), arns: [iam('user/bob')], principalArn: iam('user/bob'), username: 'bob' },
  {
    principal: `arn:aws:sts::${ACCOUNT}:assumed-role/upload/worker`,
    arns: [iam('role/upload'), `arn:aws:sts::${ACCOUNT}:assumed-role/upload/worker`],
    principalArn: iam('role/upload'),
  },
  { anonymous: true },
]

const OBJECTS = [
  'arn:aws:s3:::images/a.txt',
  'arn:aws:s3:::images/uploads/alice/x.png',
  'arn:aws:s3:::images/uploads/bob/y.png',
  'arn:aws:s3:::images/public/z.jpg',
  'arn:aws:s3:::images/Uploads/alice/case.png',
  'arn:aws:s3:::images/red/r.txt',
  'arn:aws:s3:::logs/2024/01/app.log',
  'arn:aws:s3:::logs/public/index.html',
]
const BUCKETS = ['arn:aws:s3:::images', 'arn:aws:s3:::logs']
const FUNCTIONS = ['resize', 'thumb'].map((f) => `arn:aws:lambda:us-east-1:${ACCOUNT}:function:${f}`)
const TABLES = ['orders', 'users'].map((t) => `arn:aws:dynamodb:us-east-1:${ACCOUNT}:table/${t}`)
const QUEUES = ['jobs', 'mail'].map((q) => `arn:aws:sqs:us-east-1:${ACCOUNT}:${q}`)

// Actions with the resources they act on.
const OPERATIONS = [
  ['s3:GetObject', OBJECTS],
  ['s3:PutObject', OBJECTS],
  ['s3:DeleteObject', OBJECTS],
  ['s3:ListBucket', BUCKETS],
  ['lambda:InvokeFunction', FUNCTIONS],
  ['lambda:GetFunction', FUNCTIONS],
  ['dynamodb:GetItem', TABLES],
  ['dynamodb:PutItem', TABLES],
  ['sqs:SendMessage', QUEUES],
]

const ACTION_PATTERNS = [
  ...OPERATIONS.map(([a]) => a),
  's3:Get*', 's3:*Object', 's3:*', '*', 'lambda:Invoke*', 'lambda:*', 'S3:GETOBJECT',
  'dynamodb:Get?tem', 'sqs:Send*', 's3:List*', 'iam:PassRole', 's3:?utObject', 'Lambda:InvokeFunction',
]

const RESOURCE_PATTERNS = [
  ...OBJECTS, ...BUCKETS, ...FUNCTIONS, ...TABLES, ...QUEUES,
  '*', 'arn:aws:s3:::images/*', 'arn:aws:s3:::images/uploads/${aws:username}/*',
  'arn:aws:s3:::images/uploads/*/x.png', 'arn:aws:s3:::image?', 'arn:aws:s3:::logs/*',
  'arn:aws:s3:::*/public/*', 'arn:aws:s3:::images/${aws:PrincipalTag/team}/*',
  "arn:aws:s3:::images/uploads/${aws:username, 'alice'}/*", 'arn:aws:s3:::images/${*}*',
  'arn:aws:lambda:*:*:function:resize', `arn:aws:lambda:us-east-1:${ACCOUNT}:function:*`,
  'arn:aws:dynamodb:*:*:table/orders', `arn:aws:sqs:*:${ACCOUNT}:*`, 'arn:aws:s3:::IMAGES/*',
  'arn:aws:*:*:*:*', 'arn:aws:s3:::images/uploads/*',
]

const CONDITIONS = [
  () => ({ StringEquals: { 'aws:username': ['alice', 'bob'] } }),
  () => ({ StringEquals: { 'aws:username': 'alice' } }),
  () => ({ StringNotEquals: { 'aws:username': 'alice' } }),
  () => ({ StringLike: { 'aws:userid': 'AIDA*' } }),
  () => ({ StringEqualsIgnoreCase: { 'aws:username': 'ALICE' } }),
  () => ({ StringNotEqualsIgnoreCase: { 'aws:username': 'Bob' } }),
  () => ({ StringNotLike: { 'aws:Referer': 'https://evil.*' } }),
  () => ({ StringLike: { 'aws:Referer': ['https://*.example.com/*', 'https://example.com/?ay'] } }),
  () => ({ StringEquals: { 'aws:PrincipalTag/team': ['red', 'blue'] } }),
  () => ({ StringLike: { 'aws:PrincipalArn': 'arn:aws:iam::*:role/*' } }),
  () => ({ ArnLike: { 'aws:PrincipalArn': `arn:aws:iam::${ACCOUNT}:role/up*` } }),
  () => ({ ArnEquals: { 'aws:PrincipalArn': iam('user/alice') } }),
  () => ({ ArnNotEquals: { 'aws:PrincipalArn': iam('role/ops') } }),
  () => ({ ArnEquals: { 'aws:SourceArn': 'arn:aws:s3:::images' } }),
  () => ({ ArnNotLike: { 'aws:SourceArn': 'arn:aws:s3:::log*' } }),
  () => ({ ArnLike: { 'aws:SourceArn': 'arn:aws:s3:::*' } }),
  () => ({ IpAddress: { 'aws:SourceIp': ['10.0.0.0/8', '192.0.2.0/24'] } }),
  () => ({ NotIpAddress: { 'aws:SourceIp': '10.1.0.0/16' } }),
  () => ({ IpAddress: { 'aws:SourceIp': '2001:db8::/32' } }),
  () => ({ IpAddress: { 'aws:SourceIp': '203.0.113.5' } }),
  () => ({ Bool: { 'aws:SecureTransport': 'true' } }),
  () => ({ Bool: { 'aws:SecureTransport': 'false' } }),
  () => ({ BoolIfExists: { 'aws:MultiFactorAuthPresent': 'false' } }),
  () => ({ Null: { 'aws:SourceIp': 'true' } }),
  () => ({ Null: { 'aws:SourceIp': 'false' } }),
  () => ({ Null: { 'aws:MultiFactorAuthPresent': 'true' } }),
  () => ({ NumericLessThan: { 'aws:MultiFactorAuthAge': '3600' } }),
  () => ({ NumericGreaterThanEquals: { 'aws:EpochTime': '1700000000' } }),
  () => ({ NumericNotEquals: { 'aws:MultiFactorAuthAge': ['0', '60'] } }),
  () => ({ NumericLessThanEqualsIfExists: { 'aws:MultiFactorAuthAge': '60' } }),
  () => ({ DateGreaterThan: { 'aws:CurrentTime': '2024-01-01T00:00:00Z' } }),
  () => ({ DateLessThan: { 'aws:CurrentTime': '2025-01-01' } }),
  () => ({ DateLessThanEquals: { 'aws:EpochTime': '1714564800' } }),
  () => ({ DateNotEquals: { 'aws:CurrentTime': '2024-05-01T12:00:00Z' } }),
  () => ({ 'ForAnyValue:StringEquals': { 'aws:TagKeys': ['env', 'team'] } }),
  () => ({ 'ForAllValues:StringLike': { 'aws:TagKeys': ['e*', 't*'] } }),
  () => ({ 'ForAllValues:StringEquals': { 'aws:TagKeys': 'env' } }),
  () => ({ 'ForAnyValue:StringNotEquals': { 'aws:TagKeys': 'env' } }),
  () => ({ 'ForAllValues:StringNotLike': { 'aws:TagKeys': 'sec*' } }),
  () => ({ StringEquals: { 'aws:RequestTag/env': 'prod' } }),
  () => ({ StringEqualsIfExists: { 'aws:RequestTag/env': 'dev' } }),
  () => ({ StringNotEqualsIfExists: { 'aws:RequestTag/env': 'prod' } }),
  () => ({ StringLike: { 'aws:username': '${aws:PrincipalTag/team}*' } }),
  () => ({ StringEquals: { 'aws:PrincipalAccount': ACCOUNT } }),
  () => ({ StringNotEquals: { 'aws:PrincipalAccount': '111122223333' } }),
  () => ({ StringEquals: { 'aws:username': '${aws:PrincipalTag/owner}' } }),
  () => ({ DateEquals: { 'aws:CurrentTime': '2024-05-01T12:00:00Z' } }),
  () => ({ DateGreaterThanEquals: { 'aws:CurrentTime': '2024-05-01T14:00:00+02:00' } }),
  () => ({ StringLikeIfExists: { 'aws:Referer': '*example.com*' } }),
  () => ({ 'ForAnyValue:StringLike': { 'aws:TagKeys': '*e*' } }),
  () => ({ ArnLikeIfExists: { 'aws:SourceArn': 'arn:aws:sqs:*:*:*' } }),
  () => ({ NumericGreaterThan: { 'aws:MultiFactorAuthAge': '1e2' } }),
]

const PRINCIPAL_BLOCKS = [
  () => ({ Principal: '*' }),
  () => ({ Principal: { AWS: '*' } }),
  () => ({ Principal: { AWS: iam('role/app') } }),
  () => ({ Principal: { AWS: [iam('role/upload'), iam('user/alice')] } }),
  () => ({ Principal: { AWS: iam('user/bob') } }),
  () => ({ Principal: { AWS: `arn:aws:sts::${ACCOUNT}:assumed-role/upload/worker` } }),
  () => ({ Principal: { Service: 'lambda.amazonaws.com' } }),
]
// Account principals: AWS reads them differently in an Allow (delegation to identity policies)
// and in a Deny, so they are generated as a feature of their own.
const ACCOUNT_PRINCIPALS = [
  () => ({ Principal: { AWS: ACCOUNT } }),
  () => ({ Principal: { AWS: iam('root') } }),
]
const NOT_PRINCIPALS = [
  () => ({ NotPrincipal: { AWS: [iam('role/upload'), `arn:aws:sts::${ACCOUNT}:assumed-role/upload/worker`] } }),
  () => ({ NotPrincipal: { AWS: iam('user/alice') } }),
]

// ---- cases ---------------------------------------------------------------------------------------

// Patterns that cover the request's action or resource, so that a fair share of statements apply
// (independent patterns alone rarely match one request).
function coveringActions(action) {
  const [service, name] = action.split(':')
  return [action, `${service}:*`, `${service}:${name.slice(0, 3)}*`, '*', action.toUpperCase()]
}
function coveringResources(resource) {
  const cut = resource.lastIndexOf('/') > 0 ? resource.lastIndexOf('/') : resource.lastIndexOf(':')
  return [resource, `${resource.slice(0, cut + 1)}*`, '*', resource.replace(/:[0-9]{12}:/, ':*:')]
}

function statement(r, resourcePolicy, index, target) {
  const s = {}
  if (r.chance(0.5)) s.Sid = `S${index}`
  s.Effect = r.chance(0.7) ? 'Allow' : 'Deny'
  if (resourcePolicy) {
    if (s.Effect === 'Deny' && r.chance(0.25)) Object.assign(s, r.pick(NOT_PRINCIPALS)())
    else if (r.chance(0.12)) Object.assign(s, r.pick(ACCOUNT_PRINCIPALS)())
    else Object.assign(s, r.pick(PRINCIPAL_BLOCKS)())
  }
  const actions = r.some(ACTION_PATTERNS, 1, 3)
  if (r.chance(0.4)) actions.push(r.pick(coveringActions(target.action)))
  s[r.chance(0.15) ? 'NotAction' : 'Action'] = actions.length === 1 && r.chance(0.5) ? actions[0] : actions
  const resources = r.some(RESOURCE_PATTERNS, 1, 2)
  if (r.chance(0.4)) resources.push(r.pick(coveringResources(target.resource)))
  s[r.chance(0.12) ? 'NotResource' : 'Resource'] = resources.length === 1 && r.chance(0.5) ? resources[0] : resources
  if (r.chance(0.45)) {
    const condition = {}
    for (const make of r.some(CONDITIONS, 1, 2)) {
      for (const [op, body] of Object.entries(make())) {
        condition[op] = { ...(condition[op] || {}), ...body }
      }
    }
    s.Condition = condition
  }
  return s
}

function policyDocument(r, resourcePolicy, target) {
  const statements = []
  const n = 1 + r.int(3)
  for (let i = 0; i < n; i++) statements.push(statement(r, resourcePolicy, i, target))
  const doc = {}
  const version = r.next()
  if (version < 0.9) doc.Version = '2012-10-17'
  else if (version < 0.95) doc.Version = '2008-10-17'
  doc.Statement = statements.length === 1 && r.chance(0.3) ? statements[0] : statements
  return doc
}

const TIMES = [
  ['2024-05-01T12:00:00Z', '1714564800'],
  ['2023-06-01T00:00:00Z', '1685577600'],
  ['2025-03-01T08:30:00Z', '1740817800'],
]

function context(r, who) {
  const c = {}
  if (!who.anonymous) {
    c['aws:PrincipalArn'] = who.principalArn
    c['aws:PrincipalAccount'] = ACCOUNT
    if (r.chance(0.8)) c['aws:userid'] = r.pick(['AIDAEXAMPLE1', 'AROAEXAMPLE2:worker'])
    if (who.username && r.chance(0.85)) c['aws:username'] = who.username
    else if (r.chance(0.1)) c['aws:username'] = r.pick(['alice', 'bob', 'carol'])
    if (r.chance(0.6)) c['aws:PrincipalTag/team'] = r.pick(['red', 'blue', 'green'])
    if (r.chance(0.2)) c['aws:PrincipalTag/owner'] = r.pick(['alice', 'bob'])
    if (r.chance(0.5)) c['aws:MultiFactorAuthPresent'] = r.pick(['true', 'false'])
    if (r.chance(0.3)) c['aws:MultiFactorAuthAge'] = r.pick(['0', '60', '7200'])
  }
  if (r.chance(0.85)) c['aws:SourceIp'] = r.pick(['10.1.2.3', '10.2.0.1', '192.0.2.10', '203.0.113.5', '2001:db8::1', '198.51.100.7', '::ffff:10.1.2.3', '2001:db9::5'])
  if (r.chance(0.8)) c['aws:SecureTransport'] = r.pick(['true', 'false'])
  if (r.chance(0.9)) {
    const [iso, epoch] = r.pick(TIMES)
    c['aws:CurrentTime'] = iso
    c['aws:EpochTime'] = epoch
  }
  if (r.chance(0.4)) c['aws:TagKeys'] = r.chance(0.1) ? [] : r.some(['env', 'team', 'secret', 'owner'], 1, 3)
  if (r.chance(0.4)) c['aws:RequestTag/env'] = r.pick(['prod', 'dev'])
  if (r.chance(0.3)) c['aws:Referer'] = r.pick(['https://www.example.com/a', 'https://evil.example.net/', 'https://example.com/pay'])
  if (r.chance(0.3)) c['aws:SourceArn'] = r.pick(['arn:aws:s3:::images', 'arn:aws:s3:::logs', `arn:aws:sqs:us-east-1:${ACCOUNT}:jobs`])
  return c
}

function makeCase(r, id) {
  const who = r.pick(PRINCIPALS)
  const [action, resources] = r.pick(OPERATIONS)
  const resource = r.pick(resources)
  const target = { action, resource }
  const identity = []
  if (!who.anonymous) {
    const n = r.int(3)
    for (let i = 0; i < n; i++) identity.push(policyDocument(r, false, target))
  }
  const resourcePolicy =
    who.anonymous || identity.length === 0 || r.chance(0.5) ? policyDocument(r, true, target) : null
  return { id, who, action, resource, identity, resourcePolicy, context: context(r, who) }
}

// ---- the two deciders ----------------------------------------------------------------------------

async function simulate(runSimulation, anonymousPrincipal, c) {
  const sim = {
    request: {
      principal: c.who.anonymous ? anonymousPrincipal : c.who.principal,
      action: c.action,
      resource: { resource: c.resource, accountId: ACCOUNT },
      contextVariables: c.context,
    },
    identityPolicies: c.identity.map((policy, i) => ({ name: `identity${i}`, policy })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
  }
  if (c.resourcePolicy) sim.resourcePolicy = c.resourcePolicy
  const out = await runSimulation(sim, {})
  if (out.resultType === 'error') return { decision: 'Invalid', detail: JSON.stringify(out.errors) }
  return { decision: out.overallResult, detail: '' }
}

function gatehouse(driver, cases) {
  return new Promise((resolve, reject) => {
    const child = spawn(driver, [], { stdio: ['pipe', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => { out += d })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${driver} exited with ${code}`))
      const answers = new Map()
      for (const line of out.split('\n')) {
        if (!line) continue
        const a = JSON.parse(line)
        answers.set(a.id, a)
      }
      resolve(answers)
    })
    for (const c of cases) {
      child.stdin.write(JSON.stringify({
        id: c.id,
        identity: c.identity,
        resourcePolicy: c.resourcePolicy,
        principals: c.who.anonymous ? [] : c.who.arns,
        action: c.action,
        resource: c.resource,
        account: ACCOUNT,
        context: c.context,
      }) + '\n')
    }
    child.stdin.end()
  })
}

// ---- main ----------------------------------------------------------------------------------------

async function main() {
  const args = parseArgs(process.argv)
  let sim
  try {
    sim = await import(simulatePath)
  } catch (e) {
    console.error(`cannot load @cloud-copilot/iam-simulate from ${simulatePath}: run scripts/setup (npm ci in tests/differential)\n${e.message}`)
    process.exit(2)
  }
  const r = prng(args.seed)
  const cases = []
  for (let i = 0; i < args.cases; i++) cases.push(makeCase(r, i))
  if (args.dump) writeFileSync(args.dump, cases.map((c) => JSON.stringify(c)).join('\n') + '\n')

  const decideBoth = async (list) => {
    const ours = await gatehouse(args.driver, list)
    const out = new Map()
    for (const c of list) {
      const theirs = await simulate(sim.runSimulation, sim.anonymousPrincipal, c)
      const mine = ours.get(c.id) || { decision: 'Missing', detail: 'no answer from the driver' }
      out.set(c.id, { theirs, mine })
    }
    return out
  }
  const first = await decideBoth(cases)
  const counts = { agree: 0, allowed: 0, invalidBoth: 0, explained: 0, disagree: 0 }
  const disagreements = []
  for (const c of cases) {
    const { theirs, mine } = first.get(c.id)
    if (theirs.decision === mine.decision) {
      counts.agree++
      if (mine.decision === 'Allowed') counts.allowed++
      if (mine.decision === 'Invalid') counts.invalidBoth++
    } else {
      disagreements.push(c)
    }
  }
  // Second pass: each disagreement, with the statements an allow-list entry blames removed, must
  // agree; then that entry explains it.
  const stripped = []
  for (const c of disagreements) {
    for (const rule of allowlist) {
      if (rule.applies(c)) stripped.push({ ...rule.strip(c), id: `${c.id}/${rule.name}`, rule: rule.name, of: c.id })
    }
  }
  const second = await decideBoth(stripped)
  const explainedBy = new Map()
  for (const s of stripped) {
    const { theirs, mine } = second.get(s.id)
    if (theirs.decision === mine.decision && !explainedBy.has(s.of)) explainedBy.set(s.of, s.rule)
  }
  const byRule = new Map()
  const unexplained = []
  for (const c of disagreements) {
    const rule = explainedBy.get(c.id)
    if (rule) {
      counts.explained++
      byRule.set(rule, (byRule.get(rule) || 0) + 1)
    } else {
      counts.disagree++
      unexplained.push({ c, ...first.get(c.id) })
    }
  }
  console.log(`seed ${args.seed}: ${cases.length} cases, ${counts.agree} agree (${counts.allowed} allowed, ` +
    `${counts.invalidBoth} refused as invalid by both), ${counts.explained} explained by the allow-list, ` +
    `${counts.disagree} disagreements`)
  for (const [name, n] of byRule) console.log(`  allow-list ${name}: ${n}`)
  for (const { c, theirs, mine } of unexplained.slice(0, args.show)) {
    console.log(`\ncase ${c.id}: iam-simulate ${theirs.decision}${theirs.detail ? ' ' + theirs.detail : ''}; ` +
      `gatehouse ${mine.decision} (${mine.detail})`)
    console.log(JSON.stringify({ principal: c.who.anonymous ? 'anonymous' : c.who.principal, action: c.action,
      resource: c.resource, context: c.context, identity: c.identity, resourcePolicy: c.resourcePolicy }))
  }
  if (unexplained.length > args.show) console.log(`\n... and ${unexplained.length - args.show} more`)
  // A generator that stopped producing allowed or agreeing cases would make the test vacuous.
  const vacuous = counts.allowed < cases.length / 20 || counts.invalidBoth > cases.length / 10
  if (vacuous) console.log('the cases are too one-sided to prove anything: fix the generator')
  process.exit(unexplained.length === 0 && !vacuous ? 0 : 1)
}

main().catch((e) => {
  console.error(e)
  process.exit(2)
})
