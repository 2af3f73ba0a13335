//! Consistent hashing: which member of the cluster owns a key.
//!
//! Every member is placed on a 64-bit hash circle at [`Ring::replicas`] points ("virtual
//! nodes"); a key belongs to the member of the first point at or after the key's own hash,
//! wrapping around at the top. Many points per member even out the share each one owns, and
//! adding or removing a member only moves the keys on the arcs that member gains or loses,
//! about 1/N of them.
//!
//! # Stability
//! Every node of a cluster must compute the same owner for the same key, whatever its version,
//! platform or process, and whichever order it learnt about its peers in. So:
//! - the hash is **XXH3-64 with seed 0** ([`xxhash_rust::xxh3::xxh3_64`]), a fixed, specified
//!   algorithm (its output is frozen since xxHash 0.8.0) that does not depend on endianness or
//!   on a per-process random key, unlike `std`'s `DefaultHasher`;
//! - keys are hashed as their UTF-8 bytes;
//! - virtual node `i` (0-based) of member `m` is the hash of the string `"{m}#{i}"`, e.g.
//!   `"10.0.0.1:8080#0"`. Because `i` is decimal digits, the text after the last `#` tells the
//!   member and the index apart, so two different (member, index) pairs never hash the same
//!   string;
//! - the member list is sorted and deduplicated before the ring is built, and points are ordered
//!   by (hash, member), so even two points with equal hashes have one agreed order.
//!
//! Changing any of these rules reassigns almost every key in a running cluster; the known-answer
//! test at the bottom of this file exists to catch that.

use xxhash_rust::xxh3::xxh3_64;

/// Default virtual nodes per member: enough that each member's share of the keys stays within a
/// few percent of fair (the spread shrinks like 1/√replicas), while a ring of 100 members is
/// still only 16,000 points to search.
pub const DEFAULT_REPLICAS: usize = 160;

/// An immutable consistent-hash ring over a set of members, mapping each key to its owner.
///
/// Build a new ring when membership changes and swap it in (e.g. behind an `Arc`); lookups
/// never lock. Two rings built from the same members and replica count are equal and answer
/// every lookup identically, on any node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Virtual nodes per member; kept so callers can build a compatible ring and report it.
    replicas: usize,
    /// Sorted, deduplicated member ids: the one canonical order every node agrees on, and the
    /// table that `point_members` indexes into.
    members: Vec<String>,
    /// Hashes of every virtual node, ascending; kept apart from `point_members` so the binary
    /// search of a lookup touches only this dense array.
    points: Vec<u64>,
    /// For each entry of `points`, the index in `members` of the member that owns it.
    point_members: Vec<usize>,
}

impl Ring {
    /// Builds the ring for a member list, as every node must, from any order of the same list.
    ///
    /// `members` are node ids or addresses; they are sorted and deduplicated here, so the order
    /// they were discovered in and repeated entries do not matter. `replicas` is the number of
    /// virtual nodes per member (use [`DEFAULT_REPLICAS`]); 0 is treated as 1 so that a
    /// non-empty ring always has an owner for every key.
    pub fn new(replicas: usize, members: impl IntoIterator<Item = impl Into<String>>) -> Ring {
        let replicas = replicas.max(1);
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort_unstable();
        members.dedup();

        let mut ring: Vec<(u64, usize)> = Vec::with_capacity(members.len() * replicas);
        for (index, member) in members.iter().enumerate() {
            for i in 0..replicas {
                ring.push((hash(format!("{member}#{i}").as_bytes()), index));
            }
        }
        // Member indices follow the sorted member order, so sorting the (hash, index) pairs
        // breaks hash ties by member name; equal pairs are interchangeable, so an unstable sort
        // is still deterministic.
        ring.sort_unstable();
        let (points, point_members) = ring.into_iter().unzip();

        Ring {
            replicas,
            members,
            points,
            point_members,
        }
    }

    /// The member that owns `key`: where a miss for it is loaded and where sets go.
    ///
    /// Returns `None` only when the ring has no members.
    pub fn owner(&self, key: &str) -> Option<&str> {
        let start = self.first_point(key)?;
        Some(self.members[self.point_members[start]].as_str())
    }

    /// The owner of `key` followed by the next distinct members clockwise, at most `n` of them
    /// (fewer only when the ring has fewer members).
    ///
    /// This is the order to fall back in when the owner is unreachable, or to replicate to: the
    /// second entry is exactly the member that would own the key if the owner left the ring.
    pub fn owners(&self, key: &str, n: usize) -> Vec<&str> {
        let want = n.min(self.members.len());
        let mut found = Vec::with_capacity(want);
        let Some(start) = self.first_point(key) else {
            return found;
        };
        let mut seen = vec![false; self.members.len()];
        // Walk the circle once from the key's point, wrapping at the end.
        for &member in self.point_members[start..]
            .iter()
            .chain(&self.point_members[..start])
        {
            if found.len() == want {
                break;
            }
            if !seen[member] {
                seen[member] = true;
                found.push(self.members[member].as_str());
            }
        }
        found
    }

