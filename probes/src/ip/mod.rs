//! `ip`: an address (IPv4 or IPv6) the group owns on a network interface, over rtnetlink.
//!
//! - online adds `address` to `interface` (with `label`, IPv4 only; IPv6 without duplicate
//!   address detection, so the address is usable at once, as keepalived does) and announces it:
//!   gratuitous ARP requests for IPv4, unsolicited neighbour advertisements with the override
//!   flag for IPv6, so that neighbours replace the MAC they cached for the address while another
//!   node held it. An address already there is kept (adoption after an agent restart).
//! - offline removes the address; terminate does the same (it cannot hang on anything else).
//! - looks_alive and is_alive: the link is up with a carrier and the address is on it (not
//!   tentative, not failed DAD).
//! - failure signal: a netlink subscription to link and address changes reports the address
//!   removed (`address_missing`) or the link down (`link_down`) the moment the kernel says so.
//!   One subscription per network namespace and address family serves every `ip` resource
//!   ([`events`]); `announce` sends the announcements.
//!
//! Announcements go out back to back, `announcements` of them, with no sleep in between: the
//! probe owns no timer. A peer that drops the first still sees the next.

#![allow(unsafe_code)] // system calls no safe crate wraps; a SAFETY note at each site

mod announce;
mod events;

use crate::resource::{BuildContext, TypeConfig};
use crate::resource::{Failure, Progress, Resource};
use async_trait::async_trait;
use futures::TryStreamExt;
use resmon_policies::FailureReason;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// An address with its prefix length: `"192.0.2.10/24"`, `"2001:db8::10/64"`; without a prefix
/// it is a host address (/32, /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpCidr {
    /// The address.
    pub address: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let address: IpAddr = addr.parse().map_err(|_| {
            format!("invalid address {s:?}: expected an address with its prefix, such as \"192.0.2.10/24\" or \"2001:db8::10/64\"")
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}: 0 to {max}"))?,
        };
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            return Err(format!(
                "{address} cannot be a group's address (unspecified, multicast or loopback)"
            ));
        }
        Ok(IpCidr { address, prefix })
    }
}

impl<'de> Deserialize<'de> for IpCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Private properties of an `ip` resource.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    /// The address and prefix, e.g. `"192.0.2.10/24"`.
    pub address: IpCidr,
    /// The interface it goes on, e.g. `"eth0"`.
    pub interface: String,
    /// An IPv4 label (`"eth0:mail"`), shown by `ip address` and old tools; must start with the
    /// interface's name.
    #[serde(default)]
    pub label: Option<String>,
    /// How many gratuitous ARPs or unsolicited neighbour advertisements online sends; 0 sends
    /// none.
    #[serde(default = "default_announcements")]
    pub announcements: u32,
}

fn default_announcements() -> u32 {
    3
}

impl IpConfig {
    /// Checks that need more than one key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            errors.push((
                "interface",
                format!(
                    "{:?} is not an interface name (1 to 15 bytes, no '/')",
                    self.interface
                ),
            ));
        }
        if let Some(label) = &self.label {
            if self.address.address.is_ipv6() {
                errors.push(("label", "labels exist for IPv4 addresses only".to_string()));
            } else if label.len() > 15
                || !(label == &self.interface || label.starts_with(&format!("{}:", self.interface)))
            {
                errors.push((
                    "label",
                    format!(
                        "{label:?} must be the interface name or start with \"{}:\", 15 bytes at most",
                        self.interface
                    ),
                ));
            }
        }
        errors
    }
}

/// An address kept on an interface.
pub struct IpResource {
    config: IpConfig,
}

/// What the kernel says about the interface.
struct Link {
    index: u32,
    up: bool,
    mac: Option<[u8; 6]>,
}

fn netlink_failure(context: &str, err: rtnetlink::Error) -> Failure {
    Failure::new(FailureReason::Io, format!("{context}: {err}"))
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn connect() -> Result<Handle, Failure> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| Failure::from_io("open a netlink socket", &e))?;
    // The connection task ends once every handle is dropped.
    tokio::spawn(connection);
    Ok(handle)
}

