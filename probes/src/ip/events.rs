//! One netlink subscription per network namespace and address family, shared by every `ip`
//! resource there. A subscription per resource hands every address change to every resource:
//! a node that takes over hundreds of groups adds hundreds of addresses, and each of hundreds
//! of watchers then woke and parsed each of them, on the check thread. Here one task reads each
//! change once and tells only the watchers it concerns.

use super::{address_matches, link_is_up, IpCidr};
use crate::resource::Failure;
use futures::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What a watcher is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Its address was removed.
    AddressRemoved,
    /// Its link went down or lost its carrier.
    LinkDown,
    /// Its link was removed.
    LinkRemoved,
    /// The subscription ended: nothing more will be told.
    Ended,
}

struct Watcher {
    index: u32,
    cidr: IpCidr,
    tx: mpsc::UnboundedSender<Change>,
}

/// The watchers of one subscription, by id.
#[derive(Default)]
struct Watchers {
    next: u64,
    by_id: BTreeMap<u64, Watcher>,
    /// The task reading the subscription ended (its runtime went, or netlink said no more).
    ended: bool,
}

type Shared = Arc<Mutex<Watchers>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, Watchers> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// The subscriptions, by network namespace (its inode) and family.
static HUBS: Mutex<BTreeMap<(u64, bool), Shared>> = Mutex::new(BTreeMap::new());

/// A watcher's end: changes come on `changes`; dropping it unregisters.
pub(super) struct Watch {
    pub(super) changes: mpsc::UnboundedReceiver<Change>,
    id: u64,
    hub: Shared,
}

impl Drop for Watch {
    fn drop(&mut self) {
        lock(&self.hub).by_id.remove(&self.id);
    }
}

/// Watches `cidr` on the link `index` of the calling thread's network namespace.
pub(super) fn watch(index: u32, cidr: IpCidr) -> Result<Watch, Failure> {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| Failure::from_io("read the network namespace", &e))?;
    let v4 = cidr.address.is_ipv4();
    let hub = {
        let mut hubs = HUBS.lock().unwrap_or_else(|e| e.into_inner());
        match hubs.get(&(netns, v4)) {
            Some(hub) if !lock(hub).ended => hub.clone(),
            _ => {
                let hub = subscribe(v4)?;
                hubs.insert((netns, v4), hub.clone());
                hub
            }
        }
    };
    let (tx, changes) = mpsc::unbounded_channel();
    let id = {
        let mut w = lock(&hub);
        w.next += 1;
        let id = w.next;
        w.by_id.insert(id, Watcher { index, cidr, tx });
        id
    };
    Ok(Watch { changes, id, hub })
}

/// Opens the subscription and starts the task that reads it, on the calling runtime.
fn subscribe(v4: bool) -> Result<Shared, Failure> {
    let group = if v4 {
        MulticastGroup::Ipv4Ifaddr
    } else {
        MulticastGroup::Ipv6Ifaddr
    };
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, group])
            .map_err(|e| Failure::from_io("subscribe to netlink", &e))?;
    let connection = tokio::spawn(connection);
    let shared: Shared = Arc::default();
    let hub = shared.clone();
    tokio::spawn(async move {
        // The connection lives while a handle does.
        let _handle = handle;
        // However the task ends (the stream ends, or its runtime goes and drops it), the
        // watchers hear of it and the next watch opens a new subscription.
        let _end = EndGuard {
            hub: hub.clone(),
            connection,
        };
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(message) = message.payload else {
                continue;
            };
            let mut w = lock(&hub);
            w.by_id.retain(|_, watcher| !watcher.tx.is_closed());
            for watcher in w.by_id.values() {
                let change = match &message {
                    RouteNetlinkMessage::DelAddress(msg)
                        if address_matches(msg, watcher.index, watcher.cidr) =>
                    {
                        Change::AddressRemoved
                    }
                    RouteNetlinkMessage::NewLink(msg)
                        if msg.header.index == watcher.index && !link_is_up(msg.header.flags) =>
                    {
                        Change::LinkDown
                    }
                    RouteNetlinkMessage::DelLink(msg) if msg.header.index == watcher.index => {
                        Change::LinkRemoved
                    }
                    _ => continue,
                };
                let _ = watcher.tx.send(change);
            }
        }
    });
    Ok(shared)
}

/// Marks a subscription ended when its task ends, whichever way.
struct EndGuard {
    hub: Shared,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.connection.abort();
        let mut w = lock(&self.hub);
        w.ended = true;
        for watcher in w.by_id.values() {
            let _ = watcher.tx.send(Change::Ended);
        }
    }
}
