//! Membership from etcd: register under a lease, keep it alive, watch the registry.
//!
//! # What a node does
//! - It puts `{prefix}{id}` → `{"id": .., "addr": .., "started_at_ms": .., "sig": ..}` (`sig`
//!   with a cluster secret only) under a lease of
//!   `lease_ttl`, and keeps the lease alive every `lease_ttl / 3`, so
//!   `etcdctl get --prefix /geecache/registry/` lists the live nodes.
//! - It lists the prefix, then watches it from the revision after that listing, and publishes a
//!   new member list at once on every put or delete (no polling).
//!
//! # Which entries are members
//! Anyone who can write under the prefix could otherwise add a member, or take another
//! node's place in every ring. An entry is a member only if ([`admit`]):
//! - its value is a registration (`id`, `addr`) whose `id` is the rest of its key, so one id
//!   has one key and an entry cannot stand for another node;
//! - its `id` is 1 to 256 bytes without control characters, and its `addr` is `host:port`
//!   (or `http://host:port` / `https://host:port`) with nothing else;
//! - its scheme is the one this node runs: `https://` when this node advertises `https://`
//!   (peer TLS), plain otherwise;
//! - with a cluster secret, it is signed with it (`sig`, see [`RegistryKey`]): whoever can
//!   write under the prefix but has no secret cannot add a member (a node signs its own entry);
//! - the registry holds fewer than `max_members` members already.
//!
//! A rejected entry is logged once (again only if its reason changes) and counted
//! ([`RegistryCounters::rejected`]). An entry under this node's own key that is not this
//! node's registration (someone overwrote it) is written back at the next keepalive tick, at
//! most once a tick, logged and counted ([`RegistryCounters::restored`]).
//!
//! # When things go wrong
//! - etcd does not answer (a request fails or times out, the keepalive or watch stream ends, a
//!   keepalive goes unanswered for a whole TTL): the node logs one warning for the episode,
//!   turns [`RegistrationState::Unreachable`], **keeps publishing the last known list** (a
//!   cache that forgets its peers because etcd blinked would reshuffle every key), and retries
//!   with a backoff from 200 ms doubling up to 2 s (or `lease_ttl / 4` if that is shorter, so a
//!   node comes back before the lease etcd refreshed on its own restart runs out). When etcd
//!   answers again it grants a new lease, puts its key again, re-lists, re-watches, and logs
//!   "re-registered".
//! - The lease is lost (a keepalive answers TTL 0) or someone deletes this node's key: it
//!   registers again at once under a new lease.
//! - At startup, [`Membership::etcd`](super::Membership::etcd) retries (same backoff) until
//!   `connect_timeout`, then fails with an error naming the endpoints.
//! - [`Membership::shutdown`](super::Membership::shutdown): delete the key, revoke the lease,
//!   stop; bounded in time even when etcd is down.
//!
//! One background task owns the etcd client and every stream; handles only read the `watch`
//! channels it publishes on and signal it to stop, so nothing is shared that could deadlock.
//!
//! Files: this one holds the registration task; `options.rs` how to reach etcd (endpoints,
//! TLS, user, timeouts); `admission.rs` which registry entries become members.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions,
    WatchResponse, WatchStream,
};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{DiscoveryError, Member, RegistrationState, normalize};

mod admission;
mod options;

use options::connect_options;
pub use options::{DEFAULT_MAX_MEMBERS, EtcdOptions, EtcdTls, EtcdUser, RegistryKey};

/// First pause before retrying an unreachable etcd.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long [`Task::shutdown`] waits for the task to deregister before giving up on it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on each of the two deregistration requests, so both fit in [`SHUTDOWN_TIMEOUT`].
const DEREGISTER_STEP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the registry task counted, shared with the [`Membership`](super::Membership) handle.
#[derive(Debug, Default)]
pub struct RegistryCounters {
    /// Registry entries rejected (see the module docs), each time one was read: put, or
    /// listed again after a re-registration.
    pub rejected: AtomicU64,
    /// Times this node's own entry was found overwritten and written back.
    pub restored: AtomicU64,
}

