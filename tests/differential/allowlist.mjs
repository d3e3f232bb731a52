// Disagreements between iam-simulate and Gatehouse that are understood (docs/policy.md,
// "Differential test"). Each entry names a feature, says why the two engines differ on it, and
// proves it case by case: `applies(case)` says the case has the feature, `strip(case)` takes it
// out (the statements that carry it, or the request value). A disagreement is explained only when the stripped case, decided
// again by both engines, agrees; every other disagreement fails the test.

const VARIABLE = /\$\{([^},]+)(,[^}]*)?\}/g

function statementsOf(doc) {
  return Array.isArray(doc.Statement) ? doc.Statement : [doc.Statement]
}

// The policy variables a statement's Resource, NotResource and Condition values use.
function variables(statement) {
  const text = JSON.stringify([statement.Resource, statement.NotResource, statement.Condition])
  return [...text.matchAll(VARIABLE)].map((m) => ({ key: m[1].trim().toLowerCase(), hasDefault: m[2] !== undefined }))
}

// The case without the statements `drop(doc, statement)` selects; a policy left empty goes.
function withoutStatements(c, drop) {
  const keep = (doc) => {
    const statements = statementsOf(doc).filter((s) => !drop(doc, s))
    return statements.length ? { ...doc, Statement: statements } : null
  }
  const identity = c.identity.map(keep).filter((d) => d !== null)
  const resourcePolicy = c.resourcePolicy ? keep(c.resourcePolicy) : null
  return { ...c, identity, resourcePolicy }
}

function docs(c) {
  return [...c.identity, ...(c.resourcePolicy ? [c.resourcePolicy] : [])]
}

const is2012 = (doc) => doc.Version === '2012-10-17'

// A 2012-10-17 statement with a variable that has no single value in the request and no default.
function unresolvable(c) {
  const context = new Map(Object.entries(c.context).map(([k, v]) => [k.toLowerCase(), v]))
  return (doc, s) =>
    is2012(doc) &&
    variables(s).some(({ key, hasDefault }) => {
      if (hasDefault || key === '*' || key === '?' || key === '$') return false
      const v = context.get(key)
      return v === undefined || Array.isArray(v)
    })
}

const literalVariables = (doc, s) => !is2012(doc) && variables(s).length > 0

const MAPPED = /^::ffff:([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)$/i

export const allowlist = [
  {
    name: 'unresolvable-variable-scope',
    reason:
      'Issue #5 (and docs/policy.md, "Policy variables") specify that a variable with no single ' +
      'value and no default makes its whole statement not match: an Allow does not allow and a ' +
      'Deny does not deny. iam-simulate scopes it to the one value: a Resource or condition value ' +
      'holding it matches nothing while the other values still can, and a NotResource entry of ' +
      'another service is skipped unresolved, so its NotResource holds.',
    applies: (c) => docs(c).some((d) => statementsOf(d).some((s) => unresolvable(c)(d, s))),
    strip: (c) => withoutStatements(c, unresolvable(c)),
  },
  {
    name: 'ipv4-mapped-source-ip',
    reason:
      'Gatehouse reads an IPv4-mapped IPv6 aws:SourceIp (::ffff:10.1.2.3, what a dual-stack ' +
      'socket reports for an IPv4 client) as the IPv4 address, so an IPv4 CIDR in a Deny still ' +
      'catches that client; iam-simulate compares it as IPv6. The case is decided again with the ' +
      'plain IPv4 address, on which both must agree.',
    applies: (c) => MAPPED.test(c.context['aws:SourceIp'] || ''),
    strip: (c) => ({ ...c, context: { ...c.context, 'aws:SourceIp': c.context['aws:SourceIp'].replace(MAPPED, '$1') } }),
  },
  {
    name: 'exponent-in-numbers',
    reason:
      'Gatehouse reads a Numeric* operand such as "1e2" as the decimal number it writes (100; ' +
      'docs/policy.md, "Conditions"); iam-simulate reads its leading digits (1). The case is ' +
      'decided again with the operand written out, on which both must agree.',
    applies: (c) => docs(c).some((d) => /"[0-9.]+e[0-9]+"/.test(JSON.stringify(d))),
    strip: (c) => {
      const expand = (d) => JSON.parse(JSON.stringify(d).replace(/"([0-9.]+)e([0-9]+)"/g, (_, m, e) => `"${Number(m) * 10 ** Number(e)}"`))
      return { ...c, identity: c.identity.map(expand), resourcePolicy: c.resourcePolicy ? expand(c.resourcePolicy) : null }
    },
  },
  {
    name: 'variables-under-2008-10-17',
    reason:
      'IAM reads ${...} as literal text in policies whose Version is 2008-10-17 or absent (AWS ' +
      'IAM docs, "Version" and "Policy variables"); Gatehouse does too. iam-simulate resolves ' +
      'variables whatever the Version.',
    applies: (c) => docs(c).some((d) => statementsOf(d).some((s) => literalVariables(d, s))),
    strip: (c) => withoutStatements(c, literalVariables),
  },
]
