//! Connection limits shared by every connection-oriented transport (TCP,
//! TLS, WS, WSS): a node-wide cap and a cap per source IP address, taken
//! before a connection costs anything more than its socket (no TLS
//! handshake, no WebSocket upgrade, no buffers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::metric;

/// The node-wide and per-source connection counts.
pub(super) struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_per_source: usize,
}

/// One admitted connection: gives its places back when dropped.
pub(super) struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    source: IpAddr,
}

impl ConnectionLimits {
    pub(super) fn new(max_total: usize, max_per_source: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            total: Arc::new(Semaphore::new(max_total)),
            per_source: Mutex::new(HashMap::new()),
            max_per_source: max_per_source.max(1),
        })
    }

    /// A place for a connection from `source`, or `None` (counted in the
    /// dropped metric with the reason) when the node or that source has
    /// too many. `transport` names the metric's reason.
    pub(super) fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        transport: &'static str,
    ) -> Option<ConnectionPermit> {
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            metrics::counter!(metric::DROPPED, "reason" => connections_reason(transport))
                .increment(1);
            return None;
        };
        let mut map = self.per_source.lock().ok()?;
        let count = map.entry(source).or_insert(0);
        if *count >= self.max_per_source {
            metrics::counter!(metric::DROPPED, "reason" => "connections_per_source").increment(1);
            tracing::debug!(%source, transport, "connection refused: per-source limit");
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            _total: total,
            limits: self.clone(),
            source,
        })
    }
}

/// The dropped metric's reason for the node-wide limit. TCP keeps the
/// name it always had.
fn connections_reason(transport: &'static str) -> &'static str {
    match transport {
        "TLS" => "tls_connections",
        "WS" => "ws_connections",
        "WSS" => "wss_connections",
        _ => "tcp_connections",
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Ok(mut map) = self.limits.per_source.lock() {
            if let Some(count) = map.get_mut(&self.source) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&self.source);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_the_node_its_total() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limits.admit(a, "TCP").unwrap();
        let _a2 = limits.admit(a, "TLS").unwrap();
        assert!(limits.admit(a, "WS").is_none(), "per-source limit");
        let _b1 = limits.admit(b, "WSS").unwrap();
        assert!(limits.admit(b, "TCP").is_none(), "node-wide limit");
        drop(a1);
        assert!(limits.admit(a, "TCP").is_some(), "a place given back");
        assert_eq!(limits.per_source.lock().unwrap().len(), 2);
    }
}