/// The value stored under a node's key. `started_at_ms` tells a restarted node from the one
/// before it when reading the registry by hand.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Registration {
    id: String,
    addr: String,
    #[serde(default)]
    started_at_ms: u64,
    /// With a cluster secret: the entry's signature ([`RegistryKey`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sig: String,
}

/// What [`start`] hands to the [`Membership`](super::Membership) handle.
pub(super) struct Started {
    pub(super) members: watch::Receiver<Vec<Member>>,
    pub(super) state: watch::Receiver<RegistrationState>,
    pub(super) task: Task,
    pub(super) counters: Arc<RegistryCounters>,
}

/// The handle's side of the background task.
#[derive(Debug)]
pub(super) struct Task {
    /// Tells the task to deregister and stop; dropping it (the last handle went away) does too.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Awaited by `shutdown`, aborted by `abort`.
    join: Mutex<Option<JoinHandle<()>>>,
}

impl Task {
    /// Asks the task to deregister and waits for it, at most [`SHUTDOWN_TIMEOUT`].
    pub(super) async fn shutdown(&self) {
        if let Some(stop) = take(&self.stop) {
            let _ = stop.send(());
        }
        let Some(mut join) = take(&self.join) else {
            return;
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut join)
            .await
            .is_err()
        {
            warn!(
                "etcd deregistration did not finish within {SHUTDOWN_TIMEOUT:?}; \
                 the registration will expire with its lease"
            );
            join.abort();
        }
    }

