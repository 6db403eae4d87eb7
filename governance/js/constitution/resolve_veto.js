// Veto: any vote against rejects; otherwise accepted once a majority of active members voted for it.
export function resolve(proposal, proposerId, votes, proposalId) {
  if (votes.some((v) => v.vote !== true)) return "Rejected";
  return votes.length > Math.floor(getActiveMemberCount() / 2) ? "Accepted" : "Open";
}
