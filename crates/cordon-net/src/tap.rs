//! The sandbox's network interface: a TAP device inside its network namespace.
//!
//! The sandbox's init (which holds `CAP_NET_ADMIN` in the new namespace and
//! nothing outside it) calls [`create_tap`], then [`configure`], and passes
//! the fd out to the host, where [`crate::stack`] serves the other side.
//! Plain, synchronous syscalls (`open`, `ioctl`) so that it is safe between
//! `fork` and `exec`-free code paths; no netlink, no threads.
//!
//! It does not decide addresses: callers pass [`crate::stack`]'s constants.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Opens `/dev/net/tun` and creates the TAP device `name` (`IFF_TAP | IFF_NO_PI`:
/// whole Ethernet frames, no extra header).
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq(name)?;
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open /dev/net/tun ({e}); the sandbox needs the tun device"),
        ));
    }
    // SAFETY: `raw` was just returned by open(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is, for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot create TAP device {name:?} ({e}); this needs CAP_NET_ADMIN in the network namespace"
            ),
        ));
    }
    Ok(fd)
}

/// Configures the interface `name`: address `addr/prefix`, MTU, the fixed
/// sandbox MAC ([`crate::stack::SANDBOX_MAC`]), up, and a default route via
/// `gateway`. IPv6 on the interface is switched off where the kernel has it,
/// since the gateway would drop it anyway.
pub fn configure(
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
    mtu: u32,
    gateway: Ipv4Addr,
) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("prefix length {prefix} is not between 0 and 32"),
        ));
    }
    let mtu = libc::c_int::try_from(mtu).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("MTU {mtu} is too large"),
        )
    })?;
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let netmask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };

    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_hwaddr = hwaddr(crate::stack::SANDBOX_MAC);
    ioctl(
        &sock,
        libc::SIOCSIFHWADDR,
        &mut req,
        name,
        "set the MAC address of",
    )?;

    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(
        &sock,
        libc::SIOCSIFADDR,
        &mut req,
        name,
        "set the address of",
    )?;

    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(netmask));
    ioctl(
        &sock,
        libc::SIOCSIFNETMASK,
        &mut req,
        name,
        "set the netmask of",
    )?;

    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu;
    ioctl(&sock, libc::SIOCSIFMTU, &mut req, name, "set the MTU of")?;

    disable_ipv6(name);

    let mut req = ifreq(name)?;
    ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        &mut req,
        name,
        "read the flags of",
    )?;
    // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req, name, "bring up")?;

    let mut route = RtEntry::default_route(gateway);
    // SAFETY: SIOCADDRT reads one `struct rtentry`, which `RtEntry` mirrors
    // (linux/route.h), for the duration of the call; `rt_dev` is null.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot add the default route via {gateway} on {name:?}: {e}"),
        ));
    }
    Ok(())
}

/// Best effort: without IPv6 the interface stays quiet (no router
/// solicitations or MLD reports for the gateway to drop).
fn disable_ipv6(name: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Ok(mut f) = File::options().write(true).open(path) {
        let _ = f.write_all(b"1");
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let cname = CString::new(name).map_err(|_| invalid_name(name))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ || name.is_empty() {
        return Err(invalid_name(name));
    }
    // SAFETY: `ifreq` is plain data (a name and a union of integers and
    // sockaddrs) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn invalid_name(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{name:?} is not a valid interface name (1 to {} bytes, no NUL)",
            libc::IFNAMSIZ - 1
        ),
    )
}

fn ioctl(
    sock: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    name: &str,
    what: &str,
) -> io::Result<()> {
    // SAFETY: every request passed here (SIOC[SG]IF*) reads or writes one
    // `ifreq`, which `req` is, for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot {what} interface {name:?}: {e}"),
        ));
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes of plain data;
    // the kernel reads the former through the latter, as C code does.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn hwaddr(mac: [u8; 6]) -> libc::sockaddr {
    // SAFETY: `sockaddr` is plain data for which all-zero bytes are valid.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    sa
}

/// `struct rtentry` from linux/route.h (not in the libc crate for glibc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

impl RtEntry {
    fn default_route(gateway: Ipv4Addr) -> Self {
        RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gateway),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(ifreq("tap0").is_ok());
        assert_eq!(ifreq("").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            ifreq("a-name-that-is-too-long").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(ifreq("bad\0name").is_err());
    }

    #[test]
    fn sockaddr_layout() {
        let sa = sockaddr(Ipv4Addr::new(10, 201, 0, 2));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // Port (2 bytes) then the address in network order.
        let data: Vec<u8> = sa.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(&data[2..6], &[10, 201, 0, 2]);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn bad_prefix_is_rejected_before_any_syscall() {
        let e = configure("tap0", Ipv4Addr::LOCALHOST, 33, 1500, Ipv4Addr::LOCALHOST).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
