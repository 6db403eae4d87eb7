// Default: accepted once a majority of active members voted for it; never rejected.
export function resolve(proposal, proposerId, votes, proposalId) {
  const inFavour = votes.filter((v) => v.vote === true).length;
  return inFavour > Math.floor(getActiveMemberCount() / 2) ? "Accepted" : "Open";
}