fn link_is_up(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)
}

/// Whether `msg` is this resource's address: on its interface, with its address *and* its
/// prefix. The same address with another prefix is someone else's, never adopted or removed.
fn address_matches(msg: &AddressMessage, index: u32, cidr: IpCidr) -> bool {
    let address = cidr.address;
    msg.header.index == index
        && msg.header.prefix_len == cidr.prefix
        && msg.attributes.iter().any(|a| match a {
            // IFA_LOCAL is the address on point-to-point links; IFA_ADDRESS elsewhere.
            AddressAttribute::Local(a) | AddressAttribute::Address(a) => *a == address,
            _ => false,
        })
}

fn address_usable(msg: &AddressMessage) -> Result<(), &'static str> {
    let flags = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or(AddressFlags::empty());
    if flags.contains(AddressFlags::Dadfailed) {
        return Err("duplicate address detection failed: another host uses it");
    }
    if flags.contains(AddressFlags::Tentative) {
        return Err("still tentative (duplicate address detection running)");
    }
    Ok(())
}

impl IpResource {
    /// Builds it from its config; touches nothing.
    pub fn new(config: IpConfig) -> Self {
        IpResource { config }
    }

    fn link_down(&self, why: &str) -> Failure {
        Failure::new(
            FailureReason::LinkDown,
            format!("{}: {why}", self.config.interface),
        )
    }

    fn missing(&self) -> Failure {
        Failure::new(
            FailureReason::AddressMissing,
            format!(
                "{} is not on {}",
                self.config.address, self.config.interface
            ),
        )
    }

