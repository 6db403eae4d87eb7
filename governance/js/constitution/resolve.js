// Default: accepted once a majority of active members voted for it; never rejected.
function getActiveMemberCount() {
  let count = 0;
  ccf.kv["public:ccf.gov.members.info"].forEach((v) => {
    if (ccf.bufToJsonCompatible(v).status === "Active") count++;
  });
  return count;
}

export function resolve(proposal, proposerId, votes, proposalId) {
  const inFavour = votes.filter((v) => v.vote === true).length;
  return inFavour > Math.floor(getActiveMemberCount() / 2) ? "Accepted" : "Open";
}
