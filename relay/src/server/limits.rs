//! [`ConnLimits`]: how many connections the relay holds, in total and per source address.
//!
//! Each accepted TCP connection takes a [`Slot`] that lives inside the connection's I/O
//! object ([`Counted`]): it is released when the socket is dropped, which for a WebSocket
//! is when the session ends (the upgraded connection owns the same I/O object), not when
//! the HTTP exchange that opened it ends.
//!
//! Over a limit, a connection is not served in full but may take one of a few reserved
//! "health" slots: it can then only ask for `/health` and `/metrics`, under a short
//! deadline, so monitoring still sees a relay that is full. Beyond those it is closed at
//! once.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most health-only connections from one address at once.
pub const HEALTH_PER_IP: usize = 4;

/// What an accepted connection may do.
#[derive(Debug)]
pub enum Admission {
    /// Everything: within both limits.
    Full(Slot),
    /// Over a limit (the label says which): `/health` and `/metrics` only.
    HealthOnly(Slot, &'static str),
    /// Over a limit and no health slot left: close it (the label says which limit).
    Refused(&'static str),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    health: usize,
    health_per_ip: HashMap<IpAddr, usize>,
}

/// The relay's connection counts and limits.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    /// 0: no per-address limit.
    max_per_ip: usize,
    health: usize,
    counts: Mutex<Counts>,
}

impl ConnLimits {
    /// Limits of `max_total` connections, `max_per_ip` per address (0: none) and
    /// `health` health-only connections beyond them.
    pub fn new(max_total: usize, max_per_ip: usize, health: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            health,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Decides what a new connection from `ip` may do, and counts it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        let over = if counts.total >= self.max_total {
            Some("conn_limit_total")
        } else if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            Some("conn_limit_ip")
        } else {
            None
        };
        let Some(limit) = over else {
            counts.total += 1;
            *counts.per_ip.entry(ip).or_default() += 1;
            return Admission::Full(self.slot(ip, false));
        };
        let health_from_ip = counts.health_per_ip.get(&ip).copied().unwrap_or(0);
        if counts.health >= self.health || health_from_ip >= HEALTH_PER_IP {
            return Admission::Refused(limit);
        }
        counts.health += 1;
        *counts.health_per_ip.entry(ip).or_default() += 1;
        Admission::HealthOnly(self.slot(ip, true), limit)
    }

    fn slot(self: &Arc<Self>, ip: IpAddr, health: bool) -> Slot {
        Slot {
            limits: Arc::clone(self),
            ip,
            health,
        }
    }

    /// Connections served in full right now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn release(&self, ip: IpAddr, health: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = if health {
            let c = &mut *counts;
            (&mut c.health, &mut c.health_per_ip)
        } else {
            let c = &mut *counts;
            (&mut c.total, &mut c.per_ip)
        };
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// One counted connection; released on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    health: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.ip, self.health);
    }
}

/// A connection's I/O, holding its [`Slot`] for as long as the socket lives.
pub struct Counted<IO> {
    io: IO,
    _slot: Slot,
}

impl<IO> Counted<IO> {
    /// `io`, counted by `slot`.
    pub fn new(io: IO, slot: Slot) -> Self {
        Counted { io, _slot: slot }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_in_total_with_health_slots_beyond() {
        let limits = ConnLimits::new(3, 2, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a);
        let a2 = limits.admit(a);
        assert!(matches!(
            (&a1, &a2),
            (Admission::Full(_), Admission::Full(_))
        ));
        let a3 = limits.admit(a);
        assert!(matches!(a3, Admission::HealthOnly(_, "conn_limit_ip")));
        assert!(matches!(
            limits.admit(a),
            Admission::Refused("conn_limit_ip")
        ));
        let b1 = limits.admit(b);
        assert!(matches!(b1, Admission::Full(_)));
        assert!(matches!(
            limits.admit(b),
            Admission::Refused("conn_limit_total")
        ));
        assert_eq!(limits.open(), 3);
        drop((a1, a3));
        assert_eq!(limits.open(), 2);
        assert!(matches!(limits.admit(a), Admission::Full(_)));
        assert_eq!(limits.open(), 2, "the slot was dropped right away");
    }
}
