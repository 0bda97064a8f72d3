//! Channel names, wildcard patterns and the subscription index.
//!
//! The index is a hash by segments: a publish on `/a/b/c` looks up the exact
//! name, the `*` bucket of `/a/b`, and the `**` buckets of `/a/b`, `/a` and
//! the root, so a publish costs one hash lookup per path segment whatever the
//! number of subscriptions.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// What kind of channel a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `/meta/**`: protocol messages.
    Meta,
    /// `/service/**`: point-to-point with the server.
    Service,
    /// Everything else: broadcast to subscribers.
    Broadcast,
}

/// A subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// One exact channel.
    Exact(Arc<str>),
    /// `prefix/*`: the direct children of `prefix`.
    Children(Arc<str>),
    /// `prefix/**`: every descendant of `prefix`.
    Descendants(Arc<str>),
}

/// Why a channel name or pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Does not start with `/`, has an empty segment, bad characters or a
    /// wildcard that is not the last segment.
    #[error("invalid channel name")]
    Invalid,
    /// A wildcard where a concrete channel is required (publish).
    #[error("wildcard channel not allowed here")]
    Wildcard,
}

/// Longest accepted channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 512;

fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~()$@+=:;,".contains(&b) || b >= 0x80)
}

/// Parses a subscription pattern (`/a/b`, `/a/*`, `/a/**`; wildcards last only).
pub fn parse_pattern(name: &str) -> Result<Pattern, ChannelError> {
    if name.len() > MAX_CHANNEL_LEN || !name.starts_with('/') {
        return Err(ChannelError::Invalid);
    }
    let (prefix, wildcard) = if let Some(p) = name.strip_suffix("/**") {
        (p, Some(true))
    } else if let Some(p) = name.strip_suffix("/*") {
        (p, Some(false))
    } else {
        (name, None)
    };
    if !(prefix.is_empty() && wildcard.is_some()) {
        let rest = prefix.strip_prefix('/').ok_or(ChannelError::Invalid)?;
        if !rest.split('/').all(valid_segment) {
            return Err(ChannelError::Invalid);
        }
    }
    Ok(match wildcard {
        None => Pattern::Exact(Arc::from(name)),
        Some(false) => Pattern::Children(Arc::from(prefix)),
        Some(true) => Pattern::Descendants(Arc::from(prefix)),
    })
}

/// Validates a concrete channel name (no wildcard) and returns its kind.
pub fn parse_channel(name: &str) -> Result<ChannelKind, ChannelError> {
    match parse_pattern(name)? {
        Pattern::Exact(_) => Ok(kind_of(name)),
        _ => Err(ChannelError::Wildcard),
    }
}

/// The kind of a (syntactically valid) channel or pattern.
pub fn kind_of(name: &str) -> ChannelKind {
    if name == "/meta" || name.starts_with("/meta/") {
        ChannelKind::Meta
    } else if name == "/service" || name.starts_with("/service/") {
        ChannelKind::Service
    } else {
        ChannelKind::Broadcast
    }
}

impl Pattern {
    /// Whether `channel` (a concrete name) matches this pattern.
    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Exact(n) => &**n == channel,
            Pattern::Children(p) => channel
                .strip_prefix(&**p)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|r| !r.is_empty() && !r.contains('/')),
            Pattern::Descendants(p) => channel
                .strip_prefix(&**p)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|r| !r.is_empty()),
        }
    }

    /// The pattern as written (`/a/*`).
    pub fn to_name(&self) -> String {
        match self {
            Pattern::Exact(n) => n.to_string(),
            Pattern::Children(p) => format!("{p}/*"),
            Pattern::Descendants(p) => format!("{p}/**"),
        }
    }
}

/// Subscriber maps keyed by channel or wildcard prefix.
type Buckets<K, V> = HashMap<Arc<str>, HashMap<K, V>>;

/// Subscribers by pattern: `K` identifies a subscriber, `V` is what the
/// publish path needs of it.
#[derive(Debug)]
pub struct SubscriptionIndex<K, V> {
    exact: Buckets<K, V>,
    children: Buckets<K, V>,
    descendants: Buckets<K, V>,
}

