//! What every CRM sandbox does the same way: accept connections and serve each with HTTP/1.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type Reply = hyper::Response<Full<Bytes>>;

/// A server that stops when dropped.
pub struct Server {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (port 0 picks a free one) and serves it with `handle`.
pub async fn start<H, F>(addr: &str, handle: H) -> std::io::Result<Server>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(Server {
        addr,
        task: serve(listener, handle),
    })
}

/// Binds `addr` and answers each request with `respond`: a synchronous function of the request's
/// head and body that may ask for its answer to be held back (an injected late answer).
pub async fn start_responding<R>(addr: &str, respond: R) -> std::io::Result<Server>
where
    R: Fn(&hyper::http::request::Parts, &[u8]) -> (Reply, Option<std::time::Duration>)
        + Clone
        + Send
        + Sync
        + 'static,
{
    start(addr, move |request: hyper::Request<hyper::body::Incoming>| {
        let respond = respond.clone();
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let (reply, late) = respond(&parts, &body);
            if let Some(late) = late {
                tokio::time::sleep(late).await;
            }
            Ok(reply)
        }
    })
    .await
}

/// Serves every connection `listener` accepts with `handle`, until the task is aborted.
pub fn serve<H, F>(listener: TcpListener, handle: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}

/// Injected failures, for the sandboxes that have no control API of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Share of calls answered with a server error, the request not applied.
    pub error_rate: f64,
    /// Share of calls applied whose answer is held back for `timeout`, past the client's patience:
    /// the caller cannot tell whether its write happened.
    pub timeout_rate: f64,
    pub timeout: std::time::Duration,
}

/// What one call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Error,
    /// Apply, then answer after this long.
    Late(std::time::Duration),
}

/// Seeded dice over [`Faults`], with counts of what was injected.
#[derive(Debug, Clone)]
pub struct FaultDice {
    faults: Faults,
    rng: fastrand::Rng,
    pub errors: u64,
    pub timeouts: u64,
}

impl FaultDice {
    pub fn new(faults: Faults, seed: u64) -> Self {
        Self {
            faults,
            rng: fastrand::Rng::with_seed(seed),
            errors: 0,
            timeouts: 0,
        }
    }

    pub fn roll(&mut self) -> Fault {
        if self.faults == Faults::default() {
            return Fault::None;
        }
        let roll = self.rng.f64();
        if roll < self.faults.timeout_rate {
            self.timeouts += 1;
            Fault::Late(self.faults.timeout)
        } else if roll < self.faults.timeout_rate + self.faults.error_rate {
            self.errors += 1;
            Fault::Error
        } else {
            Fault::None
        }
    }
}

impl Default for FaultDice {
    fn default() -> Self {
        Self::new(Faults::default(), 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dice_inject_about_the_configured_shares_and_count_them() {
        let mut dice = FaultDice::new(
            Faults {
                error_rate: 0.2,
                timeout_rate: 0.1,
                timeout: std::time::Duration::from_secs(1),
            },
            7,
        );
        let rolls: Vec<Fault> = (0..10_000).map(|_| dice.roll()).collect();
        let errors = rolls.iter().filter(|f| **f == Fault::Error).count() as u64;
        assert_eq!(errors, dice.errors);
        assert!((1_800..2_200).contains(&dice.errors), "{}", dice.errors);
        assert!((850..1_150).contains(&dice.timeouts), "{}", dice.timeouts);
        assert_eq!(FaultDice::default().roll(), Fault::None);
    }
}
