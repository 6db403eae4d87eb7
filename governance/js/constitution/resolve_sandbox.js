// Sandbox: every proposal is accepted at once (for development only).
export function resolve(proposal, proposerId, votes, proposalId) {
  return "Accepted";
}
