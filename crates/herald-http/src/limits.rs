//! Connection limits for the streaming endpoints (SSE, WebSocket, long poll):
//! per client IP (429) and for the whole server (503), both with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::ApiError;

/// Counts open streaming connections.
#[derive(Debug, Default)]
pub struct ConnectionLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a slot when dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<ConnectionLimiter>,
    ip: Option<IpAddr>,
}

impl Slot {
    /// The client address the slot counts against; `None` when unknown.
    pub(crate) fn client(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl ConnectionLimiter {
    /// Takes a slot for `ip` (unknown when Herald is nested in another server).
    pub fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, ApiError> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::overloaded(
                "too_many_connections",
                "the server holds its maximum number of connections; retry shortly",
            ));
        }
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(ApiError::too_many_requests(
                    "too_many_connections",
                    format!("at most {max_per_ip} connections per client address"),
                ));
            }
            *n += 1;
        }
        Ok(Slot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Streaming connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = self
                .limiter
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn limits() {
        let l = Arc::new(ConnectionLimiter::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = l.acquire(Some(a), 3, 2).unwrap();
        let _s2 = l.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(
            l.acquire(Some(a), 3, 2).unwrap_err().status,
            StatusCode::TOO_MANY_REQUESTS
        );
        let _s3 = l.acquire(Some(b), 3, 2).unwrap();
        assert_eq!(
            l.acquire(Some(b), 3, 2).unwrap_err().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        drop(s1);
        let _s4 = l.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(l.open(), 3);
    }
}
