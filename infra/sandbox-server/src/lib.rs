//! What every CRM sandbox does the same way: serve its axum router on a port, and roll the dice
//! for injected faults.

use tokio::net::TcpListener;

pub use axum;

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

/// Binds `addr` (port 0 picks a free one) and serves `router` on it until the server is dropped.
pub async fn start(addr: &str, router: axum::Router) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // `serve` only returns when the listener fails; the sandbox is gone then anyway.
        let _ = axum::serve(listener, router).await;
    });
    Ok(Server { addr, task })
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
