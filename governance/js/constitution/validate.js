export function validate(input) {
  let proposal;
  try {
    proposal = JSON.parse(input);
  } catch (e) {
    return { valid: false, description: `Proposal is not JSON: ${e.message}` };
  }
  if (proposal === null || !Array.isArray(proposal.actions)) {
    return { valid: false, description: "Proposal must be an object with an actions array" };
  }
  const errors = [];
  for (const [position, action] of proposal.actions.entries()) {
    const definition = actions.get(action.name);
    if (definition === undefined) {
      errors.push(`${action.name}: no such action`);
      continue;
    }
    try {
      definition.validate(action.args);  // as given: undefined when the action names none (CCF)
    } catch (e) {
      errors.push(`${action.name} at position ${position} failed validation: ${e.message}`);
    }
  }
  return errors.length > 0 ? { valid: false, description: errors.join(", ") } : { valid: true };
}
