"""A node's part in a disaster recovery, from the public ledger to the service Open again (as CCF does it).

A node of a recovering service holds its own new ledger secret (from the service's first seqno) but none of its
predecessor's; the predecessor's ledger is read public-only. Phases (`node_state` as CCF names them):
- `PartOfPublicNetwork`: serving `/gov` and `/node`; members open the service with the previous identity, the
  status becomes `WaitingForRecoveryShares`, and recovery members submit their shares.
- At the threshold (on the primary, inside the request that reached it) the shares rebuild the wrapping key,
  which unwraps the predecessor's latest secret; the chain of secret records gives the earlier ones. Wrong
  shares fail there (AES-GCM authenticates the secret) and are cleared. The secrets go to every trusted node
  in the same transaction, encrypted to its key, as CCF's LedgerSecretsBroadcast does.
- `ReadingPrivateLedger`: each node decrypts its predecessor's private entries from its own files (a large
  ledger in worker processes its host forks, one chunk a job; otherwise, and whenever the workers fail, in
  bounded steps on its event loop so that consensus keeps time), then hands the state to its store.
- `PartOfNetwork`: once its own replay is done, the primary writes the opening: status Open, the secret chain
  continued (`next_version` = the new secret's start), new shares for the new secret.

A node restarted midway resumes from its sealed state: with only its own secret it is back in the public phase;
with its predecessor's secrets too (sealed as soon as they arrived) its replay already decrypted everything.
"""

from __future__ import annotations

import enum
import gc
import time
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from loguru import logger

from governance.recovery_shares import (
    RecoverySharesError,
    clear_submitted_shares,
    deal_shares,
    recover_latest_secret,
)
from ledger.endorsements import write_opening_endorsement
from ledger.entry import decode_entry
from ledger.errors import LedgerError, LedgerSecretError, RecoveryError
from ledger.files import LedgerFiles
from ledger.identity import load_cert, spki_der
from ledger.kv import LastWrites, Tx
from ledger.parallel_replay import merge_private, private_replay_jobs
from ledger.recovery import PrivateReplay, restore_secrets
from ledger.secrets import LedgerSecret, node_secrets_entries, recovery_secret_record
from ledger.service_ledger import ServiceLedger
from ledger.snapshots import summarise_snapshot
from ledger.tables import (
    HISTORICAL_SECRETS,
    NODE_SECRETS,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SINGLETON_KEY,
    dump_json,
)

REPLAY_STEP = 5000  # entries decrypted per turn of the event loop
# Run jobs in other processes, then call back (on the node's loop) with their results in order, or an error
# (jobs, done, a bound on each job's pickled result): `HostCalls.run_in_workers`
RunInWorkers = Callable[[list[Callable[[], Any]], Callable[[list[Any] | BaseException], None], list[int] | None],
                        None]


class Phase(enum.Enum):
    PUBLIC = "PartOfPublicNetwork"
    PRIVATE = "ReadingPrivateLedger"
    DONE = "PartOfNetwork"


def follows_recovery(ledger: ServiceLedger, *, predecessor_secrets_arrived: bool = False) -> bool:
    """Whether this node has a recovery to follow: its service is recovering, or it is Open and its predecessor's
    secrets reached this node only now, in a replicated entry. That entry is then the opening, which hands them over
    again: an election rolled back the transaction that first did before this node held it, so this node read the
    predecessor's entries public-only and has their private part still to read. (Removals the recovered service
    made before the opening reached this node are held only from then on; the only map it writes then that the
    predecessor's private state could hold is the submitted shares, which the opening clears.)"""
    status = _service_status(ledger)
    return status in _RECOVERING or (predecessor_secrets_arrived and status == "Open")


_RECOVERING = ("Recovering", "WaitingForRecoveryShares")


def _service_status(ledger: ServiceLedger) -> object:
    info = ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    return info.get("status") if isinstance(info, dict) else None


def recovering_status(ledger: ServiceLedger) -> str | None:
    status = _service_status(ledger)
    return str(status) if status in _RECOVERING else None


def create_seqno(ledger: ServiceLedger) -> int:
    """The first seqno of the current service (from `current_service_create_txid`)."""
    info = ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    txid = str(info.get("current_service_create_txid", "")) if isinstance(info, dict) else ""
    try:
        return int(txid.split(".")[1])
    except (IndexError, ValueError):
        raise RecoveryError(f"service info holds no creation transaction id ({txid!r})") from None


def _hand_to_trusted_nodes(tx: Tx, secrets: list[LedgerSecret]) -> None:
    """The predecessor's `secrets`, each encrypted to every trusted node's key, in `tx`."""
    nodes: dict[str, rsa.RSAPublicKey] = {}
    for key, _ in tx.items(NODES_INFO):
        info = tx.get_json(NODES_INFO, key)
        if isinstance(info, dict) and info.get("status") == "Trusted" and info.get("encryption_pub_key"):
            public = serialization.load_pem_public_key(str(info["encryption_pub_key"]).encode())
            if isinstance(public, rsa.RSAPublicKey):
                nodes[key.decode()] = public
    tx.put(NODE_SECRETS, SINGLETON_KEY, dump_json(node_secrets_entries(nodes, secrets)))


