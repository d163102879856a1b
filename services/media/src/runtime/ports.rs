//! RTP/RTCP port pairs from a configured range (RFC 3550 s.11: RTP on an
//! even port, RTCP on the next odd one).
//!
//! Binding is the only check that a pair is free: nothing is booked, so
//! nothing can go stale. A pair is in use exactly as long as its sockets
//! are open, and free again once the session that owns them drops them.
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::UdpSocket;

use crate::sdp::LocalMedia;
use crate::{Error, Result};

/// A bound RTP/RTCP socket pair, and the address to advertise in SDP.
#[derive(Debug)]
pub struct MediaPorts {
    /// RTP's port; RTCP is on the next one.
    pub rtp_port: u16,
    /// The address the peer sends to (the advertised one).
    pub address: IpAddr,
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: UdpSocket,
}

impl MediaPorts {
    pub fn rtcp_port(&self) -> u16 {
        self.rtp_port.wrapping_add(1)
    }

    /// The two sockets (RTP, RTCP) out of tokio's reactor, still
    /// non-blocking, for an owner that reads them on its own clock rather
    /// than on every packet's wake-up (a conference room,
    /// [`crate::room`]).
    pub(crate) fn into_std(self) -> Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        Ok((self.rtp.into_std()?, self.rtcp.into_std()?))
    }

    /// What an SDP offer or answer says about these ports.
    pub fn local_media(&self, session_id: u64, session_version: u64) -> LocalMedia {
        LocalMedia {
            address: self.address,
            rtp_port: self.rtp_port,
            session_id,
            session_version,
        }
    }
}

/// Hands out pairs round-robin over the range, so that a pair just
/// released is the last to be reused (late packets of the last call do
/// not reach the next one).
#[derive(Debug)]
pub(super) struct PortAllocator {
    bind: IpAddr,
    advertised: IpAddr,
    first_port: u16,
    pairs: usize,
    next: AtomicUsize,
}

impl PortAllocator {
    /// Checks the range: an even first port and at least one pair.
    pub(super) fn new(
        bind: IpAddr,
        advertised: IpAddr,
        ports: &RangeInclusive<u16>,
    ) -> Result<Self> {
        let (first, last) = (*ports.start(), *ports.end());
        if first % 2 != 0 {
            return Err(invalid(format!(
                "media port range {first}..={last} must start on an even port (RTP is even, RTCP the next odd one)"
            )));
        }
        if first == 0 || last <= first {
            return Err(invalid(format!(
                "media port range {first}..={last} must hold at least one even/odd pair of ports above 0"
            )));
        }
        // An odd last port ends the last pair; an even one is left out.
        let pairs = (usize::from(last) - usize::from(first)).div_ceil(2);
        Ok(PortAllocator {
            bind,
            advertised,
            first_port: first,
            pairs,
            next: AtomicUsize::new(0),
        })
    }

    /// Binds the next free pair; every pair is tried once at most.
    pub(super) async fn allocate(&self) -> Result<MediaPorts> {
        for _ in 0..self.pairs {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.pairs;
            // In range: index < pairs, and the last pair ends at or before
            // the range's last port.
            let rtp_port = self.first_port + (index * 2) as u16;
            let Ok(rtp) = UdpSocket::bind(SocketAddr::new(self.bind, rtp_port)).await else {
                continue;
            };
            let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(self.bind, rtp_port + 1)).await else {
                continue;
            };
            return Ok(MediaPorts {
                rtp_port,
                address: self.advertised,
                rtp,
                rtcp,
            });
        }
        let last = usize::from(self.first_port) + self.pairs * 2 - 1;
        Err(Error::Io(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "no free RTP/RTCP port pair in {}..={last} on {} ({} pairs, all in use): widen the media port range",
                self.first_port, self.bind, self.pairs
            ),
        )))
    }
}

fn invalid(message: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn ranges_start_even_and_hold_a_pair() {
        let check =
            |range: RangeInclusive<u16>| PortAllocator::new(localhost(), localhost(), &range);
        assert!(check(20_000..=30_000).is_ok());
        assert_eq!(check(20_000..=20_001).unwrap().pairs, 1);
        assert_eq!(check(20_000..=20_004).unwrap().pairs, 2);
        let reversed = RangeInclusive::new(30_000, 20_000);
        for bad in [20_001..=30_000, 20_000..=20_000, 0..=10, reversed] {
            let error = check(bad.clone()).unwrap_err().to_string();
            assert!(error.contains("media port range"), "{bad:?}: {error}");
        }
    }
}
