//! Conditions that stand from pass to pass, logged so that an operator can read the log.
//!
//! A release the archive-copies rule refuses, or a field copy a delayed auto-clean keeps
//! because its group copy is corrupt, is found again at every pass (every `daemon.interval`).
//! Logged each time, a few hundred such copies make thousands of identical lines a minute. A
//! [`Standing`] says a condition once when it starts, again when its wording changes, and at
//! most once per [`Standing::repeat`] (an hour) while it lasts; between those it stays at
//! debug level. The caller counts every occurrence in `/metrics`, so nothing is lost by the
//! silence. A condition not seen for `repeat` is forgotten, and said again if it comes back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a condition that lasts is said again.
pub const REPEAT: Duration = Duration::from_secs(3600);

/// Standing conditions keyed by what they are about (a copy id).
pub struct Standing<K> {
    seen: Mutex<HashMap<K, Said>>,
    repeat: Duration,
}

struct Said {
    what: String,
    logged: Instant,
    seen: Instant,
}

impl<K: Eq + Hash + Clone> Default for Standing<K> {
    fn default() -> Self {
        Standing::new(REPEAT)
    }
}

impl<K: Eq + Hash + Clone> Standing<K> {
    pub fn new(repeat: Duration) -> Self {
        Standing {
            seen: Mutex::new(HashMap::new()),
            repeat,
        }
    }

    /// Notes that condition `what` holds for `key` at `now`; true when it should be logged:
    /// it is new, it changed, or it was last logged `repeat` ago or more.
    pub fn holds(&self, key: &K, what: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().expect("standing lock");
        let repeat = self.repeat;
        // Forget what has not been seen for a while, so the map follows what stands now.
        if seen.len() > 1024 {
            seen.retain(|_, s| now.saturating_duration_since(s.seen) < repeat);
        }
        match seen.get_mut(key) {
            Some(s) if s.what == what && now.saturating_duration_since(s.logged) < repeat => {
                s.seen = now;
                false
            }
            Some(s) if s.what == what && now.saturating_duration_since(s.seen) < repeat => {
                s.logged = now;
                s.seen = now;
                true
            }
            _ => {
                seen.insert(
                    key.clone(),
                    Said {
                        what: what.to_owned(),
                        logged: now,
                        seen: now,
                    },
                );
                true
            }
        }
    }

    /// The condition for `key` is over (the copy was released, the request done).
    pub fn clear(&self, key: &K) {
        self.seen.lock().expect("standing lock").remove(key);
    }

    /// Keeps only the keys for which `keep` is true (those found again by this pass).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        self.seen
            .lock()
            .expect("standing lock")
            .retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One hour of a refusal found at every 10 s pass: said when it starts and once more an
    /// hour later, not 360 times.
    #[test]
    fn an_hour_of_a_standing_condition_is_said_twice() {
        let s = Standing::new(REPEAT);
        let t0 = Instant::now();
        let said = (0..=360)
            .filter(|i| {
                s.holds(
                    &7,
                    "refused: 1 other archive copy",
                    t0 + Duration::from_secs(i * 10),
                )
            })
            .count();
        assert_eq!(said, 2);
    }

    #[test]
    fn a_change_is_said_at_once_and_other_keys_are_apart() {
        let s = Standing::new(REPEAT);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(s.holds(&1, "a", at(0)));
        assert!(!s.holds(&1, "a", at(10)));
        assert!(s.holds(&2, "a", at(10)), "another copy");
        assert!(s.holds(&1, "b", at(20)), "the reason changed");
        assert!(!s.holds(&1, "b", at(30)));
        s.clear(&1);
        assert!(s.holds(&1, "b", at(40)), "over, then back");
    }

    #[test]
    fn a_condition_gone_for_longer_than_the_repeat_is_new_again() {
        let s = Standing::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(s.holds(&1, "a", t0));
        assert!(!s.holds(&1, "a", t0 + Duration::from_secs(59)));
        assert!(s.holds(&1, "a", t0 + Duration::from_secs(200)));
        s.retain(|k| *k != 1);
        assert!(s.holds(&1, "a", t0 + Duration::from_secs(201)));
    }
}
