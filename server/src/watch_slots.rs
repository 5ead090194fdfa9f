//! The places for watches, shared by both APIs: at most
//! `max_watch_streams` open on the server, and, with auth on, at most
//! `max_watch_streams_per_user` of them for one user, so that one user
//! cannot take every place and keep the others from watching.

use crate::config::Limits;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct WatchSlots {
    all: Arc<Semaphore>,
    total: usize,
    per_user: usize,
    /// Open watches per user (users with none are absent).
    users: Mutex<HashMap<String, usize>>,
}

/// One open watch's place; given back when dropped.
pub struct WatchSlot {
    _place: OwnedSemaphorePermit,
    user: Option<String>,
    slots: Arc<WatchSlots>,
}

impl WatchSlots {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(WatchSlots {
            all: Arc::new(Semaphore::new(limits.max_watch_streams)),
            total: limits.max_watch_streams,
            per_user: limits.max_watch_streams_per_user,
            users: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a watch of `user` (`None`: auth is off), or why there
    /// is none (for RESOURCE_EXHAUSTED).
    pub fn take(self: &Arc<Self>, user: Option<&str>) -> Result<WatchSlot, String> {
        let mut users = self.users.lock();
        if let Some(user) = user {
            if users.get(user).copied().unwrap_or(0) >= self.per_user {
                return Err(format!(
                    "max_watch_streams_per_user = {} watches of user {user:?} are open",
                    self.per_user
                ));
            }
        }
        let place = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("max_watch_streams = {} watches are open", self.total))?;
        if let Some(user) = user {
            *users.entry(user.to_owned()).or_default() += 1;
        }
        Ok(WatchSlot {
            _place: place,
            user: user.map(str::to_owned),
            slots: self.clone(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let Some(user) = &self.user else {
            return;
        };
        let mut users = self.slots.users.lock();
        if let Some(open) = users.get_mut(user) {
            *open -= 1;
            if *open == 0 {
                users.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_takes_no_more_than_its_share_and_gets_its_places_back() {
        let limits = Limits {
            max_watch_streams: 5,
            max_watch_streams_per_user: 2,
            ..Limits::default()
        };
        let slots = WatchSlots::new(&limits);
        let alice: Vec<_> = (0..2).map(|_| slots.take(Some("alice")).unwrap()).collect();
        let refused = slots.take(Some("alice")).err().unwrap();
        assert!(refused.contains("max_watch_streams_per_user"), "{refused}");
        let bob = slots.take(Some("bob")).unwrap();
        // Without auth, only the server's bound holds: two places left.
        let anonymous: Vec<_> = (0..2).map(|_| slots.take(None).unwrap()).collect();
        let refused = slots.take(None).err().unwrap();
        assert!(refused.starts_with("max_watch_streams ="), "{refused}");
        drop(alice);
        assert!(slots.users.lock().get("alice").is_none());
        let again: Vec<_> = (0..2).map(|_| slots.take(Some("alice")).unwrap()).collect();
        drop((bob, anonymous, again));
        assert!(slots.users.lock().is_empty());
        assert_eq!(slots.all.available_permits(), 5);
    }
}