    /// Stops the task where it stands, without deregistering.
    pub(super) fn abort(&self) {
        if let Some(join) = take(&self.join) {
            join.abort();
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().take()
}

/// Connects, registers, lists and watches (all within `connect_timeout`), then leaves the rest
/// to a background task.
pub(super) async fn start(me: Member, options: EtcdOptions) -> Result<Started, DiscoveryError> {
    options.validate()?;
    let endpoints = options.endpoints.join(",");
    let unreachable = |reason: String| DiscoveryError::Unreachable {
        endpoints: endpoints.clone(),
        timeout: options.connect_timeout,
        reason,
    };

    let connect_options = connect_options(&options)?;
    // Retry until the deadline rather than fail on the first refused connection: etcd and the
    // nodes are often started together.
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    let mut delay = INITIAL_BACKOFF;
    // Without a user, `connect` does not talk to etcd (the channel connects lazily); with one
    // it authenticates at once, so it is retried like the first registration below.
    let client = loop {
        let connected = tokio::time::timeout_at(
            deadline,
            Client::connect(&options.endpoints, Some(connect_options.clone())),
        )
        .await;
        let error = match connected {
            Ok(Ok(client)) => break client,
            Ok(Err(
                error @ (etcd_client::Error::InvalidArgs(_)
                | etcd_client::Error::InvalidUri(_)
                | etcd_client::Error::EndpointError(_)),
            )) => {
                return Err(DiscoveryError::InvalidOptions(format!(
                    "etcd endpoints {endpoints}: {error}"
                )));
            }
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(DiscoveryError::InvalidOptions(format!(
                    "etcd at {endpoints} refused this node's credentials ({}); check \
                     --etcd-user and --etcd-password (GEECACHE_ETCD_PASSWORD)",
                    status.message()
                )));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        debug!(%error, "etcd not answering yet");
        if !back_off(deadline, &mut delay, MAX_BACKOFF).await {
            return Err(unreachable(error));
        }
    };

    let (members_tx, members) = watch::channel(vec![me.clone()]);
    let (state_tx, state) = watch::channel(RegistrationState::Registering);
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let value = serde_json::to_string(&Registration {
        id: me.id.clone(),
        addr: me.addr.clone(),
        started_at_ms,
        sig: options
            .signing
            .as_ref()
            .map(|k| k.sign(&me.id, &me.addr, started_at_ms))
            .unwrap_or_default(),
    })
    .map_err(|e| DiscoveryError::InvalidOptions(format!("cannot encode the registration: {e}")))?;
    let whole_secs = options.lease_ttl.as_secs() + u64::from(options.lease_ttl.subsec_nanos() > 0);
    let ttl_secs = i64::try_from(whole_secs).unwrap_or(i64::MAX);

    let counters = Arc::new(RegistryCounters::default());
    let mut registrar = Registrar {
        client,
        tls: me.addr.starts_with("https://"),
        signing: options.signing.clone(),
        max_members: options.max_members,
        rejected: BTreeMap::new(),
        restore_due: false,
        counters: Arc::clone(&counters),
        key: format!("{}{}", options.prefix, me.id),
        value,
        prefix: options.prefix.clone(),
        ttl_secs,
        ttl: options.lease_ttl,
        request_timeout: options.connect_timeout,
        max_backoff: MAX_BACKOFF.min(options.lease_ttl / 4).max(INITIAL_BACKOFF),
        me,
        known: BTreeMap::new(),
        lease: None,
        members_tx,
        state_tx,
    };
    let mut delay = INITIAL_BACKOFF;
    let mut earlier: Option<Failure> = None;
    let session = loop {
        let failure = match tokio::time::timeout_at(deadline, registrar.establish()).await {
            Ok(Ok(session)) => break session,
            Ok(Err(failure)) => failure,
            Err(_) => {
                return Err(unreachable(match earlier {
                    Some(failure) => format!("no answer; before that: {failure}"),
                    None => "no answer".to_owned(),
                }));
            }
        };
        debug!(%failure, "etcd not answering yet");
        if !back_off(deadline, &mut delay, registrar.max_backoff).await {
            return Err(unreachable(failure.to_string()));
        }
        earlier = Some(failure);
    };
    registrar.set_state(RegistrationState::Registered);
    info!(
        key = %registrar.key,
        lease = registrar.lease.unwrap_or_default(),
        endpoints = %endpoints,
        "registered in etcd"
    );

    let (stop_tx, stop_rx) = oneshot::channel();
    let join = tokio::spawn(registrar.run(session, stop_rx));
    Ok(Started {
        members,
        state,
        task: Task {
            stop: Mutex::new(Some(stop_tx)),
            join: Mutex::new(Some(join)),
        },
        counters,
    })
}

/// Sleeps `delay` before the next startup attempt and doubles it (up to `max`); false, at once,
/// when that attempt would start past `deadline`.
async fn back_off(deadline: tokio::time::Instant, delay: &mut Duration, max: Duration) -> bool {
    if tokio::time::Instant::now() + *delay >= deadline {
        return false;
    }
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(max);
    true
}

/// Why a session with etcd ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{what} failed: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{what} timed out after {after:?}")]
    TimedOut { what: &'static str, after: Duration },
    #[error("the {0} stream ended")]
    StreamEnded(&'static str),
    #[error("no keepalive answer for {0:?}")]
    KeepaliveUnanswered(Duration),
    #[error("the watch was canceled: {0}")]
    WatchCanceled(String),
    #[error("the lease expired or was revoked")]
    LeaseLost,
    #[error("this node's key was deleted")]
    KeyDeleted,
}

impl Failure {
    /// etcd answered, but this node's registration is gone: register again at once, no backoff.
    fn is_registration_lost(&self) -> bool {
        matches!(self, Failure::LeaseLost | Failure::KeyDeleted)
    }
}

/// Runs `request`, failing it after `after`: a lazily connected channel may wait forever for
/// an endpoint that will not come.
async fn bounded<T>(
    after: Duration,
    what: &'static str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(after, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Failure::Request { what, source }),
        Err(_) => Err(Failure::TimedOut { what, after }),
    }
}

/// The live streams of one registration.
struct Session {
    /// Sends keepalive requests for the current lease.
    keeper: LeaseKeeper,
    /// etcd's keepalive answers.
    keepalive: LeaseKeepAliveStream,
    /// Registry changes since the listing this session started from.
    watch: WatchStream,
    /// When etcd last confirmed the lease; a whole TTL without one means etcd is not there.
    last_ack: Instant,
}

/// The background task's state: the one owner of the etcd client.
struct Registrar {
    client: Client,
    me: Member,
    /// Whether this node advertises `https://`: then so must every member.
    tls: bool,
    /// With a cluster secret: entries must be signed with it.
    signing: Option<RegistryKey>,
    /// Most members taken from the registry.
    max_members: usize,
    /// Rejected registry keys and why, so each is logged once per reason.
    rejected: BTreeMap<String, String>,
    /// This node's entry was found overwritten: put it back at the next keepalive tick.
    restore_due: bool,
    counters: Arc<RegistryCounters>,
    /// `{prefix}{id}`: this node's key.
    key: String,
    /// The JSON registration, fixed for the life of the process.
    value: String,
    prefix: String,
    ttl_secs: i64,
    ttl: Duration,
    request_timeout: Duration,
    max_backoff: Duration,
    /// Registry key → member, as of the last listing plus watch events.
    known: BTreeMap<String, Member>,
    /// The lease holding this node's key: revoked on shutdown, replaced on re-registration.
    lease: Option<i64>,
    members_tx: watch::Sender<Vec<Member>>,
    state_tx: watch::Sender<RegistrationState>,
}

impl Registrar {
    /// Registers (new lease, put), starts the keepalive, lists and watches the registry.
    async fn establish(&mut self) -> Result<Session, Failure> {
        let t = self.request_timeout;
        let lease = bounded(
            t,
            "granting a lease",
            self.client.lease_grant(self.ttl_secs, None),
        )
        .await?
        .id();
        let put = PutOptions::new().with_lease(lease);
        bounded(
            t,
            "putting the registration key",
            self.client
                .put(self.key.as_str(), self.value.as_str(), Some(put)),
        )
        .await?;
        if let Some(old) = self.lease.replace(lease) {
            // The key now hangs on the new lease, so revoking the old one deletes nothing; it
            // only spares etcd a lease that would otherwise linger until it expires.
            if let Err(error) =
                bounded(t, "revoking the old lease", self.client.lease_revoke(old)).await
            {
                debug!(%error, lease = old, "old lease not revoked");
            }
        }
        // Keep the lease alive before the slower steps, so they cannot outlast its TTL.
        let (keeper, keepalive) = bounded(
            t,
            "starting the lease keepalive",
            self.client.lease_keep_alive(lease),
        )
        .await?;
        let last_ack = Instant::now();

        let listing = bounded(
            t,
            "listing the registry",
            self.client
                .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        self.known.clear();
        for kv in listing.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            // Our own key was just put: what the listing shows for it is that put, or a later
            // overwrite, which the watch from this revision on would not show.
            self.put_seen(key, kv.value());
        }
        self.publish();

        let from_next = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watch = bounded(
            t,
            "watching the registry",
            self.client.watch(self.prefix.as_str(), Some(from_next)),
        )
        .await?;
        Ok(Session {
            keeper,
            keepalive,
            watch,
            last_ack,
        })
    }

    /// Serves sessions until told to stop, re-registering after every failure; then
    /// deregisters.
    async fn run(mut self, first: Session, mut stop: oneshot::Receiver<()>) {
        let mut session = first;
        loop {
            let failure = tokio::select! {
                biased;
                _ = &mut stop => break,
                failure = self.serve(&mut session) => failure,
            };
            drop(session);
            session = match self.recover(failure, &mut stop).await {
                Some(session) => session,
                None => break,
            };
        }
        self.deregister().await;
    }

    /// Keeps the lease alive and applies registry changes until something fails.
    async fn serve(&mut self, session: &mut Session) -> Failure {
        let mut tick = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the lease was just confirmed
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if session.last_ack.elapsed() > self.ttl {
                        return Failure::KeepaliveUnanswered(self.ttl);
                    }
                    if self.restore_due
                        && let Err(failure) = self.restore().await
                    {
                        return failure;
                    }
                    if let Err(source) = session.keeper.keep_alive().await {
                        return Failure::Request { what: "sending a keepalive", source };
                    }
                }
                answer = session.keepalive.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => session.last_ack = Instant::now(),
                    Ok(Some(_)) => return Failure::LeaseLost,
                    Ok(None) => return Failure::StreamEnded("keepalive"),
                    Err(source) => return Failure::Request { what: "keeping the lease alive", source },
                },
                change = session.watch.message() => match change {
                    Ok(Some(change)) => {
                        if let Some(failure) = self.apply(&change) {
                            return failure;
                        }
                    }
                    Ok(None) => return Failure::StreamEnded("watch"),
                    Err(source) => return Failure::Request { what: "watching the registry", source },
                },
            }
        }
    }

    /// Applies one watch response to the known members and publishes the result.
    fn apply(&mut self, change: &WatchResponse) -> Option<Failure> {
        if change.canceled() {
            return Some(Failure::WatchCanceled(change.cancel_reason().to_owned()));
        }
        let mut own_key_deleted = false;
        for event in change.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => self.put_seen(key, kv.value()),
                EventType::Delete => {
                    own_key_deleted |= key == self.key;
                    self.known.remove(key);
                    self.rejected.remove(key);
                }
            }
        }
        self.publish();
        own_key_deleted.then_some(Failure::KeyDeleted)
    }

    /// Reports `failure`, then retries with backoff until registered again (`None`: told to
    /// stop first).
    async fn recover(
        &mut self,
        failure: Failure,
        stop: &mut oneshot::Receiver<()>,
    ) -> Option<Session> {
        let mut delay = if failure.is_registration_lost() {
            warn!(key = %self.key, "{failure}; registering again");
            self.set_state(RegistrationState::Registering);
            Duration::ZERO
        } else {
            self.report_unreachable(&failure);
            INITIAL_BACKOFF
        };
        loop {
            tokio::select! {
                biased;
                _ = &mut *stop => return None,
                () = tokio::time::sleep(delay) => {}
            }
            let attempt = tokio::select! {
                biased;
                _ = &mut *stop => return None,
                attempt = self.establish() => attempt,
            };
            match attempt {
                Ok(session) => {
                    self.set_state(RegistrationState::Registered);
                    info!(
                        key = %self.key,
                        lease = self.lease.unwrap_or_default(),
                        members = self.members_tx.borrow().len(),
                        "re-registered in etcd"
                    );
                    return Some(session);
                }
                Err(failure) => {
                    self.report_unreachable(&failure);
                    delay = (delay * 2).clamp(INITIAL_BACKOFF, self.max_backoff);
                }
            }
        }
    }

    /// Logs the first failure of an episode as a warning, the rest at debug level.
    fn report_unreachable(&self, failure: &Failure) {
        if *self.state_tx.borrow() == RegistrationState::Unreachable {
            debug!(%failure, "etcd still unreachable");
        } else {
            warn!(
                key = %self.key,
                %failure,
                "etcd unreachable; keeping the last known members ({}) and retrying",
                self.members_tx.borrow().len()
            );
            self.set_state(RegistrationState::Unreachable);
        }
    }

    /// Deletes this node's key and revokes its lease, each step bounded.
    async fn deregister(&mut self) {
        let t = DEREGISTER_STEP_TIMEOUT.min(self.request_timeout);
        let deleted = bounded(
            t,
            "deleting the registration key",
            self.client.delete(self.key.as_str(), None),
        )
        .await;
        let revoked = match self.lease.take() {
            Some(lease) => bounded(t, "revoking the lease", self.client.lease_revoke(lease))
                .await
                .map(drop),
            None => Ok(()),
        };
        match deleted.and(revoked) {
            Ok(()) => info!(key = %self.key, "deregistered from etcd"),
            Err(failure) => warn!(
                key = %self.key,
                %failure,
                "could not deregister from etcd; the key expires with its lease"
            ),
        }
    }

    fn publish(&self) {
        let list = normalize(&self.me, self.known.values().cloned());
        self.members_tx.send_if_modified(|current| {
            if *current == list {
                return false;
            }
            debug!(members = ?list, "membership changed");
            *current = list;
            true
        });
    }

    fn set_state(&self, state: RegistrationState) {
        self.state_tx.send_replace(state);
    }
}