    async fn link(&self, handle: &Handle) -> Result<Link, Failure> {
        let mut links = handle
            .link()
            .get()
            .match_name(self.config.interface.clone())
            .execute();
        let msg: LinkMessage = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(self.link_down("no such interface")),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                return Err(self.link_down("no such interface"))
            }
            Err(e) => return Err(netlink_failure("read the interface", e)),
        };
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Link {
            index: msg.header.index,
            up: link_is_up(msg.header.flags),
            mac,
        })
    }

    async fn find(&self, handle: &Handle, index: u32) -> Result<Option<AddressMessage>, Failure> {
        let mut addresses = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addresses
            .try_next()
            .await
            .map_err(|e| netlink_failure("read the addresses", e))?
        {
            if address_matches(&msg, index, self.config.address) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    fn message(&self, index: u32) -> AddressMessage {
        let IpCidr { address, prefix } = self.config.address;
        match address {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
        }
    }

    async fn check(&self) -> Result<(), Failure> {
        self.check_index().await.map(drop)
    }

    /// [`Self::check`]; the index of the link it found the address on.
    async fn check_index(&self) -> Result<u32, Failure> {
        let handle = connect()?;
        let link = self.link(&handle).await?;
        if !link.up {
            return Err(self.link_down("down or without carrier"));
        }
        match self.find(&handle, link.index).await? {
            None => Err(self.missing()),
            Some(msg) => address_usable(&msg).map(|()| link.index).map_err(|why| {
                Failure::new(
                    FailureReason::AddressMissing,
                    format!(
                        "{} on {}: {why}",
                        self.config.address, self.config.interface
                    ),
                )
            }),
        }
    }

    /// Adds the address: `true` when added, `false` when it was there already.
    async fn add(&self, handle: &Handle, index: u32) -> Result<bool, Failure> {
        let IpCidr { address, prefix } = self.config.address;
        let mut request = handle.address().add(index, address, prefix);
        let msg = request.message_mut();
        if address.is_ipv6() {
            // Usable at once: the group's address moves between nodes, and DAD would hold it
            // tentative (unbindable) for a second while the old owner's entry is already gone.
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(label) = &self.config.label {
            msg.attributes.push(AddressAttribute::Label(label.clone()));
        }
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(netlink_failure(
                &format!("add {} to {}", self.config.address, self.config.interface),
                e,
            )),
        }
    }

    fn announce(&self, link: &Link) -> Result<(), Failure> {
        if self.config.announcements == 0 {
            return Ok(());
        }
        let Some(mac) = link.mac else {
            // No hardware address (a tunnel): nobody caches one to replace.
            return Ok(());
        };
        let result = match self.config.address.address {
            IpAddr::V4(a) => {
                announce::gratuitous_arp(link.index, mac, a, self.config.announcements)
            }
            IpAddr::V6(a) => {
                announce::neighbour_advertisement(link.index, mac, a, self.config.announcements)
            }
        };
        result.map_err(|e| Failure::from_io("announce the address", &e))
    }
}

#[async_trait]
impl Resource for IpResource {
    async fn online(&self, _progress: &Progress) -> Result<(), Failure> {
        let handle = connect()?;
        let link = self.link(&handle).await?;
        if !link.up {
            return Err(self.link_down("down or without carrier"));
        }
        // Added, not looked for first: a dump of every address on the machine (hundreds on a
        // node that takes over hundreds of groups) for each online would keep the check
        // thread busy for seconds. The kernel refuses the same address and prefix twice.
        let added = self.add(&handle, link.index).await?;
        self.announce(&link)?;
        drop(handle);
        if added {
            // Just accepted on a link that is up, usable at once (IPv6 without DAD).
            return Ok(());
        }
        // Already there (adoption after an agent restart): is it usable?
        self.check().await
    }

    async fn offline(&self) -> Result<(), Failure> {
        let handle = connect()?;
        let link = match self.link(&handle).await {
            Ok(link) => link,
            // The interface is gone, and the address with it.
            Err(f) if f.reason == FailureReason::LinkDown => return Ok(()),
            Err(f) => return Err(f),
        };
        if self.find(&handle, link.index).await?.is_none() {
            return Ok(());
        }
        match handle
            .address()
            .del(self.message(link.index))
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV)) => {}
            Err(e) => {
                return Err(netlink_failure(
                    &format!(
                        "remove {} from {}",
                        self.config.address, self.config.interface
                    ),
                    e,
                ))
            }
        }
        // Offline only once it is gone: read back, not assumed from the answer.
        if self.find(&handle, link.index).await?.is_some() {
            return Err(Failure::new(
                FailureReason::Io,
                format!(
                    "{} is still on {} after its removal",
                    self.config.address, self.config.interface
                ),
            ));
        }
        Ok(())
    }

    async fn terminate(&self) -> Result<(), Failure> {
        self.offline().await
    }

    async fn looks_alive(&self, _progress: &Progress) -> Result<(), Failure> {
        self.check().await
    }

    async fn is_alive(&self, _progress: &Progress) -> Result<(), Failure> {
        self.check().await
    }

    fn provides_failure_signal(&self) -> bool {
        true
    }

    async fn failure(&self) -> Failure {
        let watched = async {
            let handle = connect()?;
            let index = self.link(&handle).await?.index;
            drop(handle);
            let watch = events::watch(index, self.config.address)?;
            // Watched first, then looked: a change in between is not missed.
            let now = self.check_index().await?;
            if now != index {
                return Err(self.link_down("was replaced"));
            }
            Ok(watch)
        };
        let mut watch = match watched.await {
            Ok(watch) => watch,
            Err(failure) => return failure,
        };
        match watch.changes.recv().await {
            Some(events::Change::AddressRemoved) => self.missing(),
            Some(events::Change::LinkDown) => self.link_down("went down or lost its carrier"),
            Some(events::Change::LinkRemoved) => self.link_down("removed"),
            Some(events::Change::Ended) | None => {
                Failure::new(FailureReason::Io, "the netlink subscription ended")
            }
        }
    }
}

impl TypeConfig for IpConfig {
    const NAME: &'static str = "ip";
    const FAILURE_SIGNAL: bool = true;

    fn validate(&self) -> Vec<(&'static str, String)> {
        IpConfig::validate(self)
    }

