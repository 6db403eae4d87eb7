// The default constitution's actions, behaving as CCF's samples/constitutions/default/actions.js documents them.
// Each action checks its arguments with a precise message (validate) and changes the KV or asks the node
// for an effect (apply). Extra files may add actions with actions.set(name, new Action(...)).

class Action {
  constructor(validate, apply) {
    this.validate = validate;
    this.apply = apply;
  }
}

function checkType(value, type, field) {
  const optional = type.endsWith("?");
  if (optional) {
    if (value === null || value === undefined) return;
    type = type.slice(0, -1);
  }
  if (type === "array") {
    if (!Array.isArray(value)) throw new Error(`${field} must be an array`);
  } else if (type === "integer") {
    if (!Number.isInteger(value)) throw new Error(`${field} must be an integer`);
  } else if (type === "object") {
    if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`${field} must be an object`);
  } else if (typeof value !== type) {
    throw new Error(`${field} must be of type ${type} but is of type ${typeof value}`);
  }
}

function checkEnum(value, members, field) {
  if (!members.includes(value)) throw new Error(`${field} must be one of ${members.join(", ")}`);
}

function checkBounds(value, low, high, field) {
  // CCF's wording, though both bounds are allowed
  if (low !== null && value < low) throw new Error(`${field} must be greater than ${low}`);
  if (high !== null && value > high) throw new Error(`${field} must be lower than ${high}`);
}

function checkLength(value, min, max, field) {
  if (min !== null && value.length < min) throw new Error(`${field} must be an array of minimum ${min} elements`);
  if (max !== null && value.length > max) throw new Error(`${field} must be an array of maximum ${max} elements`);
}

// The rekey and the shares refresh refuse any argument, "args": {} included, as CCF's default constitution does
// (its other actions without arguments ignore what they are given).
function checkNone(args) {
  if (args !== null && args !== undefined) {
    throw new Error(`Proposal does not accept any argument, found "${args}"`);
  }
}

function checkEntityId(value, field) {
  checkType(value, "string", field);
  if (value.length !== 64) throw new Error(`${field} must contain exactly 64 characters`);
  if (!/^[a-fA-F0-9]*$/.test(value)) throw new Error(`${field} contains non-hexadecimal character`);
}

function checkX509CertBundle(value, field) {
  checkType(value, "string", field);
  if (!ccf.crypto.isValidX509CertBundle(value)) {
    throw new Error(`${field} must be a valid X509 certificate (bundle) in PEM format`);
  }
}

function checkRsaPublicKey(value, field) {
  checkType(value, "string", field);
  if (!ccf.crypto.isValidRsaPublicKeyPem(value)) throw new Error(`${field} must be an RSA public key in PEM format`);
}

function checkRecoveryThreshold(threshold) {
  const service = getServiceInfo();
  if (service !== undefined && service.status === "WaitingForRecoveryShares") {
    throw new Error("Cannot set recovery threshold if service is WaitingForRecoveryShares");
  }
  if (service === undefined || service.status !== "Open") return;
  const participants = getActiveRecoveryMembersCount();
  const owners = getActiveRecoveryMembersCount("Owner");
  if (participants === 0 && owners > 0) {
    if (threshold > 1) {
      throw new Error(`Cannot set recovery threshold to ${threshold} when only active consortium members ` +
        `(${owners}) that are of type recovery owner exist`);
    }
  } else if (threshold > participants) {
    throw new Error(`Cannot set recovery threshold to ${threshold}: only ${participants} active recovery members`);
  }
}

function checkUtcTime(value, field) {
  checkType(value, "string", field);
  if (!/^\d{12}Z$/.test(value)) throw new Error(`${field} must be an ASN.1 UTCTime (YYMMDDhhmmssZ)`);
}