class NodeRecovery:
    """Drives one node through a recovery; the enclave asks it what to do and when."""

    def __init__(self, ledger: ServiceLedger, schedule: Callable[[Callable[[], None]], None],
                 seal: Callable[[], None], snapshot: bytes | None = None,
                 run_in_workers: RunInWorkers | None = None, *, secrets_just_replicated: bool = False) -> None:
        """`secrets_just_replicated`: the predecessor's secrets reached this node in an entry it just received
        (a backup that learns of the recovery from that same batch of entries): the predecessor's entries it
        holds were taken in public-only, so their private part is still to be read even though the secrets now
        cover them. Otherwise secrets that cover them were there when the node read them."""
        self.ledger = ledger
        self._schedule = schedule
        self._run_in_workers = run_in_workers
        self._seal = seal
        self._snapshot = snapshot
        self._snapshot_seqno = summarise_snapshot(snapshot, digest=False).seqno if snapshot is not None else 0
        self.first_new_seqno = create_seqno(ledger)  # the recovered service's own secret starts there
        covered = ledger.secrets.covers(self._replay_start()) and not secrets_just_replicated
        self.phase = Phase.DONE if covered else Phase.PUBLIC
        if self.phase is Phase.PUBLIC:
            ledger.store.hold_removals_from(self.first_new_seqno)
            ledger.hold_records()  # the private replay checks each entry against the digests verified now
        self._replay: PrivateReplay | None = None
        self._private_began = 0.0
        if self.phase is Phase.DONE:
            logger.info("recovery: this node holds the previous service's secrets; its private state is replayed")

    @property
    def files(self) -> LedgerFiles:
        if self.ledger.files is None:
            raise RecoveryError("a recovering node needs its ledger files")
        return self.ledger.files

    # --- shares (primary, inside the request that reached the threshold) --------------------------------

    def shares_complete(self, tx: Tx) -> list[LedgerSecret]:
        """Unwrap the previous secrets with the submitted shares, clear them, and hand the secrets to every trusted
        node, in `tx`; returns the secrets, for `take_secrets` once `tx` commits. Raises `RecoverySharesError` if
        the shares are wrong; the caller then clears them."""
        latest = recover_latest_secret(tx)
        try:
            secrets = restore_secrets(self.ledger, self.files, latest)
        except (LedgerSecretError, RecoveryError) as e:
            raise RecoverySharesError(f"the previous ledger secrets cannot be recovered: {e}") from None
        if secrets[0].start > self._replay_start():
            logger.warning(f"recovery: secrets before seqno {secrets[0].start} are not in the ledger files")
        clear_submitted_shares(tx)
        _hand_to_trusted_nodes(tx, secrets)
        return secrets

    def take_secrets(self, secrets: list[LedgerSecret]) -> None:
        """The transaction of `shares_complete` committed: take the secrets and start the private replay."""
        self.ledger.secrets.restore_earlier([s for s in secrets if s.start < self.first_new_seqno])
        self.secrets_arrived()

    # --- private replay (every node) ------------------------------------------------------------------

    def secrets_arrived(self) -> None:
        """This node now holds its predecessor's secrets (seal them at once: a restart then needs no shares)."""
        self._seal()
        if self.phase is not Phase.PUBLIC or not self.ledger.secrets.covers(self._replay_start()):
            return
        self.phase = Phase.PRIVATE
        self._private_began = time.perf_counter()
        gc.disable()  # the replay builds long-lived state and no cycles (re-enabled, and the state frozen, after)
        jobs = None
        if self._snapshot is None and self._run_in_workers is not None:
            try:
                jobs = private_replay_jobs(self.files, self.ledger.secrets, self.ledger.write_set_digests,
                                           self._replay_start(), self.first_new_seqno - 1)
            except LedgerError as e:  # (the replay in steps then names what is missing)
                logger.warning(f"recovery: no private replay in worker processes ({e})")
        if jobs:
            logger.info(f"recovery: reading the private ledger up to seqno {self.first_new_seqno - 1}, "
                        f"{len(jobs)} chunks in worker processes")
            assert self._run_in_workers is not None
            try:
                self._run_in_workers(list(jobs), self._decrypted, [job.result_bytes for job in jobs])
                return
            except Exception as e:  # (no worker could be started: the replay in steps needs none)
                logger.warning(f"recovery: no private replay in worker processes ({e!r})")
        self._replay_in_steps()

    def _decrypted(self, results: list[Any] | BaseException) -> None:
        """The workers' answer: the private state, or an error (then the replay in steps names the damage)."""
        if isinstance(results, BaseException):
            logger.warning(f"recovery: the private replay in worker processes failed ({results}); replaying in "
                           "steps")
            self._replay_in_steps()
            return
        self._finish_private(merge_private(results))

    def _replay_in_steps(self) -> None:
        self._replay = PrivateReplay(self.files, self.ledger.secrets, self._replay_start(),
                                     self.first_new_seqno - 1, self._snapshot,
                                     verified_digests=self.ledger.write_set_digests)
        logger.info(f"recovery: reading the private ledger up to seqno {self.first_new_seqno - 1}")
        self._schedule(self._step)

    def _replay_start(self) -> int:
        if self._snapshot is not None:
            return self._snapshot_seqno + 1
        return self.files.first_seqno

    def _step(self) -> None:
        replay = self._replay
        if replay is None:
            return
        try:
            replay.step(REPLAY_STEP)
        except LedgerError as e:  # RecoveryError, or any other refusal of what the files hold
            logger.error(f"recovery: {e}; this node stays in the public phase")
            self.phase, self._replay = Phase.PUBLIC, None
            gc.enable()
            return
        if not replay.done:
            self._schedule(self._step)
            return
        self._replay = None
        self._finish_private(replay.state())

    def _finish_private(self, state: LastWrites) -> None:
        self.ledger.store.restore_earlier_state(state, self.first_new_seqno)
        self.ledger.release_records()
        gc.enable()
        gc.freeze()  # the restored state lives as long as the node: later collections need not walk it
        self.phase = Phase.DONE
        logger.info(f"recovery: private ledger read in {time.perf_counter() - self._private_began:.2f} s; this "
                    "node holds the whole state")

    # --- opening (primary) -----------------------------------------------------------------------------

    def wants_shares(self) -> bool:
        """Members' shares are of use only before the private replay begins: once it runs, and once it is done
        (the service opens at the primary's next tick), a share is refused (CCF opens in the same step that ends
        the private recovery, so it never sees one then)."""
        return self.phase is Phase.PUBLIC

    def ready_to_open(self) -> bool:
        return self.phase is Phase.DONE and recovering_status(self.ledger) == "WaitingForRecoveryShares"

    def open_writes(self, tx: Tx) -> None:
        """The opening of the recovered service, in `tx`: status Open, the secret chain continued, new shares, the
        predecessor's secrets handed to the trusted nodes again, and no decrypted share of the predecessor left
        behind (as CCF's opening clears them)."""
        clear_submitted_shares(tx)
        # The transaction of `shares_complete` handed the secrets to every trusted node, but this node took them
        # once it committed here, not once a majority held it: if an election rolled it back, and this node leads
        # again, the other nodes never had them. The opening hands them over again (a node that holds them
        # already takes nothing from it).
        _hand_to_trusted_nodes(tx, [s for s in self.ledger.secrets.all() if s.start < self.first_new_seqno])
        info = dict(tx.get_json(SERVICE_INFO, SINGLETON_KEY))
        previous_info_version = info.get("previous_service_identity_version")
        info["status"] = "Open"
        info["previous_service_identity_version"] = tx.get_version(SERVICE_INFO, SINGLETON_KEY)
        tx.put_json(SERVICE_INFO, SINGLETON_KEY, info)
        new = self.ledger.secrets.for_seqno(self.first_new_seqno)
        previous = self.ledger.secrets.for_seqno(self.first_new_seqno - 1)
        record_seqno = tx.get_version(HISTORICAL_SECRETS, SINGLETON_KEY) or None
        tx.put(HISTORICAL_SECRETS, SINGLETON_KEY, dump_json(recovery_secret_record(previous, new, record_seqno)))
        deal_shares(tx, self.ledger.secrets.latest.raw)
        previous_pem = tx.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY)
        previous_key = load_cert(str(previous_pem)).public_key()
        if not isinstance(previous_key, ec.EllipticCurvePublicKey):
            raise RecoveryError("the previous service key is not an EC key")
        write_opening_endorsement(tx, self.ledger.service, str(info.get("current_service_create_txid")),
                                  int(self.ledger.clock()), previous_key_der=spki_der(previous_key),
                                  previous_begin=self._previous_create_txid(previous_info_version),
                                  previous_end=str(self.ledger.txid(self.first_new_seqno - 1)))

    def _previous_create_txid(self, version: Any) -> str | None:
        """The predecessor's first transaction, from its service info (read back from the files)."""
        files = self.ledger.files
        if not isinstance(version, int) or files is None or not files.first_seqno <= version <= files.last_seqno:
            return None
        raw = decode_entry(files.read(version), None).writes.get(SERVICE_INFO, {}).get(SINGLETON_KEY)
        previous = orjson.loads(raw) if raw is not None else {}
        txid = previous.get("current_service_create_txid") if isinstance(previous, dict) else None
        return str(txid) if txid else None
