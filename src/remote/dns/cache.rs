//! Answers kept as long as their TTL says (RFC 1035 3.2.1), negative ones as long as their SOA says
//! (RFC 2308 section 5), bounded in size and shared by every thread that resolves; time is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::Data;

/// Records are kept at most a day, whatever their TTL says.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Negative answers at most three hours (the upper end of what RFC 2308 section 5 recommends).
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(3 * 3600);
/// How many names a resolver's cache holds: a few hundred kilobytes at most.
pub const DEFAULT_CAPACITY: usize = 4096;

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The records of the type asked for; none when the name exists without them.
    Records(Vec<Data>),
    /// The name does not exist (NXDOMAIN), whatever the type.
    NoSuchName,
}

impl Found {
    fn is_negative(&self) -> bool {
        match self {
            Found::Records(records) => records.is_empty(),
            Found::NoSuchName => true,
        }
    }
}

/// The cache: at most `capacity` names, each with what is known of it and until when.
#[derive(Debug)]
pub struct Cache {
    names: Mutex<HashMap<String, Known>>,
    capacity: usize,
}

/// What is known about one name.
#[derive(Debug, Default)]
struct Known {
    /// Until when the name is known not to exist.
    missing_until: Option<Instant>,
    /// Per record type: its records and until when they hold.
    types: Vec<(u16, Vec<Data>, Instant)>,
}

impl Known {
    /// When the last thing known here expires.
    fn expires(&self) -> Option<Instant> {
        let types = self.types.iter().map(|&(_, _, until)| until);
        self.missing_until.into_iter().chain(types).max()
    }
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            names: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// What is known of `name`'s records of type `qtype` at `now`, if anything still holds.
    pub fn get(&self, name: &str, qtype: u16, now: Instant) -> Option<Found> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let known = names.get(name)?;
        if known.missing_until.is_some_and(|until| until > now) {
            return Some(Found::NoSuchName);
        }
        known
            .types
            .iter()
            .find(|&&(known_type, _, until)| known_type == qtype && until > now)
            .map(|(_, records, _)| Found::Records(records.clone()))
    }

    /// Keeps `found` for `name` and `qtype` for `ttl` seconds from `now` (at most a day, or three hours when
    /// negative); a TTL of zero keeps nothing. When the cache is full, expired names go first, then the one
    /// that would expire soonest.
    pub fn put(&self, name: &str, qtype: u16, found: Found, ttl: u32, now: Instant) {
        let limit = if found.is_negative() {
            MAX_NEGATIVE_TTL
        } else {
            MAX_TTL
        };
        let ttl = Duration::from_secs(ttl.into()).min(limit);
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let until = now + ttl;
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if !names.contains_key(name) && names.len() >= self.capacity {
            make_room(&mut names, self.capacity, now);
        }
        let known = names.entry(name.to_string()).or_default();
        match found {
            Found::NoSuchName => {
                *known = Known {
                    missing_until: Some(until),
                    types: Vec::new(),
                }
            }
            Found::Records(records) => {
                known.missing_until = None;
                known
                    .types
                    .retain(|&(known_type, _, _)| known_type != qtype);
                known.types.push((qtype, records, until));
            }
        }
    }
}

