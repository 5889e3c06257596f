//! Who "we" are in a lock record, computed the way Python borg does, so that a Python borg on the
//! same host and borgd recognise each other's locks (and each other's dead processes).
//!
//! Python borg's host id is `BORG_HOST_ID`, else `f"{fqdn}@{uuid.getnode()}"`, where the fqdn is
//! the canonical name `getaddrinfo(gethostname(), AI_CANONNAME)` reports and `uuid.getnode()` is,
//! through libuuid, the MAC address of the first interface (in `SIOCGIFCONF` order, i.e. the
//! interfaces with an IPv4 address) whose hardware address is not all zeros.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// This host's id as Python borg would compute it.
pub fn host_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| match std::env::var("BORG_HOST_ID") {
        Ok(id) if !id.is_empty() => id,
        _ => format!("{}@{}", fqdn(), node_id()),
    })
}

/// Whether a process on this host may be alive (permission denied counts as alive).
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether a lock owner `(host, pid, thread)` may still be alive, by Python borg's rule: owners
/// on other hosts and non-zero thread ids are assumed alive; otherwise the pid is checked.
pub fn owner_alive(host: &str, pid: i64, thread: i64) -> bool {
    host != host_id() || thread != 0 || pid_alive(pid)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

fn fqdn() -> String {
    let name = hostname();
    let Ok(c_name) = CString::new(name.clone()) else { return name };
    // SAFETY: hints is zero-initialised as getaddrinfo expects; res is freed with freeaddrinfo.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_socktype = libc::SOCK_DGRAM;
        hints.ai_flags = libc::AI_CANONNAME;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut res) != 0 {
            return name;
        }
        let mut out = name;
        let mut p = res;
        while !p.is_null() {
            if !(*p).ai_canonname.is_null() {
                let canon = CStr::from_ptr((*p).ai_canonname).to_string_lossy().into_owned();
                if !canon.is_empty() {
                    out = canon;
                    break;
                }
            }
            p = (*p).ai_next;
        }
        libc::freeaddrinfo(res);
        out
    }
}

/// The 48-bit node id libuuid (and so Python's `uuid.getnode()`) picks.
fn node_id() -> u64 {
    interface_macs().into_iter().find(|mac| *mac != 0).unwrap_or_else(random_node)
}

/// Hardware addresses of the interfaces that have an IPv4 address, in kernel order.
fn interface_macs() -> Vec<u64> {
    let mut ipv4_names: Vec<String> = Vec::new();
    let mut macs: Vec<(String, u64)> = Vec::new();
    // SAFETY: getifaddrs allocates a list we only read and free with freeifaddrs.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return Vec::new();
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET if !ipv4_names.contains(&name) => ipv4_names.push(name),
                    libc::AF_PACKET => {
                        let ll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                        let mac = ll.sll_addr[..6].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                        macs.push((name, mac));
                    }
                    _ => {}
                }
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    ipv4_names.iter().filter_map(|n| macs.iter().find(|(m, _)| m == n).map(|(_, mac)| *mac)).collect()
}

/// libuuid's fallback: a random node with the multicast bit set (differs per process, so such
/// hosts can never recognise a dead local owner — the same as Python borg there).
fn random_node() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) & 0xffff_ffff_ffff) | 0x0100_0000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_absurd_pids_are_not() {
        assert!(pid_alive(i64::from(std::process::id())));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
        assert!(!pid_alive(i64::MAX));
        assert!(owner_alive("some-other-host@1", 999_999_999, 0));
        assert!(owner_alive(host_id(), 999_999_999, 7), "non-zero thread ids count as alive");
    }

    #[test]
    fn host_id_has_fqdn_and_node() {
        let id = host_id();
        if std::env::var("BORG_HOST_ID").is_err() {
            let (_, node) = id.rsplit_once('@').expect("fqdn@node");
            assert!(node.parse::<u64>().is_ok());
        }
    }
}