impl<K, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            exact: HashMap::new(),
            children: HashMap::new(),
            descendants: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SubscriptionIndex<K, V> {
    fn bucket(&mut self, pattern: &Pattern) -> (&mut Buckets<K, V>, Arc<str>) {
        match pattern {
            Pattern::Exact(n) => (&mut self.exact, n.clone()),
            Pattern::Children(p) => (&mut self.children, p.clone()),
            Pattern::Descendants(p) => (&mut self.descendants, p.clone()),
        }
    }

    /// Adds `key` under `pattern`; returns false if it was already there.
    pub fn insert(&mut self, pattern: &Pattern, key: K, value: V) -> bool {
        let (map, name) = self.bucket(pattern);
        map.entry(name).or_default().insert(key, value).is_none()
    }

    /// Removes `key` from `pattern`; returns whether it was there.
    pub fn remove(&mut self, pattern: &Pattern, key: &K) -> bool {
        let (map, name) = self.bucket(pattern);
        let Some(set) = map.get_mut(&name) else {
            return false;
        };
        let removed = set.remove(key).is_some();
        if set.is_empty() {
            map.remove(&name);
        }
        removed
    }

    /// Number of distinct patterns with at least one subscriber.
    pub fn pattern_count(&self) -> usize {
        self.exact.len() + self.children.len() + self.descendants.len()
    }

    /// The buckets of subscribers whose pattern matches `channel`.
    fn buckets<'a>(&'a self, channel: &'a str) -> impl Iterator<Item = &'a HashMap<K, V>> + 'a {
        let parent = channel.rfind('/').map(|pos| &channel[..pos]);
        let ancestors = (!self.descendants.is_empty())
            .then(|| {
                channel
                    .char_indices()
                    .filter(|(_, c)| *c == '/')
                    .map(|(i, _)| &channel[..i])
            })
            .into_iter()
            .flatten();
        self.exact
            .get(channel)
            .into_iter()
            .chain(parent.and_then(|p| self.children.get(p)))
            .chain(ancestors.filter_map(|a| self.descendants.get(a)))
    }

    /// Calls `f` once per subscriber matching `channel` (deduplicated when a
    /// subscriber matches through several patterns).
    pub fn for_each_match(&self, channel: &str, mut f: impl FnMut(&K, &V)) {
        let mut buckets = self.buckets(channel);
        let Some(first) = buckets.next() else {
            return;
        };
        let Some(second) = buckets.next() else {
            for (k, v) in first {
                f(k, v);
            }
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for bucket in [first, second].into_iter().chain(buckets) {
            for (k, v) in bucket {
                if seen.insert(k) {
                    f(k, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("/a/b"), Ok(Pattern::Exact("/a/b".into())));
        assert_eq!(parse_pattern("/a/*"), Ok(Pattern::Children("/a".into())));
        assert_eq!(
            parse_pattern("/a/**"),
            Ok(Pattern::Descendants("/a".into()))
        );
        assert_eq!(parse_pattern("/**"), Ok(Pattern::Descendants("".into())));
        for bad in [
            "", "a", "/", "/a//b", "/a/*/b", "/a/**/b", "/a*", "/a/b/", "/a b",
        ] {
            assert_eq!(parse_pattern(bad), Err(ChannelError::Invalid), "{bad}");
        }
        assert_eq!(parse_channel("/a/*"), Err(ChannelError::Wildcard));
        assert_eq!(parse_channel("/meta/connect"), Ok(ChannelKind::Meta));
        assert_eq!(parse_channel("/service/x"), Ok(ChannelKind::Service));
        assert_eq!(parse_channel("/metadata"), Ok(ChannelKind::Broadcast));
    }

    #[test]
    fn matching() {
        let c = parse_pattern("/a/*").unwrap();
        assert!(c.matches("/a/b"));
        assert!(!c.matches("/a/b/c"));
        assert!(!c.matches("/a"));
        assert!(!c.matches("/ab/c"));
        let d = parse_pattern("/a/**").unwrap();
        assert!(d.matches("/a/b/c"));
        assert!(!d.matches("/a"));
        assert_eq!(d.to_name(), "/a/**");
    }

    #[test]
    fn index_lookup_and_dedupe() {
        let mut idx: SubscriptionIndex<u32, ()> = SubscriptionIndex::default();
        let p = |s| parse_pattern(s).unwrap();
        idx.insert(&p("/a/b/c"), 1, ());
        idx.insert(&p("/a/b/*"), 2, ());
        idx.insert(&p("/a/**"), 3, ());
        idx.insert(&p("/**"), 4, ());
        idx.insert(&p("/a/b/*"), 1, ());
        idx.insert(&p("/x/*"), 5, ());
        let collect = |idx: &SubscriptionIndex<u32, ()>, ch| {
            let mut v = vec![];
            idx.for_each_match(ch, |k, _| v.push(*k));
            v.sort();
            v
        };
        assert_eq!(collect(&idx, "/a/b/c"), vec![1, 2, 3, 4]);
        assert_eq!(collect(&idx, "/a/b/c/d"), vec![3, 4]);
        assert_eq!(collect(&idx, "/a"), vec![4]);
        assert_eq!(collect(&idx, "/x/y"), vec![4, 5]);
        assert!(idx.remove(&p("/**"), &4));
        assert!(!idx.remove(&p("/**"), &4));
        assert_eq!(collect(&idx, "/a"), Vec::<u32>::new());
        assert_eq!(idx.pattern_count(), 4);
    }
}