    /// The members, sorted and deduplicated: the canonical view of the cluster (e.g. for
    /// `/api/v1/cluster`, or to tell whether a membership update changes anything).
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Virtual nodes per member this ring was built with, so a rebuilt ring can match it.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Number of distinct members (the ring size reported in metrics).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members, in which case no key has an owner.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `member` is in the ring, e.g. to tell if this node is (still) part of it.
    pub fn contains(&self, member: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(member))
            .is_ok()
    }

    /// Index into `points` of the first virtual node at or after the key's hash, wrapping to
    /// the first point past the top of the circle; `None` for an empty ring.
    fn first_point(&self, key: &str) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key.as_bytes());
        let i = self.points.partition_point(|&p| p < h);
        Some(if i == self.points.len() { 0 } else { i })
    }
}

/// An empty ring with [`DEFAULT_REPLICAS`]: what a node uses before it has learnt its members.
impl Default for Ring {
    fn default() -> Self {
        Ring::new(DEFAULT_REPLICAS, Vec::<String>::new())
    }
}

/// The ring's one hash function, for keys and virtual nodes alike: XXH3-64, seed 0 (see the
/// module docs for why).
fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::ops::RangeInclusive;

    use proptest::prelude::*;

    use super::*;

    /// Keys used by the statistical tests: enough that sampling noise (about 1% of a share)
    /// is small next to the bands asserted below.
    const SAMPLE_KEYS: usize = 10_000;

    fn sample_keys(prefix: &str) -> Vec<String> {
        (0..SAMPLE_KEYS).map(|i| format!("{prefix}/{i}")).collect()
    }

    fn three_nodes() -> Ring {
        Ring::new(
            DEFAULT_REPLICAS,
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
        )
    }

    #[test]
    fn hash_is_xxh3_64_seed_0() {
        // Published XXH3_64bits test vector for the empty input; a different hash (or a seed)
        // would fail here before it silently moved every key in a cluster.
        assert_eq!(hash(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn empty_ring_has_no_owner() {
        let ring = Ring::new(DEFAULT_REPLICAS, Vec::<String>::new());
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.owner("k"), None);
        assert!(ring.owners("k", 3).is_empty());
        assert_eq!(ring, Ring::default());
    }

    #[test]
    fn single_member_owns_everything() {
        let ring = Ring::new(DEFAULT_REPLICAS, ["solo"]);
        for key in sample_keys("single").iter().take(1000) {
            assert_eq!(ring.owner(key), Some("solo"));
            assert_eq!(ring.owners(key, 5), ["solo"]);
        }
        assert_eq!(ring.owner(""), Some("solo"));
    }

    #[test]
    fn zero_replicas_still_assigns_every_key() {
        let ring = Ring::new(0, ["a", "b"]);
        assert_eq!(ring.replicas(), 1);
        assert!(ring.owner("k").is_some());
    }

    #[test]
    fn owner_ignores_member_order_and_duplicates() {
        let a = Ring::new(DEFAULT_REPLICAS, ["c", "a", "b"]);
        let b = Ring::new(DEFAULT_REPLICAS, ["b", "a", "c", "a", "b", "b"]);
        assert_eq!(a, b);
        assert_eq!(b.members(), ["a", "b", "c"]);
        assert_eq!(b.len(), 3);
        for key in sample_keys("order").iter().take(1000) {
            assert_eq!(a.owner(key), b.owner(key));
            assert_eq!(a.owners(key, 3), b.owners(key, 3));
        }
    }

    #[test]
    fn contains_finds_exactly_the_members() {
        let ring = three_nodes();
        assert!(ring.contains("10.0.0.2:8080"));
        assert!(!ring.contains("10.0.0.4:8080"));
        assert!(!ring.contains(""));
    }

    #[test]
    fn owners_are_distinct_stable_and_start_with_the_owner() {
        let ring = Ring::new(DEFAULT_REPLICAS, ["a", "b", "c", "d", "e"]);
        for key in sample_keys("owners").iter().take(1000) {
            let all = ring.owners(key, 10);
            assert_eq!(all.len(), 5, "n is capped at the member count");
            assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 5, "distinct");
            assert_eq!(Some(all[0]), ring.owner(key));
            assert_eq!(ring.owners(key, 2), all[..2], "shorter lists are prefixes");
            assert_eq!(ring.owners(key, 10), all, "same answer every time");
        }
        assert!(ring.owners("k", 0).is_empty());
    }

    #[test]
    fn known_answers() {
        // Pinned outputs for a fixed ring: if this fails, the hash, the virtual-node naming or
        // the tie-break changed, and a mixed-version cluster would disagree about owners.
        let ring = three_nodes();
        let pinned = [
            ("Tom", "10.0.0.2:8080"),
            ("Jack", "10.0.0.2:8080"),
            ("Sam", "10.0.0.1:8080"),
            ("", "10.0.0.3:8080"),
            ("user:42", "10.0.0.1:8080"),
            ("😀 ünïcode", "10.0.0.3:8080"),
        ];
        for (key, owner) in pinned {
            assert_eq!(ring.owner(key), Some(owner), "key {key:?}");
        }
        assert_eq!(
            ring.owners("Tom", 3),
            ["10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.1:8080"]
        );
        assert_eq!(
            ring.owners("", 3),
            ["10.0.0.3:8080", "10.0.0.1:8080", "10.0.0.2:8080"]
        );
    }

    /// A sorted set of distinct member names shaped like node ids or addresses, of a size in
    /// `sizes`.
    fn member_set(sizes: RangeInclusive<usize>) -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z0-9.:-]{1,16}", sizes)
            .prop_map(|set| set.into_iter().collect())
    }

    /// Who owns each sample key.
    fn owners_of<'r>(ring: &'r Ring, keys: &[String]) -> Vec<&'r str> {
        keys.iter().map(|k| ring.owner(k).unwrap()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any order of the same members, with repeats, builds the same ring.
        #[test]
        fn prop_member_order_and_duplicates_do_not_matter(
            (members, shuffled) in member_set(2..=10).prop_flat_map(|m| {
                let with_dups: Vec<String> = m.iter().chain(m.iter().step_by(2)).cloned().collect();
                (Just(m), Just(with_dups).prop_shuffle())
            }),
            keys in prop::collection::vec(any::<String>(), 1..200),
        ) {
            let a = Ring::new(DEFAULT_REPLICAS, members.clone());
            let b = Ring::new(DEFAULT_REPLICAS, shuffled);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.members(), members.as_slice());
            for key in &keys {
                prop_assert_eq!(a.owner(key), b.owner(key));
                prop_assert_eq!(a.owners(key, 3), b.owners(key, 3));
            }
        }

        /// Adding a member moves keys only to that member, and about 1/(N+1) of them.
        #[test]
        fn prop_adding_a_member_moves_only_its_share(
            members in member_set(3..=11),
            prefix in "[a-z]{1,8}",
        ) {
            let (newcomer, old) = members.split_last().unwrap();
            let before = Ring::new(DEFAULT_REPLICAS, old.to_vec());
            let after = Ring::new(DEFAULT_REPLICAS, members.clone());
            let keys = sample_keys(&prefix);
            let mut moved = 0usize;
            for (was, now) in owners_of(&before, &keys).into_iter().zip(owners_of(&after, &keys)) {
                if was != now {
                    prop_assert_eq!(now, newcomer.as_str(), "a key moved between old members");
                    moved += 1;
                }
            }
            // Fair share is 1/(N+1). With 160 virtual nodes a member's share has a relative
            // spread of about 1/sqrt(160) = 8% (sampling 10,000 keys adds only 1-3%), so
            // [0.5, 1.5) x fair is over 6 standard deviations either side: a failure means a
            // broken ring, not bad luck. Measured over 2,000 random rings of 3-11 members:
            // 0.74-1.27 x fair, mean 1.00, standard deviation 0.077.
            let fair = SAMPLE_KEYS as f64 / members.len() as f64;
            let ratio = moved as f64 / fair;
            prop_assert!((0.5..1.5).contains(&ratio), "moved {moved}, {ratio:.3} x fair");
        }

        /// Removing a member moves exactly the keys it owned, and the first fallback of each
        /// such key (`owners(key, 2)[1]`) is where it goes.
        #[test]
        fn prop_removing_a_member_moves_only_its_keys(
            (members, gone) in member_set(2..=10).prop_flat_map(|m| {
                let n = m.len();
                (Just(m), 0..n)
            }),
            prefix in "[a-z]{1,8}",
        ) {
            let before = Ring::new(DEFAULT_REPLICAS, members.clone());
            let gone = members[gone].as_str();
            let after = Ring::new(DEFAULT_REPLICAS, members.iter().filter(|m| *m != gone).cloned());
            prop_assert!(!after.contains(gone));
            for key in &sample_keys(&prefix)[..2000] {
                let was = before.owners(key, 2);
                let now = after.owner(key).unwrap();
                if was[0] == gone {
                    prop_assert_eq!(now, was[1]);
                } else {
                    prop_assert_eq!(now, was[0]);
                }
            }
        }

        /// No member gets far more than its fair share of keys.
        #[test]
        fn prop_load_is_balanced(members in member_set(3..=8), prefix in "[a-z]{1,8}") {
            let ring = Ring::new(DEFAULT_REPLICAS, members.clone());
            let keys = sample_keys(&prefix);
            let mut load: HashMap<&str, usize> = HashMap::new();
            for owner in owners_of(&ring, &keys) {
                *load.entry(owner).or_default() += 1;
            }
            // As above, a share's relative spread is about 8%; the largest of up to 8 shares
            // sits around +2 standard deviations, and 1.5 x fair is over 6 for any one member,
            // far beyond what a correct ring produces. Measured worst over ~1,100 random rings
            // of 3-8 members: 1.30 x fair.
            let fair = SAMPLE_KEYS as f64 / members.len() as f64;
            let max = load.values().copied().max().unwrap_or(0);
            prop_assert_eq!(load.len(), members.len(), "every member owns some keys");
            prop_assert!((max as f64) < 1.5 * fair, "max load {max}, fair {fair:.0}");
        }
    }
}
