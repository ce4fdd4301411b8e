//! A hub's shadow copies (docs/hub.md, "Shadow copies"): messages held for an owner pod and not
//! delivered. Each is released by its owner when that pod is done with it, replaced by a
//! hand-off of the same key, or promoted (queued for delivery) once the pod is gone. Rebuilt
//! from the spool at start: a shadow's envelope names its owner.

use crate::message::{MessageId, handoff::Owner};
use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

/// The shadows of one owner pod.
#[derive(Debug)]
pub struct OwnerShadows {
    /// Its name, to look it up.
    pub pod: String,
    /// When its first shadow (held now) arrived: a pod list taken before that may not show it.
    pub since: Instant,
    keys: HashSet<String>,
}

/// Shadows by key and by owner UID.
#[derive(Debug, Default)]
pub struct Shadows {
    by_key: HashMap<String, (MessageId, String)>,
    owners: HashMap<String, OwnerShadows>,
}

impl Shadows {
    /// The message holding the shadow `key`.
    pub fn get(&self, key: &str) -> Option<MessageId> {
        self.by_key.get(key).map(|(id, _)| *id)
    }

    /// Holds `id` as the shadow `key` of `owner`.
    pub fn hold(&mut self, key: &str, id: MessageId, owner: &Owner, now: Instant) {
        self.by_key.insert(key.to_owned(), (id, owner.uid.clone()));
        let o = self
            .owners
            .entry(owner.uid.clone())
            .or_insert_with(|| OwnerShadows {
                pod: owner.pod.clone(),
                since: now,
                keys: HashSet::new(),
            });
        o.keys.insert(key.to_owned());
    }

    /// Stops holding `key`; the message it was, if any.
    pub fn take(&mut self, key: &str) -> Option<MessageId> {
        let (id, uid) = self.by_key.remove(key)?;
        if let Some(o) = self.owners.get_mut(&uid) {
            o.keys.remove(key);
            if o.keys.is_empty() {
                self.owners.remove(&uid);
            }
        }
        Some(id)
    }

    /// Stops holding every shadow of owner `uid`: `(key, message)` of each.
    pub fn take_owner(&mut self, uid: &str) -> Vec<(String, MessageId)> {
        let Some(o) = self.owners.remove(uid) else {
            return Vec::new();
        };
        let mut taken: Vec<(String, MessageId)> = o
            .keys
            .into_iter()
            .filter_map(|k| self.by_key.remove(&k).map(|(id, _)| (k, id)))
            .collect();
        taken.sort_by_key(|(_, id)| *id);
        taken
    }

    /// Every owner with shadows: its UID, pod name and since when.
    pub fn owners(&self) -> Vec<(Owner, Instant)> {
        self.owners
            .iter()
            .map(|(uid, o)| {
                (
                    Owner {
                        uid: uid.clone(),
                        pod: o.pod.clone(),
                    },
                    o.since,
                )
            })
            .collect()
    }

    /// Shadows held.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str) -> Owner {
        Owner {
            uid: uid.into(),
            pod: format!("pod-{uid}"),
        }
    }

    #[test]
    fn shadows_are_released_one_by_one_or_taken_with_their_owner() {
        let mut s = Shadows::default();
        let t0 = Instant::now();
        s.hold("k1", MessageId(1), &owner("a"), t0);
        s.hold("k2", MessageId(2), &owner("a"), t0);
        s.hold("k3", MessageId(3), &owner("b"), t0);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get("k2"), Some(MessageId(2)));
        assert_eq!(s.take("k2"), Some(MessageId(2)));
        assert_eq!(s.take("k2"), None, "released once");
        assert_eq!(s.owners().len(), 2);
        assert_eq!(s.take_owner("a"), vec![("k1".to_owned(), MessageId(1))]);
        assert_eq!(s.take("k1"), None, "taken with its owner");
        assert_eq!(s.take("k3"), Some(MessageId(3)));
        assert!(s.owners().is_empty(), "an owner without shadows is forgotten");
        assert_eq!(s.len(), 0);
    }
}