function checkJwks(value, field) {
  checkType(value, "object", field);
  checkType(value.keys, "array", `${field}.keys`);
  for (const [i, jwk] of value.keys.entries()) {
    checkType(jwk, "object", `${field}.keys[${i}]`);
    checkType(jwk.kid, "string", `${field}.keys[${i}].kid`);
    checkType(jwk.kty, "string", `${field}.keys[${i}].kty`);
    if (jwk.x5c !== undefined) {
      checkType(jwk.x5c, "array", `${field}.keys[${i}].x5c`);
      checkLength(jwk.x5c, 1, null, `${field}.keys[${i}].x5c`);
    } else if (jwk.kty === "RSA") {
      checkType(jwk.n, "string", `${field}.keys[${i}].n`);
      checkType(jwk.e, "string", `${field}.keys[${i}].e`);
    } else if (jwk.kty === "EC") {
      checkType(jwk.crv, "string", `${field}.keys[${i}].crv`);
      checkType(jwk.x, "string", `${field}.keys[${i}].x`);
      checkType(jwk.y, "string", `${field}.keys[${i}].y`);
    } else {
      throw new Error(`${field}.keys[${i}] must be an RSA or EC key, or carry x5c`);
    }
  }
}

function getSingletonKvKey() {
  return new ArrayBuffer(8);
}

function getJson(map, key) {
  const value = ccf.kv[map].get(typeof key === "string" ? ccf.strToBuf(key) : key);
  return value === undefined ? undefined : ccf.bufToJsonCompatible(value);
}

function setJson(map, key, value) {
  ccf.kv[map].set(typeof key === "string" ? ccf.strToBuf(key) : key, ccf.jsonCompatibleToBuf(value));
}

function getServiceInfo() {
  return getJson("public:ccf.gov.service.info", getSingletonKvKey());
}

function getServiceConfig() {
  return getJson("public:ccf.gov.service.config", getSingletonKvKey()) || {};
}

function updateServiceConfig(changes) {
  setJson("public:ccf.gov.service.config", getSingletonKvKey(), Object.assign(getServiceConfig(), changes));
}

function getActiveMemberCount() {
  let count = 0;
  ccf.kv["public:ccf.gov.members.info"].forEach((v) => {
    if (ccf.bufToJsonCompatible(v).status === "Active") count++;
  });
  return count;
}

// Active members with an encryption key and the recovery role `role`: "Participant" (a key's default role, each
// holding one share of the threshold) or "Owner" (each holding the whole key).
function getActiveRecoveryMembersCount(role = "Participant") {
  let count = 0;
  ccf.kv["public:ccf.gov.members.encryption_public_keys"].forEach((_, k) => {
    const info = getJson("public:ccf.gov.members.info", k);
    if (info !== undefined && info.status === "Active" && (info.recovery_role || "Participant") === role) {
      count++;
    }
  });
  return count;
}

function isRecoveryMember(memberId) {
  return ccf.kv["public:ccf.gov.members.encryption_public_keys"].has(ccf.strToBuf(memberId));
}

function invalidateOtherOpenProposals(proposalIdToRetain) {
  const infos = ccf.kv["public:ccf.gov.proposals_info"];
  const updates = [];
  infos.forEach((v, k) => {
    const proposalId = ccf.bufToStr(k);
    const info = ccf.bufToJsonCompatible(v);
    if (proposalId !== proposalIdToRetain && info.state === "Open") {
      info.state = "Dropped";
      updates.push([k, info]);
    }
  });
  for (const [k, info] of updates) infos.set(k, ccf.jsonCompatibleToBuf(info));
}

function currentSignatureRoot() {
  const sig = getJson("public:ccf.internal.signatures", getSingletonKvKey());
  return sig === undefined ? "" : sig.root;
}

function nodeCertificateValidityDays(requested) {
  const max = getServiceConfig().maximum_node_certificate_validity_days || 365;
  if (requested === undefined || requested === null) return max;
  checkBounds(requested, 1, max, "validity_period_days");
  return requested;
}

function checkNodeExists(nodeId) {
  if (getJson("public:ccf.gov.nodes.info", nodeId) === undefined) throw new Error(`No such node: ${nodeId}`);
}

