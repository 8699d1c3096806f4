//! `ethtool -K <ifname> tx off` without the `ethtool` process: one ETHTOOL_MSG_FEATURES_SET
//! request over generic netlink (Linux 5.6 and newer). A pod start used to fork and exec
//! `ethtool` for this; on a busy node that cost more than the rest of the plumbing.
//!
//! The request names the feature bits (`tx-checksum-*`) rather than their indexes, so nothing
//! here depends on the kernel's feature numbering. Call it from a thread inside the namespace
//! of the interface (the socket is made where the thread is).

use std::sync::OnceLock;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_OMIT_REPLY: u32 = 1 << 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;

/// The features `ethtool -K <dev> tx off` turns off. A veth offers `tx-checksum-ip-generic`
/// (and `tx-checksum-sctp`); bits a device does not offer are left as they are by the kernel.
const TX_CHECKSUM: &[&str] = &["tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6", "tx-checksum-sctp"];

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink attribute: header, payload, padding.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut v = Vec::with_capacity(align4(len));
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align4(len), 0);
    v
}

fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &parts.concat())
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A generic netlink request: netlink header, genl header (command, version), attributes.
fn message(family: u16, cmd: u8, version: u8, seq: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body = attrs.concat();
    let len = 16 + 4 + body.len();
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(len as u32).to_ne_bytes());
    v.extend_from_slice(&family.to_ne_bytes());
    v.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&[cmd, version, 0, 0]);
    v.extend_from_slice(&body);
    v
}

/// Sends `msg` and reads until the kernel's acknowledgement: the payloads of the messages
/// before it, or the error it reports.
fn request(socket: &Socket, msg: &[u8], seq: u32) -> Result<Vec<Vec<u8>>, String> {
    socket.send(msg, 0).map_err(|e| format!("sending: {e}"))?;
    let mut replies = Vec::new();
    loop {
        let (buf, _) = socket.recv_from_full().map_err(|e| format!("receiving: {e}"))?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let word = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
            let len = word(at) as usize;
            if len < 16 || at + len > buf.len() {
                return Err("malformed netlink reply".into());
            }
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if word(at + 8) == seq {
                if kind == NLMSG_ERROR {
                    if len < 20 {
                        return Err("malformed netlink acknowledgement".into());
                    }
                    let errno = -(word(at + 16) as i32);
                    return if errno == 0 {
                        Ok(replies)
                    } else {
                        Err(std::io::Error::from_raw_os_error(errno).to_string())
                    };
                }
                replies.push(buf[at + 16..at + len].to_vec());
            }
            at += align4(len);
        }
    }
}

/// The attributes of a generic netlink payload (after its 4-byte genl header).
fn attributes(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 4;
    std::iter::from_fn(move || {
        if at + 4 > payload.len() {
            return None;
        }
        let len = u16::from_ne_bytes([payload[at], payload[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]) & !NLA_F_NESTED;
        if len < 4 || at + len > payload.len() {
            return None;
        }
        let value = &payload[at + 4..at + len];
        at += align4(len);
        Some((kind, value))
    })
}

/// A generic netlink socket in the calling thread's namespace, for
/// [`disable_tx_checksum_with`] from any thread afterwards (a socket keeps the namespace it
/// was made in).
pub fn socket() -> Result<Socket, String> {
    let mut s = Socket::new(NETLINK_GENERIC).map_err(|e| format!("generic netlink socket: {e}"))?;
    s.bind_auto().map_err(|e| format!("binding the generic netlink socket: {e}"))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(|e| format!("connecting the generic netlink socket: {e}"))?;
    Ok(s)
}

/// The `ethtool` generic netlink family's id (the same in every namespace: resolved once).
fn family(socket: &Socket) -> Result<u16, String> {
    static FAMILY: OnceLock<u16> = OnceLock::new();
    if let Some(id) = FAMILY.get() {
        return Ok(*id);
    }
    let msg = message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 2, 1, &[attr(CTRL_ATTR_FAMILY_NAME, &cstr("ethtool"))]);
    let replies = request(socket, &msg, 1).map_err(|e| format!("looking up the ethtool netlink family: {e}"))?;
    let id = replies
        .iter()
        .flat_map(|p| attributes(p))
        .find_map(|(k, v)| (k == CTRL_ATTR_FAMILY_ID && v.len() >= 2).then(|| u16::from_ne_bytes([v[0], v[1]])))
        .ok_or("the kernel has no ethtool netlink family (Linux 5.6 or newer is needed)")?;
    Ok(*FAMILY.get_or_init(|| id))
}

/// Turns TX checksum offload off on `ifname` (in the calling thread's namespace).
pub fn disable_tx_checksum(ifname: &str) -> Result<(), String> {
    disable_tx_checksum_with(&socket()?, ifname)
}

/// Turns TX checksum offload off on `ifname` in the namespace `socket` was made in. The kernel
/// answers within the request (no waiting on another party).
pub fn disable_tx_checksum_with(socket: &Socket, ifname: &str) -> Result<(), String> {
    let family = family(socket)?;
    let header = nested(
        ETHTOOL_A_FEATURES_HEADER,
        &[
            attr(ETHTOOL_A_HEADER_DEV_NAME, &cstr(ifname)),
            attr(ETHTOOL_A_HEADER_FLAGS, &ETHTOOL_FLAG_OMIT_REPLY.to_ne_bytes()),
        ],
    );
    // A list of named bits without ETHTOOL_A_BITSET_BIT_VALUE: each one turned off.
    let bits: Vec<Vec<u8>> = TX_CHECKSUM
        .iter()
        .map(|name| nested(ETHTOOL_A_BITSET_BITS_BIT, &[attr(ETHTOOL_A_BITSET_BIT_NAME, &cstr(name))]))
        .collect();
    let wanted = nested(ETHTOOL_A_FEATURES_WANTED, &[nested(ETHTOOL_A_BITSET_BITS, &bits)]);
    let msg = message(family, ETHTOOL_MSG_FEATURES_SET, ETHTOOL_GENL_VERSION, 2, &[header, wanted]);
    request(socket, &msg, 2).map(drop).map_err(|e| format!("turning TX checksum offload off on {ifname}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let a = attr(ETHTOOL_A_HEADER_DEV_NAME, &cstr("eth0"));
        assert_eq!(a.len(), 12);
        assert_eq!(&a[..4], &[9, 0, 2, 0]);
        let n = nested(1, std::slice::from_ref(&a));
        assert_eq!(u16::from_ne_bytes([n[2], n[3]]), 1 | NLA_F_NESTED);
        assert_eq!(&n[4..], &a[..]);
    }

    #[test]
    fn reply_attributes_are_read_back() {
        let payload = [vec![CTRL_CMD_GETFAMILY, 2, 0, 0], attr(CTRL_ATTR_FAMILY_ID, &21u16.to_ne_bytes())].concat();
        let found: Vec<_> = attributes(&payload).collect();
        assert_eq!(found, vec![(CTRL_ATTR_FAMILY_ID, &21u16.to_ne_bytes()[..])]);
        // A truncated attribute ends the walk rather than reading past the buffer.
        assert_eq!(attributes(&payload[..payload.len() - 3]).count(), 0);
    }
}