    fn build(&self, _cx: &BuildContext) -> Arc<dyn Resource> {
        Arc::new(IpResource::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Netns;
    use std::time::Duration;

    fn config(address: &str, interface: &str) -> IpConfig {
        IpConfig {
            address: address.parse().unwrap(),
            interface: interface.into(),
            label: None,
            announcements: 3,
        }
    }

    #[test]
    fn addresses_parse_or_explain() {
        let c: IpCidr = "192.0.2.10/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.10/24");
        assert_eq!("2001:db8::1".parse::<IpCidr>().unwrap().prefix, 128);
        assert!("192.0.2.10/33"
            .parse::<IpCidr>()
            .unwrap_err()
            .contains("0 to 32"));
        assert!("127.0.0.1/8"
            .parse::<IpCidr>()
            .unwrap_err()
            .contains("loopback"));
        assert!("mail/24"
            .parse::<IpCidr>()
            .unwrap_err()
            .contains("invalid address"));
        let mut c = config("192.0.2.10/24", "eth0");
        c.label = Some("eth1:x".into());
        assert_eq!(c.validate()[0].0, "label");
        c.label = Some("eth0:mail".into());
        assert!(c.validate().is_empty());
    }

    #[test]
    fn announcements_are_well_formed() {
        let mac = [2, 0, 0, 0, 0, 1];
        let arp = announce::arp_packet(mac, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(&arp[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&arp[8..14], &mac);
        assert_eq!(
            &arp[14..18],
            &arp[24..28],
            "sender and target are both the address"
        );
        let na = announce::na_packet(mac, "2001:db8::5".parse().unwrap());
        assert_eq!((na[0], na[4], na[24], na[25]), (136, 0x20, 2, 1));
    }

    #[test]
    fn online_adds_offline_removes_and_checks_see_both() {
        let ns = Netns::new("ip-basic");
        ns.sh("ip link add a0 type veth peer name a1 && ip link set a0 up && ip link set a1 up");
        ns.block_on(async {
            let mut c = config("10.77.0.10/24", "a0");
            c.label = Some("a0:vip".into());
            let r = IpResource::new(c);
            let p = Progress::default();
            assert_eq!(
                r.is_alive(&p).await.unwrap_err().reason,
                FailureReason::AddressMissing
            );
            r.online(&p).await.unwrap();
            r.online(&p).await.expect("online again keeps the address");
            r.is_alive(&p).await.unwrap();
            r.offline().await.unwrap();
            r.offline().await.expect("offline again is fine");
            assert_eq!(
                r.looks_alive(&p).await.unwrap_err().reason,
                FailureReason::AddressMissing
            );

            let v6 = IpResource::new(config("fd00:77::10/64", "a0"));
            v6.online(&p).await.unwrap();
            v6.is_alive(&p).await.expect("no DAD: usable at once");
            v6.offline().await.unwrap();

            let missing = IpResource::new(config("10.77.0.11/24", "nope0"));
            assert_eq!(
                missing.online(&p).await.unwrap_err().reason,
                FailureReason::LinkDown
            );
        });
        let shown = ns.sh("ip -4 addr show dev a0");
        assert!(!shown.contains("10.77.0.10"), "{shown}");
    }

    #[test]
    fn the_same_address_with_another_prefix_is_never_adopted_or_removed() {
        let ns = Netns::new("ip-prefix");
        ns.sh("ip link add a0 type veth peer name a1 && ip link set a0 up && ip link set a1 up");
        ns.sh("ip addr add 10.77.0.10/32 dev a0");
        ns.block_on(async {
            let r = IpResource::new(config("10.77.0.10/24", "a0"));
            let p = Progress::default();
            assert_eq!(
                r.is_alive(&p).await.unwrap_err().reason,
                FailureReason::AddressMissing,
                "a /32 someone else added is not this /24"
            );
            // Whether the kernel takes the /24 beside it or not, the /32 is left alone.
            let _ = r.online(&p).await;
            r.offline().await.unwrap();
        });
        let shown = ns.sh("ip -4 addr show dev a0");
        assert!(shown.contains("10.77.0.10/32"), "{shown}");
        assert!(!shown.contains("10.77.0.10/24"), "{shown}");
    }

    #[test]
    fn the_failure_signal_fires_on_removal_and_link_down() {
        let ns = Netns::new("ip-signal");
        ns.sh("ip link add a0 type veth peer name a1 && ip link set a0 up && ip link set a1 up");
        let name = ns.name.clone();
        ns.block_on(async move {
            let r = IpResource::new(config("10.78.0.10/24", "a0"));
            let p = Progress::default();
            r.online(&p).await.unwrap();
            let shown = Netns::run(&name, "ip -4 addr show dev a0");
            assert!(shown.contains("10.78.0.10/24"), "{shown}");

            let waiting = tokio::spawn({
                let r = IpResource::new(config("10.78.0.10/24", "a0"));
                async move { r.failure().await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                !waiting.is_finished(),
                "no failure while the address is there"
            );
            Netns::run(&name, "ip addr del 10.78.0.10/24 dev a0");
            let failure = tokio::time::timeout(Duration::from_secs(2), waiting)
                .await
                .expect("signalled at once")
                .unwrap();
            assert_eq!(failure.reason, FailureReason::AddressMissing, "{failure}");

            r.online(&p).await.unwrap();
            let waiting = tokio::spawn(async move { r.failure().await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Taking the peer down removes the carrier.
            Netns::run(&name, "ip link set a1 down");
            let failure = tokio::time::timeout(Duration::from_secs(2), waiting)
                .await
                .expect("signalled at once")
                .unwrap();
            assert_eq!(failure.reason, FailureReason::LinkDown, "{failure}");
        });
    }

    /// Two nodes and a client on one bridge: the address moves from `a` to `b`, and the client's
    /// cached MAC changes to b's through the announcement alone, with no traffic of its own.
    #[test]
    fn a_moved_address_is_announced_to_the_neighbours() {
        let client = Netns::new("ip-client");
        let a = Netns::new("ip-node-a");
        let b = Netns::new("ip-node-b");
        client.sh("ip link add br0 type bridge && ip link set br0 up && ip addr add 10.79.0.1/24 dev br0 && ip addr add fd00:79::1/64 nodad dev br0");
        for (i, node) in [&a, &b].into_iter().enumerate() {
            client.sh(&format!(
                "ip link add p{i} type veth peer name eth0 netns {} && ip link set p{i} master br0 up",
                node.name
            ));
            node.sh("ip link set eth0 up");
        }
        let mac = |ns: &Netns| ns.sh("cat /sys/class/net/eth0/address").trim().to_string();
        let (mac_a, mac_b) = (mac(&a), mac(&b));
        let neighbour = |address: &str| client.sh(&format!("ip neigh show {address} dev br0"));
        for address in ["10.79.0.100/24", "fd00:79::100/64"] {
            let ip = address.split('/').next().unwrap().to_string();
            a.block_on(async {
                IpResource::new(config(address, "eth0"))
                    .online(&Progress::default())
                    .await
                    .unwrap()
            });
            client.sh(&format!("ping -c1 -W2 {ip} >/dev/null"));
            assert!(neighbour(&ip).contains(&mac_a), "{}", neighbour(&ip));
            a.block_on(async {
                IpResource::new(config(address, "eth0"))
                    .offline()
                    .await
                    .unwrap()
            });
            // The kernel ignores a second update of the same entry within its locktime (1 s).
            std::thread::sleep(Duration::from_millis(1100));
            b.block_on(async {
                IpResource::new(config(address, "eth0"))
                    .online(&Progress::default())
                    .await
                    .unwrap()
            });
            let mut seen = String::new();
            for _ in 0..20 {
                seen = neighbour(&ip);
                if seen.contains(&mac_b) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                seen.contains(&mac_b),
                "{address}: the client still has {seen}"
            );
        }
    }
}