function endorseNode(nodeId, validFrom, validityPeriodDays) {
  const info = getJson("public:ccf.gov.nodes.info", nodeId);
  const csr = info.certificate_signing_request;
  if (csr === undefined) throw new Error(`Node ${nodeId} has no certificate signing request`);
  const cert = ccf.network.generateEndorsedCertificate(csr, validFrom, nodeCertificateValidityDays(validityPeriodDays));
  ccf.kv["public:ccf.gov.nodes.endorsed_certificates"].set(ccf.strToBuf(nodeId), ccf.strToBuf(cert));
}

const actions = new Map([
  ["set_constitution", new Action(
    function (args) { checkType(args.constitution, "string", "constitution"); },
    function (args, proposalId) {
      setJson("public:ccf.gov.constitution", getSingletonKvKey(), args.constitution);
      invalidateOtherOpenProposals(proposalId);
    })],
  ["set_member", new Action(
    function (args) {
      checkX509CertBundle(args.cert, "cert");
      if (args.encryption_pub_key !== undefined && args.encryption_pub_key !== null) {
        checkRsaPublicKey(args.encryption_pub_key, "encryption_pub_key");
      }
      checkType(args.recovery_role, "string?", "recovery_role");
      if (args.recovery_role !== undefined && args.recovery_role !== null) {
        checkEnum(args.recovery_role, ["NonParticipant", "Participant", "Owner"], "recovery_role");
        const hasKey = args.encryption_pub_key !== undefined && args.encryption_pub_key !== null;
        if (args.recovery_role !== "NonParticipant" && !hasKey) {
          throw new Error("A recovery member needs an encryption_pub_key");
        }
        if (args.recovery_role === "NonParticipant" && hasKey) {  // (as CCF refuses it)
          throw new Error("A member with an encryption_pub_key has the recovery role Participant or Owner");
        }
      }
    },
    function (args) {
      const memberId = ccf.pemToId(args.cert);
      ccf.kv["public:ccf.gov.members.certs"].set(ccf.strToBuf(memberId), ccf.strToBuf(args.cert));
      const hasKey = args.encryption_pub_key !== undefined && args.encryption_pub_key !== null;
      if (hasKey) {
        ccf.kv["public:ccf.gov.members.encryption_public_keys"].set(ccf.strToBuf(memberId),
          ccf.strToBuf(args.encryption_pub_key));
      } else {  // re-proposed without a key: it is no longer a recovery member
        ccf.kv["public:ccf.gov.members.encryption_public_keys"].delete(ccf.strToBuf(memberId));
      }
      const info = { status: "Accepted" };
      if (args.member_data !== undefined) info.member_data = args.member_data;
      if (args.recovery_role !== undefined && args.recovery_role !== null) info.recovery_role = args.recovery_role;
      else if (hasKey) info.recovery_role = "Participant";
      setJson("public:ccf.gov.members.info", memberId, info);
      setJson("public:ccf.gov.members.acks", memberId, { state_digest: currentSignatureRoot() });
    })],
  ["remove_member", new Action(
    function (args) { checkEntityId(args.member_id, "member_id"); },
    function (args) {
      const memberId = args.member_id;
      const info = getJson("public:ccf.gov.members.info", memberId);
      if (info === undefined) return; // idempotent
      const wasActiveRecovery = info.status === "Active" && isRecoveryMember(memberId);
      if (wasActiveRecovery) {
        // what is left must still recover the service (CCF's rules): `threshold` participants, or an owner with a
        // threshold of 1
        const threshold = getServiceConfig().recovery_threshold || 1;
        const participants = getActiveRecoveryMembersCount();
        const owners = getActiveRecoveryMembersCount("Owner");
        const role = info.recovery_role || "Participant";
        if (role === "Owner") {
          if (owners - 1 === 0 && participants === 0) {
            throw new Error(`Cannot remove the last active recovery owner: no active recovery participant ` +
              `would be left for the recovery threshold (${threshold})`);
          }
        } else if (role === "Participant" && !(participants - 1 === 0 && owners > 0 && threshold === 1) &&
                   participants - 1 < threshold) {
          throw new Error(`Number of active recovery members (${participants - 1}) would be ` +
            `less than recovery threshold (${threshold})`);
        }
      }
      const key = ccf.strToBuf(memberId);
      for (const map of ["members.certs", "members.info", "members.encryption_public_keys", "members.acks",
                         "cose_history"]) {
        ccf.kv[`public:ccf.gov.${map}`].delete(key);
      }
      if (wasActiveRecovery) ccf.node.triggerLedgerRekey();
    })],
  ["set_member_data", new Action(
    function (args) { checkEntityId(args.member_id, "member_id"); },
    function (args) {
      const info = getJson("public:ccf.gov.members.info", args.member_id);
      if (info === undefined) throw new Error(`Member ${args.member_id} does not exist`);
      info.member_data = args.member_data;
      setJson("public:ccf.gov.members.info", args.member_id, info);
    })],
  // Confidential inference (app.inference): members approve a model at the digest uploaded, or revoke it.
  ["approve_model", new Action(
    function (args) {
      checkType(args.name, "string", "name");
      if (!/^[A-Za-z0-9._-]{1,128}$/.test(args.name)) {
        throw new Error("name must be 1-128 letters, digits, '-', '_' or '.'");
      }
      checkType(args.digest, "string", "digest");
      if (!/^[0-9a-f]{64}$/.test(args.digest)) {
        throw new Error("digest must be the model's SHA-256 as 64 lowercase hex digits");
      }
    },
    function (args) { setJson("public:ccf.gov.models.approved", args.name, { digest: args.digest }); })],
  ["revoke_model", new Action(
    function (args) { checkType(args.name, "string", "name"); },
    function (args) {
      if (!ccf.kv["public:ccf.gov.models.approved"].has(ccf.strToBuf(args.name))) {
        throw new Error(`Model ${args.name} is not approved`);
      }
      ccf.kv["public:ccf.gov.models.approved"].delete(ccf.strToBuf(args.name));
    })],
  ["set_user", new Action(
    function (args) { checkX509CertBundle(args.cert, "cert"); },
    function (args) {
      const userId = ccf.pemToId(args.cert);
      ccf.kv["public:ccf.gov.users.certs"].set(ccf.strToBuf(userId), ccf.strToBuf(args.cert));
      if (args.user_data !== undefined && args.user_data !== null) {
        setJson("public:ccf.gov.users.info", userId, { user_data: args.user_data });
      } else {
        ccf.kv["public:ccf.gov.users.info"].delete(ccf.strToBuf(userId));
      }
    })],
  ["remove_user", new Action(
    function (args) { checkEntityId(args.user_id, "user_id"); },
    function (args) {
      ccf.kv["public:ccf.gov.users.certs"].delete(ccf.strToBuf(args.user_id));
      ccf.kv["public:ccf.gov.users.info"].delete(ccf.strToBuf(args.user_id));
    })],
  ["set_user_data", new Action(
    function (args) { checkEntityId(args.user_id, "user_id"); },
    function (args) {
      if (!ccf.kv["public:ccf.gov.users.certs"].has(ccf.strToBuf(args.user_id))) {
        throw new Error(`User ${args.user_id} does not exist`);
      }
      if (args.user_data !== undefined && args.user_data !== null) {
        setJson("public:ccf.gov.users.info", args.user_id, { user_data: args.user_data });
      } else {
        ccf.kv["public:ccf.gov.users.info"].delete(ccf.strToBuf(args.user_id));
      }
    })],
  ["set_recovery_threshold", new Action(
    function (args) {
      checkType(args.recovery_threshold, "integer", "recovery_threshold");
      checkBounds(args.recovery_threshold, 1, 254, "recovery_threshold");
    },
    function (args) {
      checkRecoveryThreshold(args.recovery_threshold);
      const service = getServiceInfo();
      if (getServiceConfig().recovery_threshold === args.recovery_threshold) return;
      updateServiceConfig({ recovery_threshold: args.recovery_threshold });
      if (service !== undefined && service.status === "Open") ccf.node.triggerRecoverySharesRefresh();
    })],
  ["trigger_recovery_shares_refresh", new Action(
    function (args) { checkNone(args); }, function (args) { ccf.node.triggerRecoverySharesRefresh(); })],
  ["trigger_ledger_rekey", new Action(function (args) { checkNone(args); },
    function (args) { ccf.node.triggerLedgerRekey(); })],
  ["trigger_ledger_chunk", new Action(function (args) {},
    function (args) { ccf.node.triggerLedgerChunk(); })],
  ["trigger_snapshot", new Action(function (args) {}, function (args) { ccf.node.triggerSnapshot(); })],
  ["transition_service_to_open", new Action(
    function (args) {
      checkX509CertBundle(args.next_service_identity, "next_service_identity");
      if (args.previous_service_identity !== undefined) {
        checkX509CertBundle(args.previous_service_identity, "previous_service_identity");
      }
    },
    function (args) {
      const service = getServiceInfo();
      if (service === undefined) throw new Error("No service to open");
      const recovering = service.status === "Recovering" || service.status === "WaitingForRecoveryShares";
      if (recovering && args.previous_service_identity === undefined) {
        throw new Error("Opening a recovering service requires previous_service_identity");
      }
      if (!recovering && args.previous_service_identity !== undefined) {
        throw new Error("previous_service_identity must be absent when opening a new service");
      }
      if (args.next_service_identity.trim() !== String(service.cert).trim()) {
        throw new Error("next_service_identity does not match the current service identity");
      }
      ccf.node.transitionServiceToOpen(
        args.previous_service_identity === undefined ? undefined : ccf.strToBuf(args.previous_service_identity),
        ccf.strToBuf(args.next_service_identity));
    })],
  ["transition_node_to_trusted", new Action(
    function (args) {
      checkEntityId(args.node_id, "node_id");
      checkUtcTime(args.valid_from, "valid_from");
      checkType(args.validity_period_days, "integer?", "validity_period_days");
      if (args.validity_period_days !== undefined) checkBounds(args.validity_period_days, 1, null, "validity_period_days");
    },
    function (args) {
      checkNodeExists(args.node_id);
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      if (info.status === "Pending") {
        info.status = "Trusted";
        info.ledger_secret_seqno = ccf.network.getLatestLedgerSecretSeqno();
        setJson("public:ccf.gov.nodes.info", args.node_id, info);
        endorseNode(args.node_id, args.valid_from, args.validity_period_days);
      }
    })],
  ["remove_node", new Action(
    function (args) { checkEntityId(args.node_id, "node_id"); },
    function (args) {
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      if (info === undefined) return;
      if (info.status === "Pending") {
        ccf.kv["public:ccf.gov.nodes.info"].delete(ccf.strToBuf(args.node_id));
        ccf.kv["public:ccf.gov.nodes.endorsed_certificates"].delete(ccf.strToBuf(args.node_id));
      } else {
        info.status = "Retired";
        setJson("public:ccf.gov.nodes.info", args.node_id, info);
      }
    })],
  ["set_node_data", new Action(
    function (args) { checkEntityId(args.node_id, "node_id"); },
    function (args) {
      checkNodeExists(args.node_id);
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      info.node_data = args.node_data;
      setJson("public:ccf.gov.nodes.info", args.node_id, info);
    })],
  ["set_node_certificate_validity", new Action(
    function (args) {
      checkEntityId(args.node_id, "node_id");
      checkUtcTime(args.valid_from, "valid_from");
      checkType(args.validity_period_days, "integer?", "validity_period_days");
    },
    function (args) {
      checkNodeExists(args.node_id);
      if (getJson("public:ccf.gov.nodes.info", args.node_id).status !== "Trusted") {
        throw new Error(`Node ${args.node_id} is not trusted`);
      }
      endorseNode(args.node_id, args.valid_from, args.validity_period_days);
    })],
  ["set_all_nodes_certificate_validity", new Action(
    function (args) {
      checkUtcTime(args.valid_from, "valid_from");
      checkType(args.validity_period_days, "integer?", "validity_period_days");
    },
    function (args) {
      const trusted = [];
      ccf.kv["public:ccf.gov.nodes.info"].forEach((v, k) => {
        if (ccf.bufToJsonCompatible(v).status === "Trusted") trusted.push(ccf.bufToStr(k));
      });
      for (const nodeId of trusted) endorseNode(nodeId, args.valid_from, args.validity_period_days);
    })],
  ["set_service_certificate_validity", new Action(
    function (args) {
      checkUtcTime(args.valid_from, "valid_from");
      checkType(args.validity_period_days, "integer?", "validity_period_days");
    },
    function (args) {
      const max = getServiceConfig().maximum_service_certificate_validity_days || 365;
      const days = args.validity_period_days === undefined ? max : args.validity_period_days;
      checkBounds(days, 1, max, "validity_period_days");
      const service = getServiceInfo();
      service.cert = ccf.network.generateNetworkCertificate(args.valid_from, days);
      setJson("public:ccf.gov.service.info", getSingletonKvKey(), service);
    })],
  ["set_service_configuration", new Action(
    function (args) {
      for (const key of Object.keys(args)) {
        if (!["reconfiguration_type", "recovery_threshold", "recent_cose_proposals_window_size"].includes(key)) {
          throw new Error(`Cannot change ${key} via set_service_configuration`);
        }
      }
      checkType(args.reconfiguration_type, "string?", "reconfiguration_type");
      if (args.reconfiguration_type !== undefined) {
        checkEnum(args.reconfiguration_type, ["OneTransaction", "TwoTransaction"], "reconfiguration_type");
      }
      checkType(args.recovery_threshold, "integer?", "recovery_threshold");
      if (args.recovery_threshold !== undefined) checkBounds(args.recovery_threshold, 1, 254, "recovery_threshold");
      checkType(args.recent_cose_proposals_window_size, "integer?", "recent_cose_proposals_window_size");
      if (args.recent_cose_proposals_window_size !== undefined) {
        checkBounds(args.recent_cose_proposals_window_size, 1, 10000, "recent_cose_proposals_window_size");
      }
    },
    function (args) {
      const changes = {};
      for (const key of Object.keys(args)) changes[key] = args[key];
      const thresholdChanged = args.recovery_threshold !== undefined &&
        args.recovery_threshold !== getServiceConfig().recovery_threshold;
      if (args.recovery_threshold !== undefined) checkRecoveryThreshold(args.recovery_threshold);
      updateServiceConfig(changes);
      const service = getServiceInfo();
      if (thresholdChanged && service !== undefined && service.status === "Open") {
        ccf.node.triggerRecoverySharesRefresh();
      }
    })],
  // A JavaScript application bundle: {metadata: {endpoints: {"/path": {"<method>": info}}}, modules: [{name,
  // module}]}. Modules are kept under "/" + name, endpoints under "<METHOD> /path" with js_module made absolute.
  ["set_js_app", new Action(
    function (args) {
      const bundle = args.bundle;
      checkType(bundle, "object", "bundle");
      let prefix = "bundle.modules";
      checkType(bundle.modules, "array", prefix);
      const modules = new Set();
      for (const [i, module] of bundle.modules.entries()) {
        checkType(module, "object", `${prefix}[${i}]`);
        checkType(module.name, "string", `${prefix}[${i}].name`);
        checkType(module.module, "string", `${prefix}[${i}].module`);
        modules.add(module.name);
      }
      prefix = "bundle.metadata";
      checkType(bundle.metadata, "object", prefix);
      checkType(bundle.metadata.endpoints, "object", `${prefix}.endpoints`);
      for (const [url, endpoint] of Object.entries(bundle.metadata.endpoints)) {
        checkType(endpoint, "object", `${prefix}.endpoints["${url}"]`);
        for (const [method, info] of Object.entries(endpoint)) {
          const field = `${prefix}.endpoints["${url}"]["${method}"]`;
          checkType(info, "object", field);
          checkType(info.js_module, "string", `${field}.js_module`);
          checkType(info.js_function, "string", `${field}.js_function`);
          checkEnum(info.mode, ["readwrite", "readonly", "historical"], `${field}.mode`);
          checkEnum(info.forwarding_required, ["sometimes", "always", "never"], `${field}.forwarding_required`);
          checkType(info.openapi, "object?", `${field}.openapi`);
          checkType(info.openapi_hidden, "boolean?", `${field}.openapi_hidden`);
          checkType(info.authn_policies, "array", `${field}.authn_policies`);
          for (const [i, policy] of info.authn_policies.entries()) {
            if (typeof policy === "object" && policy !== null && Array.isArray(policy.all_of)) {
              for (const [j, part] of policy.all_of.entries()) {
                checkType(part, "string", `${field}.authn_policies[${i}].all_of[${j}]`);
              }
            } else {
              checkType(policy, "string", `${field}.authn_policies[${i}]`);
            }
          }
          if (!modules.has(info.js_module)) {
            throw new Error(`module '${info.js_module}' not found in bundle`);
          }
        }
      }
      checkType(args.disable_bytecode_cache, "boolean?", "disable_bytecode_cache");
    },
    function (args) {
      const modulesMap = ccf.kv["public:ccf.gov.modules"];
      const endpointsMap = ccf.kv["public:ccf.gov.endpoints"];
      modulesMap.clear();
      endpointsMap.clear();
      for (const module of args.bundle.modules) {
        modulesMap.set(ccf.strToBuf("/" + module.name), ccf.strToBuf(module.module));
      }
      if (args.disable_bytecode_cache) {
        ccf.kv["public:ccf.gov.modules_quickjs_bytecode"].clear();
        ccf.kv["public:ccf.gov.modules_quickjs_version"].clear();
      } else {
        ccf.refreshAppBytecodeCache();
      }
      for (const [url, endpoint] of Object.entries(args.bundle.metadata.endpoints)) {
        for (const [method, info] of Object.entries(endpoint)) {
          const stored = Object.assign({}, info, { js_module: "/" + info.js_module });
          setJson("public:ccf.gov.endpoints", `${method.toUpperCase()} ${url}`, stored);
        }
      }
      setJson("public:ccf.gov.interpreter.flush", getSingletonKvKey(), true);
    })],
  ["remove_js_app", new Action(
    function (args) {},
    function (args) {
      ccf.kv["public:ccf.gov.modules"].clear();
      ccf.kv["public:ccf.gov.endpoints"].clear();
      ccf.kv["public:ccf.gov.modules_quickjs_bytecode"].clear();
      ccf.kv["public:ccf.gov.modules_quickjs_version"].clear();
      setJson("public:ccf.gov.interpreter.flush", getSingletonKvKey(), true);
    })],
  ["refresh_js_app_bytecode_cache", new Action(
    function (args) {},
    function (args) { ccf.refreshAppBytecodeCache(); })],
  ["set_js_runtime_options", new Action(
    function (args) {
      checkType(args.max_heap_bytes, "integer", "max_heap_bytes");
      checkType(args.max_stack_bytes, "integer", "max_stack_bytes");
      checkType(args.max_execution_time_ms, "integer", "max_execution_time_ms");
      checkBounds(args.max_heap_bytes, 1, 2147483648, "max_heap_bytes");
      checkBounds(args.max_stack_bytes, 1, 67108864, "max_stack_bytes");
      checkBounds(args.max_execution_time_ms, 1, 600000, "max_execution_time_ms");
      checkType(args.log_exception_details, "boolean?", "log_exception_details");
      checkType(args.return_exception_details, "boolean?", "return_exception_details");
      checkType(args.max_cached_interpreters, "integer?", "max_cached_interpreters");
    },
    function (args) { setJson("public:ccf.gov.js_runtime_options", getSingletonKvKey(), args); })],
  ["set_ca_cert_bundle", new Action(
    function (args) {
      checkType(args.name, "string", "name");
      checkX509CertBundle(args.cert_bundle, "cert_bundle");
    },
    function (args) { setJson("public:ccf.gov.tls.ca_cert_bundles", args.name, args.cert_bundle); })],
  ["remove_ca_cert_bundle", new Action(
    function (args) { checkType(args.name, "string", "name"); },
    function (args) {
      let used = null;
      ccf.kv["public:ccf.gov.jwt.issuers"].forEach((v, k) => {
        if (ccf.bufToJsonCompatible(v).ca_cert_bundle_name === args.name) used = ccf.bufToStr(k);
      });
      if (used !== null) throw new Error(`CA bundle ${args.name} is still used by JWT issuer ${used}`);
      ccf.kv["public:ccf.gov.tls.ca_cert_bundles"].delete(ccf.strToBuf(args.name));
    })],
  ["set_jwt_issuer", new Action(
    function (args) {
      checkType(args.issuer, "string", "issuer");
      checkType(args.auto_refresh, "boolean?", "auto_refresh");
      checkType(args.ca_cert_bundle_name, "string?", "ca_cert_bundle_name");
      if (args.auto_refresh) {
        if (!args.issuer.startsWith("https://")) throw new Error("issuer must be a URL starting with https:// if auto_refresh is true");
        if (args.ca_cert_bundle_name === undefined) throw new Error("ca_cert_bundle_name is missing but required if auto_refresh is true");
      }
      if (args.jwks !== undefined) checkJwks(args.jwks, "jwks");
    },
    function (args) {
      if (args.ca_cert_bundle_name !== undefined &&
          !ccf.kv["public:ccf.gov.tls.ca_cert_bundles"].has(ccf.strToBuf(args.ca_cert_bundle_name))) {
        throw new Error(`No CA cert bundle named ${args.ca_cert_bundle_name}`);
      }
      const metadata = { auto_refresh: args.auto_refresh === true };
      if (args.ca_cert_bundle_name !== undefined) metadata.ca_cert_bundle_name = args.ca_cert_bundle_name;
      setJson("public:ccf.gov.jwt.issuers", args.issuer, metadata);
      if (args.jwks !== undefined) ccf.setJwtPublicSigningKeys(args.issuer, metadata, args.jwks);
    })],
  ["set_jwt_public_signing_keys", new Action(
    function (args) {
      checkType(args.issuer, "string", "issuer");
      checkJwks(args.jwks, "jwks");
    },
    function (args) {
      if (!ccf.kv["public:ccf.gov.jwt.issuers"].has(ccf.strToBuf(args.issuer))) {
        throw new Error(`${args.issuer} is not a registered JWT issuer`);
      }
      ccf.setJwtPublicSigningKeys(args.issuer, {}, args.jwks);
    })],
  ["remove_jwt_issuer", new Action(
    function (args) { checkType(args.issuer, "string", "issuer"); },
    function (args) {
      ccf.kv["public:ccf.gov.jwt.issuers"].delete(ccf.strToBuf(args.issuer));
      ccf.removeJwtPublicSigningKeys(args.issuer);
    })],
  ["add_virtual_measurement", new Action(
    function (args) { checkType(args.measurement, "string", "measurement"); },
    function (args, proposalId) {
      setJson("public:ccf.gov.nodes.virtual.measurements", args.measurement, "AllowedToJoin");
      invalidateOtherOpenProposals(proposalId);
    })],
  ["remove_virtual_measurement", new Action(
    function (args) { checkType(args.measurement, "string", "measurement"); },
    function (args) { ccf.kv["public:ccf.gov.nodes.virtual.measurements"].delete(ccf.strToBuf(args.measurement)); })],
  ["add_virtual_host_data", new Action(
    function (args) {
      checkType(args.host_data, "string", "host_data");
      checkType(args.metadata, "string?", "metadata");
    },
    function (args, proposalId) {
      setJson("public:ccf.gov.nodes.virtual.host_data", args.host_data, args.metadata === undefined ? "" : args.metadata);
      invalidateOtherOpenProposals(proposalId);
    })],
  ["remove_virtual_host_data", new Action(
    function (args) { checkType(args.host_data, "string", "host_data"); },
    function (args) { ccf.kv["public:ccf.gov.nodes.virtual.host_data"].delete(ccf.strToBuf(args.host_data)); })],
  ["assert_service_identity", new Action(
    function (args) {
      checkX509CertBundle(args.service_identity, "service_identity");
      const service = getServiceInfo();
      if (service === undefined || String(service.cert).trim() !== args.service_identity.trim()) {
        throw new Error("service identity assertion failed");
      }
    },
    function (args) {})],
]);
