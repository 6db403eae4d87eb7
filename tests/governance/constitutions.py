"""Constitutions written against CCF's documented API (the `ccf` globals, validate/resolve/apply), for tests.

`CCF_STYLE` follows the structure of CCF's documented sample constitution: an `actions` Map of `Action`
objects (argument checks and an apply), `validate` that parses the proposal and checks each action,
`resolve` counting Active members' votes in `public:ccf.gov.members.info`, and `apply` running the actions.
"""

from __future__ import annotations

CCF_STYLE = r"""
class Action {
  constructor(validate, apply) {
    this.validate = validate;
    this.apply = apply;
  }
}

function checkType(value, type, field) {
  if (typeof value !== type) {
    throw new Error(`${field} must be of type ${type} but is of type ${typeof value}`);
  }
}

const actions = new Map([
  ["set_greeting", new Action(
    function (args) { checkType(args.greeting, "string", "greeting"); },
    function (args, proposalId) {
      ccf.kv["public:app.greetings"].set(ccf.strToBuf("greeting"), ccf.jsonCompatibleToBuf(args.greeting));
      ccf.kv["public:app.greetings"].set(ccf.strToBuf("by_proposal"), ccf.strToBuf(proposalId));
    })],
  ["trigger_ledger_rekey", new Action(function (args) {}, function (args) { ccf.node.triggerLedgerRekey(); })],
  ["always_throws_on_apply", new Action(function (args) {}, function (args) { throw new Error("apply broke"); })],
]);

export function validate(input) {
  let proposal = JSON.parse(input);
  let errors = [];
  for (const [i, action] of proposal["actions"].entries()) {
    const definition = actions.get(action.name);
    if (definition === undefined) {
      errors.push(`${action.name}: no such action`);
    } else {
      try {
        definition.validate(action.args);
      } catch (e) {
        errors.push(`${action.name} at position ${i} failed validation: ${e}\n${e.stack}`);
      }
    }
  }
  return errors.length > 0 ? { valid: false, description: errors.join(", ") } : { valid: true };
}

function getActiveMemberCount() {
  let activeMemberCount = 0;
  ccf.kv["public:ccf.gov.members.info"].forEach((v) => {
    const info = ccf.bufToJsonCompatible(v);
    if (info.status === "Active") {
      activeMemberCount++;
    }
  });
  return activeMemberCount;
}

export function resolve(proposal, proposerId, votes, proposalId) {
  const memberVoteCount = votes.filter((v) => v.vote).length;
  if (memberVoteCount > Math.floor(getActiveMemberCount() / 2)) {
    return "Accepted";
  }
  return "Open";
}

export function apply(proposal, proposalId) {
  const proposed = JSON.parse(proposal);
  for (const action of proposed["actions"]) {
    actions.get(action.name).apply(action.args, proposalId);
  }
}
"""

REJECTING = r"""
export function validate(input) { return { valid: true }; }
export function resolve(proposal, proposerId, votes) {
  return votes.some((v) => !v.vote) ? "Rejected" : (votes.length >= 2 ? "Accepted" : "Open");
}
export function apply(proposal) { ccf.kv["public:app.greetings"].set(ccf.strToBuf("applied"), ccf.strToBuf("yes")); }
"""

THROWING = r"""
export function validate(input) { return { valid: true }; }
export function resolve(proposal, proposerId, votes) { throw new Error("resolve is broken"); }
export function apply(proposal) {}
"""

BAD_STATUS = r"""
export function validate(input) { return { valid: true }; }
export function resolve() { return "Maybe"; }
export function apply(proposal) {}
"""

VALIDATE_THROWS = r"""
export function validate(input) { throw new Error("validate is broken"); }
export function resolve() { return "Open"; }
export function apply(proposal) {}
"""
