export function apply(proposal, proposalId) {
  const parsed = JSON.parse(proposal);
  for (const action of parsed.actions) {
    actions.get(action.name).apply(action.args, proposalId);
  }
}
