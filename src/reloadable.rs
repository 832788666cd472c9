//! A value a server replaces while its readers go on with the old one: what SIGHUP reloads.

use std::sync::{Arc, RwLock};

/// A value the daemon may replace while sessions use the old one: readers take an `Arc` snapshot.
pub struct Reloadable<T>(RwLock<Arc<T>>);

impl<T> Reloadable<T> {
    pub fn new(value: T) -> Reloadable<T> {
        Reloadable(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}
