//! Waiting for a condition, never for a fixed time: the condition is polled (quickly at first,
//! then at most every 200 ms) until it holds, and the wait fails naming what it waited for once
//! its deadline has passed.

use std::time::{Duration, Instant};

/// The longest pause between two polls.
const SLOWEST: Duration = Duration::from_millis(200);

/// The pauses of one wait, and its deadline.
struct Polls<'a> {
    what: &'a str,
    within: Duration,
    deadline: Instant,
    pause: Duration,
}

impl<'a> Polls<'a> {
    fn new(what: &'a str, within: Duration) -> Polls<'a> {
        Polls { what, within, deadline: Instant::now() + within, pause: Duration::from_millis(5) }
    }

    /// The pause before the next poll; panics once the deadline has passed.
    fn next(&mut self) -> Duration {
        assert!(Instant::now() < self.deadline, "{}: not within {:?}", self.what, self.within);
        let pause = self.pause;
        self.pause = (pause * 2).min(SLOWEST);
        pause
    }
}

/// Polls `attempt` until it gives a value, for at most `within`; panics naming `what` after.
pub async fn until_some<T>(what: &str, within: Duration, mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    let mut polls = Polls::new(what, within);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        tokio::time::sleep(polls.next()).await;
    }
}

/// Polls `ready` until it holds, for at most `within`; panics naming `what` after.
pub async fn until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    until_some(what, within, async || ready().then_some(())).await
}

/// [`until`] for a test without a runtime: the thread sleeps between polls.
pub fn until_blocking(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let mut polls = Polls::new(what, within);
    while !ready() {
        std::thread::sleep(polls.next());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_ends_the_wait() {
        let started = Instant::now();
        let mut polls = 0;
        until_blocking("the third poll", Duration::from_secs(5), || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    #[should_panic(expected = "never: not within")]
    fn a_condition_that_never_holds_fails_at_the_deadline() {
        until_blocking("never", Duration::from_millis(50), || false);
    }

    #[tokio::test]
    async fn an_async_attempt_gives_its_value() {
        let mut tries = 0;
        let v = until_some("a value", Duration::from_secs(5), async || {
            tries += 1;
            (tries == 2).then_some(tries * 10)
        })
        .await;
        assert_eq!(v, 20);
    }
}