/// Leaves room for one more name: drops the expired ones, then, if need be, the one expiring soonest.
fn make_room(names: &mut HashMap<String, Known>, capacity: usize, now: Instant) {
    names.retain(|_, known| known.expires().is_some_and(|until| until > now));
    if names.len() < capacity {
        return;
    }
    let soonest = names
        .iter()
        .min_by_key(|(_, known)| known.expires())
        .map(|(name, _)| name.clone());
    if let Some(name) = soonest {
        names.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::remote::dns::wire::{TYPE_A, TYPE_AAAA, TYPE_MX};

    fn a(last: u8) -> Found {
        Found::Records(vec![Data::A(Ipv4Addr::new(192, 0, 2, last))])
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_answer_holds_for_its_ttl_and_no_longer() {
        let (cache, t0) = (Cache::new(10), Instant::now());
        cache.put("host.test", TYPE_A, a(1), 60, t0);
        assert_eq!(cache.get("host.test", TYPE_A, t0 + secs(59)), Some(a(1)));
        assert_eq!(cache.get("host.test", TYPE_A, t0 + secs(60)), None);
        assert_eq!(cache.get("host.test", TYPE_AAAA, t0), None, "another type");
        assert_eq!(cache.get("other.test", TYPE_A, t0), None, "another name");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let (cache, t0) = (Cache::new(10), Instant::now());
        cache.put("host.test", TYPE_A, a(1), 0, t0);
        assert_eq!(cache.get("host.test", TYPE_A, t0), None);
    }

    #[test]
    fn a_missing_name_is_missing_for_every_type_until_it_appears() {
        let (cache, t0) = (Cache::new(10), Instant::now());
        cache.put("host.test", TYPE_AAAA, a(9), 600, t0);
        cache.put("host.test", TYPE_MX, Found::NoSuchName, 60, t0);
        for qtype in [TYPE_A, TYPE_AAAA, TYPE_MX] {
            assert_eq!(
                cache.get("host.test", qtype, t0 + secs(1)),
                Some(Found::NoSuchName)
            );
        }
        assert_eq!(
            cache.get("host.test", TYPE_AAAA, t0 + secs(61)),
            None,
            "what was known before the NXDOMAIN is forgotten"
        );
        cache.put("host.test", TYPE_A, a(2), 60, t0 + secs(2));
        assert_eq!(cache.get("host.test", TYPE_A, t0 + secs(3)), Some(a(2)));
        assert_eq!(cache.get("host.test", TYPE_MX, t0 + secs(3)), None);
    }

    #[test]
    fn no_records_of_a_type_is_an_answer_too() {
        let (cache, t0) = (Cache::new(10), Instant::now());
        cache.put("host.test", TYPE_MX, Found::Records(Vec::new()), 30, t0);
        assert_eq!(
            cache.get("host.test", TYPE_MX, t0 + secs(29)),
            Some(Found::Records(Vec::new()))
        );
    }

    #[test]
    fn long_ttls_are_cut_to_a_day_and_negative_ones_to_three_hours() {
        let (cache, t0) = (Cache::new(10), Instant::now());
        let week = 7 * 24 * 3600;
        cache.put("host.test", TYPE_A, a(1), week, t0);
        cache.put("gone.test", TYPE_A, Found::NoSuchName, week, t0);
        cache.put("bare.test", TYPE_MX, Found::Records(Vec::new()), week, t0);
        let hours = |n: u64| t0 + secs(n * 3600 - 1);
        assert_eq!(cache.get("host.test", TYPE_A, hours(24)), Some(a(1)));
        assert_eq!(cache.get("host.test", TYPE_A, hours(24) + secs(1)), None);
        assert!(cache.get("gone.test", TYPE_A, hours(3)).is_some());
        assert!(cache.get("gone.test", TYPE_A, hours(3) + secs(1)).is_none());
        assert!(cache.get("bare.test", TYPE_MX, hours(3)).is_some());
        assert!(
            cache
                .get("bare.test", TYPE_MX, hours(3) + secs(1))
                .is_none()
        );
    }

    #[test]
    fn a_full_cache_drops_expired_names_then_the_one_expiring_soonest() {
        let (cache, t0) = (Cache::new(2), Instant::now());
        cache.put("short.test", TYPE_A, a(1), 10, t0);
        cache.put("long.test", TYPE_A, a(2), 100, t0);
        cache.put("new.test", TYPE_A, a(3), 50, t0 + secs(1));
        assert_eq!(cache.get("short.test", TYPE_A, t0 + secs(2)), None);
        assert_eq!(cache.get("long.test", TYPE_A, t0 + secs(2)), Some(a(2)));
        assert_eq!(cache.get("new.test", TYPE_A, t0 + secs(2)), Some(a(3)));
        cache.put("late.test", TYPE_A, a(4), 100, t0 + secs(20));
        assert_eq!(cache.get("short.test", TYPE_A, t0 + secs(20)), None);
        assert_eq!(cache.get("new.test", TYPE_A, t0 + secs(20)), None);
        assert_eq!(cache.get("long.test", TYPE_A, t0 + secs(20)), Some(a(2)));
        assert_eq!(cache.get("late.test", TYPE_A, t0 + secs(20)), Some(a(4)));
        cache.put("long.test", TYPE_AAAA, a(5), 100, t0 + secs(21));
        assert_eq!(
            cache.names.lock().unwrap().len(),
            2,
            "another type for a known name needs no room"
        );
    }
}
