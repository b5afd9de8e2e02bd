//! The storage-graph rules: when a copy may go, what a new copy sets off, where a copy may land.
//!
//! Each rule is a pure function of plain data. The catalog gathers the facts (a file's copies, a
//! node's space, the auto-action rows) and applies the answer in the same transaction that read
//! them, so a rule is always judged against the snapshot it commits; keeping the rules free of
//! I/O lets tests hold them to the design's invariants directly.
//!
//! - Invariant 3: a copy is deleted only if at least `min_archive_copies` *other* copies with
//!   `has=yes` exist on archive nodes and no pending copy request reads from it ([`may_release`]).
//!   Cleaning under space pressure frees only what is needed, oldest first
//!   ([`choose_discretionary`]).
//! - A new healthy copy fires the auto-actions, with alpenhorn's meaning: autosync requests it
//!   into downstream groups, autoclean releases upstream copies. Neither ever targets the new
//!   copy's own group or node ([`auto_effects`]).
//! - A copy lands on a node only if the node stays within `max_total`, keeps `min_avail` free and
//!   is at most [`MAX_FULL_FRACTION`] full afterwards ([`fits`]).
//! - A copy into a transport group goes to an active transport disk on the source copy's host:
//!   the fullest that still fits, so one disk fills before the next ([`choose_transport`]).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use crate::model::{CopyId, GroupId, Has, HostId, NodeId, NodeKind, Wants};
use crate::units::format_size;

// ---------------------------------------------------------------------------------------------
// Release (invariant 3)

/// Another copy of a file whose copy is to be released.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherCopy {
    pub node_id: NodeId,
    pub node_kind: NodeKind,
    pub has: Has,
}

/// Why a copy may not be deleted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRefusal {
    /// Fewer than `min_archive_copies` other healthy copies on archive nodes.
    TooFewArchiveCopies { found: usize, needed: usize },
    /// Pending copy requests still read from this copy.
    PendingReads { requests: usize },
}

impl fmt::Display for ReleaseRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseRefusal::TooFewArchiveCopies { found, needed } => {
                write!(f, "too few archive copies ({found} of {needed} needed)")
            }
            ReleaseRefusal::PendingReads { requests: 1 } => {
                f.write_str("1 pending copy request reads from it")
            }
            ReleaseRefusal::PendingReads { requests } => {
                write!(f, "{requests} pending copy requests read from it")
            }
        }
    }
}

impl std::error::Error for ReleaseRefusal {}

/// Whether the copy of a file on `node_id` may be deleted (invariant 3).
///
/// `copies` are the file's copies as the deleting transaction sees them; the copy on `node_id`
/// may be among them and never counts. Only `has=yes` copies on archive nodes count, each node
/// once, so a duplicated row cannot stand in for a second copy. With `min_archive_copies == 0`
/// pending reads still refuse: deleting a copy under a running transfer would break it.
pub fn may_release(
    node_id: NodeId,
    copies: &[OtherCopy],
    pending_reads: usize,
    min_archive_copies: usize,
) -> Result<(), ReleaseRefusal> {
    let found = copies
        .iter()
        .filter(|c| c.node_id != node_id && c.node_kind == NodeKind::Archive && c.has == Has::Yes)
        .map(|c| c.node_id)
        .collect::<BTreeSet<_>>()
        .len();
    if found < min_archive_copies {
        return Err(ReleaseRefusal::TooFewArchiveCopies {
            found,
            needed: min_archive_copies,
        });
    }
    if pending_reads > 0 {
        return Err(ReleaseRefusal::PendingReads {
            requests: pending_reads,
        });
    }
    Ok(())
}

/// A copy that may be deleted when its node needs space (`wants=release_when_needed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseCandidate {
    pub copy_id: CopyId,
    /// Bytes freed by deleting it.
    pub size: u64,
    /// When the copy was recorded (Unix seconds).
    pub added_at: i64,
}

/// The copies to delete to free `bytes_needed`: oldest first (by `added_at`, then `copy_id`),
/// stopping as soon as enough is freed.
///
/// The result is a prefix of the oldest-first order and minimal: without its last entry it
/// would free less than `bytes_needed`. When all candidates together are not enough, all are
/// returned, to free as much as possible. Each chosen copy must still pass [`may_release`] when
/// it is deleted, so the daemon may free less than planned and look again next round.
pub fn choose_discretionary(candidates: &[ReleaseCandidate], bytes_needed: u64) -> Vec<CopyId> {
    let mut oldest_first: Vec<&ReleaseCandidate> = candidates.iter().collect();
    oldest_first.sort_by_key(|c| (c.added_at, c.copy_id));
    let mut freed: u64 = 0;
    let mut chosen = Vec::new();
    for candidate in oldest_first {
        if freed >= bytes_needed {
            break;
        }
        // Saturating: once the sum would overflow it is certainly enough.
        freed = freed.saturating_add(candidate.size);
        chosen.push(candidate.copy_id);
    }
    chosen
}

// ---------------------------------------------------------------------------------------------
// Auto-actions

/// An `auto_action` row: between `group_id` and `node_id`.
///
/// - `autosync`: a healthy copy appearing on `node_id` is requested into `group_id`.
/// - `autoclean`: a copy appearing on a node of `group_id` releases the copy on `node_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRule {
    pub group_id: GroupId,
    pub node_id: NodeId,
    pub autosync: bool,
    pub autoclean: bool,
}

/// The healthy copy that just appeared: its node and that node's group.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCopy {
    pub node_id: NodeId,
    pub group_id: GroupId,
}

/// What the catalog knows of the file when its new copy is recorded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileState {
    /// Groups with a `has=yes` copy of the file.
    pub present_in_groups: Vec<GroupId>,
    /// Groups with a pending or active copy request for the file.
    pub requested_into_groups: Vec<GroupId>,
    /// Every copy row of the file: node, has, wants.
    pub copies_on_nodes: Vec<(NodeId, Has, Wants)>,
}

/// What an auto-action asks the catalog to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoEffect {
    /// Create a copy request for the file from `from_node` into `to_group`.
    Sync {
        from_node: NodeId,
        to_group: GroupId,
    },
    /// Set the file's copy on `node_id` to `wants=release_now`.
    Release { node_id: NodeId },
}

/// The auto-actions fired by a new healthy copy (call it only once the copy is `has=yes`).
///
/// Autosync skips groups that already hold the file or are about to (a pending or active
/// request), so replaying this is harmless. Autoclean marks copies for release only; deleting
/// them still goes through [`may_release`], so a chain of autocleans cannot take a file below
/// `min_archive_copies`. A suspect or corrupt copy is released too: the new copy supersedes it.
/// Syncing into the new copy's own group and releasing the new copy itself are never produced,
/// whatever the rules say. The result is sorted and without duplicates.
pub fn auto_effects(new: &NewCopy, rules: &[ActionRule], file: &FileState) -> Vec<AutoEffect> {
    let mut effects = BTreeSet::new();
    for rule in rules {
        if rule.autosync
            && rule.node_id == new.node_id
            && rule.group_id != new.group_id
            && !file.present_in_groups.contains(&rule.group_id)
            && !file.requested_into_groups.contains(&rule.group_id)
        {
            effects.insert(AutoEffect::Sync {
                from_node: new.node_id,
                to_group: rule.group_id,
            });
        }
        if rule.autoclean
            && rule.group_id == new.group_id
            && rule.node_id != new.node_id
            && file.copies_on_nodes.iter().any(|&(node, has, wants)| {
                node == rule.node_id && has != Has::No && wants != Wants::ReleaseNow
            })
        {
            effects.insert(AutoEffect::Release {
                node_id: rule.node_id,
            });
        }
    }
    effects.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Fit

/// The fullest a disk may be after a copy lands on it.
pub const MAX_FULL_FRACTION: f64 = 0.97;

/// What is known of a node's space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeSpace {
    /// The total size of the node's catalogued copies (what `max_total` limits; cairnd sums
    /// it only for a node that has one, and leaves 0 otherwise, where nothing reads it).
    pub used_by_copies: u64,
    /// The most the node's copies may take; `None`: no limit.
    pub max_total: Option<u64>,
    /// Free space on the file system as cairnd last measured it; `None`: not measured yet.
    pub avail: Option<u64>,
    /// Size of the file system; `None` (or 0): not known.
    pub capacity: Option<u64>,
    /// Free space a copy must leave; `None`: no floor.
    pub min_avail: Option<u64>,
}

impl NodeSpace {
    /// The fraction in use: of the disk when cairnd has measured it, else of `max_total`.
    /// `None` when neither is known.
    pub fn used_fraction(&self) -> Option<f64> {
        self.used_ratio().map(|(used, of)| used as f64 / of as f64)
    }

    /// Free bytes: on the disk when measured, else left under `max_total`. `None`: unlimited.
    pub fn free_bytes(&self) -> Option<u64> {
        self.avail.or_else(|| {
            self.max_total
                .map(|max| max.saturating_sub(self.used_by_copies))
        })
    }

    /// The space as a copy sees it that already holds `held` bytes on the disk (the partial
    /// file of an earlier attempt): those bytes are its own, so they count as free for it.
    /// Without this, a pull that failed for space kept a partial file that then made the
    /// same copy not fit, attempt after attempt.
    pub fn holding(self, held: u64) -> NodeSpace {
        NodeSpace {
            avail: self.avail.map(|a| a.saturating_add(held)),
            ..self
        }
    }

    /// [`NodeSpace::used_fraction`] as an exact ratio (used, of), with `of > 0`.
    fn used_ratio(&self) -> Option<(u64, u64)> {
        match (self.capacity, self.avail, self.max_total) {
            (Some(capacity), Some(avail), _) if capacity > 0 => {
                Some((capacity.saturating_sub(avail), capacity))
            }
            (_, _, Some(max_total)) if max_total > 0 => Some((self.used_by_copies, max_total)),
            _ => None,
        }
    }
}

/// Why a copy does not fit on a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NoFit {
    /// The node's copies would pass `max_total`.
    MaxTotal {
        used: u64,
        size: u64,
        max_total: u64,
    },
    /// The copy would leave less than `min_avail` free.
    MinAvail {
        avail: u64,
        size: u64,
        min_avail: u64,
    },
    /// The copy is bigger than the free space.
    NoSpace { avail: u64, size: u64 },
    /// The disk would be more than [`MAX_FULL_FRACTION`] full.
    TooFull { percent_after: f64 },
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NoFit::MaxTotal {
                used,
                size,
                max_total,
            } => write!(
                f,
                "{} more would take the node's copies past max_total ({} used of {})",
                format_size(size),
                format_size(used),
                format_size(max_total)
            ),
            NoFit::MinAvail {
                avail,
                size,
                min_avail,
            } => write!(
                f,
                "{} would leave {} free, under min_avail {}",
                format_size(size),
                format_size(avail.saturating_sub(size)),
                format_size(min_avail)
            ),
            NoFit::NoSpace { avail, size } => {
                write!(
                    f,
                    "{} does not fit in {} free",
                    format_size(size),
                    format_size(avail)
                )
            }
            NoFit::TooFull { percent_after } => write!(
                f,
                "the disk would be {:.1} % full, over the {:.0} % limit",
                // Rounded up so a value just over the limit never prints as the limit itself.
                (percent_after * 10.0).ceil() / 10.0,
                MAX_FULL_FRACTION * 100.0
            ),
        }
    }
}

impl std::error::Error for NoFit {}

/// Whether a copy of `size` bytes may land on a node.
///
/// Checked in order: `max_total` (always), then, once cairnd has measured the free space: room
/// at all, `min_avail`, and the [`MAX_FULL_FRACTION`] ceiling (when the capacity is known). Until
/// the free space is measured only `max_total` applies, so a fresh node is not blocked. Every
/// check only gets harder as `size` grows: if a size does not fit, no larger one does.
pub fn fits(space: &NodeSpace, size: u64) -> Result<(), NoFit> {
    if let Some(max_total) = space.max_total
        && space.used_by_copies.saturating_add(size) > max_total
    {
        return Err(NoFit::MaxTotal {
            used: space.used_by_copies,
            size,
            max_total,
        });
    }
    let Some(avail) = space.avail else {
        return Ok(());
    };
    if size > avail {
        return Err(NoFit::NoSpace { avail, size });
    }
    if let Some(min_avail) = space.min_avail
        && avail - size < min_avail
    {
        return Err(NoFit::MinAvail {
            avail,
            size,
            min_avail,
        });
    }
    if let Some(capacity) = space.capacity
        && capacity > 0
    {
        let used_after = capacity.saturating_sub(avail).saturating_add(size);
        if used_after as f64 / capacity as f64 > MAX_FULL_FRACTION {
            return Err(NoFit::TooFull {
                percent_after: used_after as f64 * 100.0 / capacity as f64,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Transport placement

/// A node of the transport group being copied into.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportCandidate {
    pub node_id: NodeId,
    pub name: String,
    /// The host the disk is plugged into; `None` while it is in transit.
    pub host_id: Option<HostId>,
    pub active: bool,
    pub space: NodeSpace,
}

/// Why no transport disk can take a copy.
#[derive(Debug, Clone, PartialEq)]
pub enum NoTransport {
    /// No active transport disk is plugged into the source copy's host.
    NoDiskOnHost,
    /// Every such disk refused, with its name and reason, in the order given.
    NoneFits(Vec<(String, NoFit)>),
}

impl fmt::Display for NoTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoTransport::NoDiskOnHost => {
                f.write_str("no active transport disk on the source's host")
            }
            NoTransport::NoneFits(refusals) => {
                f.write_str("no transport disk has room")?;
                for (i, (name, why)) in refusals.iter().enumerate() {
                    let sep = if i == 0 { ": " } else { "; " };
                    write!(f, "{sep}{name}: {why}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for NoTransport {}

/// Orders nodes by how full they are, fuller greater.
///
/// "Fullest" is the highest [`NodeSpace::used_fraction`], compared exactly (as ratios, not
/// floats); a node whose fraction is unknown ranks below every known one. Equal fractions go to
/// the node with fewer [`NodeSpace::free_bytes`], unlimited counting as the most.
fn cmp_fullness(a: &NodeSpace, b: &NodeSpace) -> Ordering {
    let by_fraction = match (a.used_ratio(), b.used_ratio()) {
        (Some((ua, oa)), Some((ub, ob))) => {
            (u128::from(ua) * u128::from(ob)).cmp(&(u128::from(ub) * u128::from(oa)))
        }
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    let free = |s: &NodeSpace| s.free_bytes().unwrap_or(u64::MAX);
    by_fraction.then_with(|| free(b).cmp(&free(a)))
}

/// The transport disk that takes a copy of `size` bytes whose source is on `source_host`.
///
/// Only active disks plugged into the source's host qualify: the copy is local, and the disk
/// leaves with what it carries. Of those that [`fits`], the fullest (see `cmp_fullness`) wins, so
/// one disk fills before the next is started; equally full disks go to the smaller `node_id`,
/// so the choice does not depend on the order of `cands`.
pub fn choose_transport(
    cands: &[TransportCandidate],
    source_host: HostId,
    size: u64,
) -> Result<NodeId, NoTransport> {
    let on_host: Vec<&TransportCandidate> = cands
        .iter()
        .filter(|c| c.active && c.host_id == Some(source_host))
        .collect();
    if on_host.is_empty() {
        return Err(NoTransport::NoDiskOnHost);
    }
    let mut refusals = Vec::new();
    let mut best: Option<&TransportCandidate> = None;
    for cand in on_host {
        match fits(&cand.space, size) {
            Err(why) => refusals.push((cand.name.clone(), why)),
            Ok(()) => {
                let better = best.is_none_or(|b| {
                    cmp_fullness(&cand.space, &b.space)
                        .then_with(|| b.node_id.cmp(&cand.node_id))
                        .is_gt()
                });
                if better {
                    best = Some(cand);
                }
            }
        }
    }
    best.map(|c| c.node_id)
        .ok_or(NoTransport::NoneFits(refusals))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use test_case::test_case;

    use super::*;

    // --- may_release -------------------------------------------------------------------------

    fn copy(node_id: i64, node_kind: NodeKind, has: Has) -> OtherCopy {
        OtherCopy {
            node_id: NodeId(node_id),
            node_kind,
            has,
        }
    }

    const A: NodeKind = NodeKind::Archive;

    /// A healthy copy on archive node `node_id`.
    fn yes(node_id: i64) -> OtherCopy {
        copy(node_id, A, Has::Yes)
    }

    /// The refusal when `found` of the 2 needed archive copies exist.
    fn few(found: usize) -> Result<(), ReleaseRefusal> {
        Err(ReleaseRefusal::TooFewArchiveCopies { found, needed: 2 })
    }

    #[test_case(&[yes(2), yes(3)], 0, Ok(()); "two other archive copies")]
    #[test_case(&[yes(2)], 0, few(1); "one other archive copy")]
    #[test_case(&[yes(1), yes(2)], 0, few(1); "own copy never counts")]
    #[test_case(&[yes(2), yes(2)], 0, few(1); "a node counts once")]
    #[test_case(&[yes(2), copy(3, NodeKind::Transport, Has::Yes),
        copy(4, NodeKind::Field, Has::Yes)], 0, few(1); "only archive nodes count")]
    #[test_case(&[yes(2), copy(3, A, Has::Suspect), copy(4, A, Has::Corrupt), copy(5, A, Has::No)],
        0, few(1); "only healthy copies count")]
    #[test_case(&[yes(2), yes(3)], 2, Err(ReleaseRefusal::PendingReads { requests: 2 });
        "pending reads refuse")]
    fn may_release_table(copies: &[OtherCopy], pending: usize, want: Result<(), ReleaseRefusal>) {
        assert_eq!(may_release(NodeId(1), copies, pending, 2), want);
    }

    #[test]
    fn may_release_with_zero_minimum_still_needs_no_pending_reads() {
        assert_eq!(may_release(NodeId(1), &[], 0, 0), Ok(()));
        assert_eq!(
            may_release(NodeId(1), &[], 1, 0),
            Err(ReleaseRefusal::PendingReads { requests: 1 })
        );
    }

    #[test_case(ReleaseRefusal::TooFewArchiveCopies { found: 1, needed: 2 },
        "too few archive copies (1 of 2 needed)"; "too few")]
    #[test_case(ReleaseRefusal::PendingReads { requests: 1 },
        "1 pending copy request reads from it"; "one read")]
    #[test_case(ReleaseRefusal::PendingReads { requests: 2 },
        "2 pending copy requests read from it"; "two reads")]
    fn release_refusal_display(refusal: ReleaseRefusal, want: &str) {
        assert_eq!(refusal.to_string(), want);
    }

    fn other_copy() -> impl Strategy<Value = OtherCopy> {
        (
            0..6i64,
            prop::sample::select(NodeKind::ALL),
            prop::sample::select(Has::ALL),
        )
            .prop_map(|(node_id, node_kind, has)| copy(node_id, node_kind, has))
    }

    proptest! {
        /// Invariant 3 itself: a release is allowed only with enough distinct other archive
        /// nodes holding the file healthy, and nothing reading from it.
        #[test]
        fn release_allowed_only_with_enough_other_healthy_archive_copies(
            copies in prop::collection::vec(other_copy(), 0..10),
            pending in 0..3usize,
            min in 0..4usize,
        ) {
            if may_release(NodeId(0), &copies, pending, min).is_ok() {
                let holders: BTreeSet<NodeId> = copies
                    .iter()
                    .filter(|c| c.node_id != NodeId(0) && c.node_kind == A && c.has == Has::Yes)
                    .map(|c| c.node_id)
                    .collect();
                prop_assert!(holders.len() >= min);
                prop_assert_eq!(pending, 0);
            }
        }

        /// Whatever the releasing node's own rows say, the answer is the same.
        #[test]
        fn release_ignores_the_copy_being_released(
            copies in prop::collection::vec(other_copy(), 0..10),
            pending in 0..3usize,
            min in 0..4usize,
        ) {
            let without_own: Vec<OtherCopy> =
                copies.iter().filter(|c| c.node_id != NodeId(0)).cloned().collect();
            let mut with_own_healthy = without_own.clone();
            with_own_healthy.push(copy(0, A, Has::Yes));
            let want = may_release(NodeId(0), &without_own, pending, min);
            prop_assert_eq!(may_release(NodeId(0), &copies, pending, min), want.clone());
            prop_assert_eq!(may_release(NodeId(0), &with_own_healthy, pending, min), want);
        }
    }

    // --- choose_discretionary ----------------------------------------------------------------

    fn cand(copy_id: i64, size: u64, added_at: i64) -> ReleaseCandidate {
        ReleaseCandidate {
            copy_id: CopyId(copy_id),
            size,
            added_at,
        }
    }

    #[test_case(0, &[]; "nothing needed frees nothing")]
    #[test_case(1, &[3]; "one byte takes the oldest")]
    #[test_case(10, &[3]; "exactly enough stops")]
    #[test_case(11, &[3, 1]; "next oldest when short")]
    #[test_case(1_000, &[3, 1, 2, 4]; "not enough takes all")]
    fn discretionary_table(needed: u64, want: &[i64]) {
        // Copy 1 and 2 share added_at: the smaller copy_id goes first.
        let cands = [
            cand(1, 5, 200),
            cand(2, 5, 200),
            cand(3, 10, 100),
            cand(4, 7, 300),
        ];
        let want: Vec<CopyId> = want.iter().copied().map(CopyId).collect();
        assert_eq!(choose_discretionary(&cands, needed), want);
    }

    proptest! {
        #[test]
        fn discretionary_is_a_minimal_oldest_first_prefix(
            raw in prop::collection::vec((0..1_000u64, 0..20i64), 0..12),
            needed in 0..3_000u64,
        ) {
            let cands: Vec<ReleaseCandidate> = raw
                .iter()
                .enumerate()
                .map(|(i, &(size, added_at))| cand(i as i64, size, added_at))
                .collect();
            let chosen = choose_discretionary(&cands, needed);

            let mut order = cands.clone();
            order.sort_by_key(|c| (c.added_at, c.copy_id));
            let ids: Vec<CopyId> = order.iter().map(|c| c.copy_id).collect();
            prop_assert_eq!(&chosen[..], &ids[..chosen.len()]);

            let freed: u64 = order[..chosen.len()].iter().map(|c| c.size).sum();
            let total: u64 = cands.iter().map(|c| c.size).sum();
            if total >= needed {
                prop_assert!(freed >= needed);
            } else {
                prop_assert_eq!(chosen.len(), cands.len());
            }
            if let Some(last) = chosen.len().checked_sub(1) {
                prop_assert!(freed - order[last].size < needed);
            }
        }
    }

    // --- auto_effects ------------------------------------------------------------------------

    fn rule(group_id: i64, node_id: i64, autosync: bool, autoclean: bool) -> ActionRule {
        ActionRule {
            group_id: GroupId(group_id),
            node_id: NodeId(node_id),
            autosync,
            autoclean,
        }
    }

    /// A new copy on node 1 of group 10.
    const NEW: NewCopy = NewCopy {
        node_id: NodeId(1),
        group_id: GroupId(10),
    };

    #[test]
    fn autosync_requests_into_groups_without_the_file() {
        let rules = [
            rule(20, 1, true, false),
            rule(30, 1, true, false),
            rule(40, 2, true, false),
        ];
        let file = FileState {
            present_in_groups: vec![GroupId(10), GroupId(20)],
            ..FileState::default()
        };
        // 20 holds it already; 40 syncs from another node.
        assert_eq!(
            auto_effects(&NEW, &rules, &file),
            [AutoEffect::Sync {
                from_node: NodeId(1),
                to_group: GroupId(30)
            }]
        );
    }

    #[test]
    fn autosync_skips_groups_with_a_request_under_way_and_its_own_group() {
        let rules = [rule(20, 1, true, false), rule(10, 1, true, false)];
        let file = FileState {
            requested_into_groups: vec![GroupId(20)],
            ..FileState::default()
        };
        assert_eq!(auto_effects(&NEW, &rules, &file), []);
    }

    #[test]
    fn autoclean_releases_held_copies_not_yet_released() {
        let rules = [
            rule(10, 2, false, true),
            rule(10, 3, false, true),
            rule(10, 4, false, true),
            rule(10, 5, false, true),
            rule(99, 6, false, true),
        ];
        let file = FileState {
            copies_on_nodes: vec![
                (NodeId(1), Has::Yes, Wants::Keep),
                (NodeId(2), Has::Yes, Wants::Keep),
                (NodeId(3), Has::Yes, Wants::ReleaseNow),
                (NodeId(4), Has::No, Wants::Keep),
                (NodeId(5), Has::Corrupt, Wants::ReleaseWhenNeeded),
                (NodeId(6), Has::Yes, Wants::Keep),
            ],
            ..FileState::default()
        };
        // 3 is released already, 4 holds nothing, 6's rule is for another group.
        assert_eq!(
            auto_effects(&NEW, &rules, &file),
            [
                AutoEffect::Release { node_id: NodeId(2) },
                AutoEffect::Release { node_id: NodeId(5) }
            ]
        );
    }

    #[test]
    fn autoclean_never_releases_the_new_copy() {
        let rules = [rule(10, 1, false, true)];
        let file = FileState {
            copies_on_nodes: vec![(NodeId(1), Has::Yes, Wants::Keep)],
            ..FileState::default()
        };
        assert_eq!(auto_effects(&NEW, &rules, &file), []);
    }

    #[test]
    fn auto_effects_are_sorted_and_deduplicated() {
        let rules = [
            rule(10, 2, true, true),
            rule(30, 1, true, false),
            rule(10, 2, false, true),
            rule(20, 1, true, true),
            rule(30, 1, true, false),
        ];
        let file = FileState {
            copies_on_nodes: vec![(NodeId(2), Has::Yes, Wants::Keep)],
            ..FileState::default()
        };
        assert_eq!(
            auto_effects(&NEW, &rules, &file),
            [
                AutoEffect::Sync {
                    from_node: NodeId(1),
                    to_group: GroupId(20)
                },
                AutoEffect::Sync {
                    from_node: NodeId(1),
                    to_group: GroupId(30)
                },
                AutoEffect::Release { node_id: NodeId(2) },
            ]
        );
    }

    fn small_groups(max_len: usize) -> impl Strategy<Value = Vec<GroupId>> {
        prop::collection::vec((0..5i64).prop_map(GroupId), 0..max_len)
    }

    proptest! {
        #[test]
        fn auto_effects_respect_their_guards(
            new_node in (0..5i64).prop_map(NodeId),
            new_group in (0..5i64).prop_map(GroupId),
            rules in prop::collection::vec(
                (0..5i64, 0..5i64, any::<bool>(), any::<bool>())
                    .prop_map(|(g, n, s, c)| rule(g, n, s, c)),
                0..10,
            ),
            present in small_groups(4),
            requested in small_groups(4),
            copies in prop::collection::vec(
                ((0..5i64).prop_map(NodeId), prop::sample::select(Has::ALL), prop::sample::select(Wants::ALL)),
                0..8,
            ),
        ) {
            let new = NewCopy { node_id: new_node, group_id: new_group };
            let file = FileState {
                present_in_groups: present,
                requested_into_groups: requested,
                copies_on_nodes: copies,
            };
            let effects = auto_effects(&new, &rules, &file);
            prop_assert!(effects.windows(2).all(|w| w[0] < w[1]), "not sorted and unique");
            for effect in effects {
                match effect {
                    AutoEffect::Sync { from_node, to_group } => {
                        prop_assert_eq!(from_node, new.node_id);
                        prop_assert_ne!(to_group, new.group_id);
                        prop_assert!(!file.present_in_groups.contains(&to_group));
                        prop_assert!(!file.requested_into_groups.contains(&to_group));
                        prop_assert!(rules.iter().any(|r| r.autosync
                            && r.node_id == from_node && r.group_id == to_group));
                    }
                    AutoEffect::Release { node_id } => {
                        prop_assert_ne!(node_id, new.node_id);
                        let held = file.copies_on_nodes.iter().any(|&(n, h, w)|
                            n == node_id && h != Has::No && w != Wants::ReleaseNow);
                        prop_assert!(held, "node {} holds no copy to release", node_id);
                        prop_assert!(rules.iter().any(|r| r.autoclean
                            && r.node_id == node_id && r.group_id == new.group_id));
                    }
                }
            }
        }
    }

    // --- fits --------------------------------------------------------------------------------

    fn space(
        used_by_copies: u64,
        max_total: Option<u64>,
        avail: Option<u64>,
        capacity: Option<u64>,
        min_avail: Option<u64>,
    ) -> NodeSpace {
        NodeSpace {
            used_by_copies,
            max_total,
            avail,
            capacity,
            min_avail,
        }
    }

    /// Regression: a 40 MiB pull that failed for space after 16 MiB kept its partial file;
    /// once space was freed, the same copy must fit again.
    #[test]
    fn a_copy_counts_its_own_partial_file_as_free() {
        const MIB: u64 = 1 << 20;
        let after_freeing = space(0, None, Some(34 * MIB), Some(100 * MIB), None);
        assert!(
            fits(&after_freeing, 40 * MIB).is_err(),
            "the part counted as used"
        );
        assert_eq!(fits(&after_freeing.holding(16 * MIB), 40 * MIB), Ok(()));
        let unmeasured = space(0, None, None, None, None).holding(16 * MIB);
        assert_eq!(unmeasured.avail, None);
    }

    #[test_case(space(0, None, None, None, None), u64::MAX, Ok(()); "unconstrained")]
    #[test_case(space(90, Some(100), None, None, None), 10, Ok(()); "up to max_total")]
    #[test_case(space(90, Some(100), None, None, None), 11,
        Err(NoFit::MaxTotal { used: 90, size: 11, max_total: 100 }); "past max_total")]
    #[test_case(space(0, None, None, Some(100), Some(50)), 1_000, Ok(()); "unmeasured avail")]
    #[test_case(space(0, None, Some(10), None, None), 11,
        Err(NoFit::NoSpace { avail: 10, size: 11 }); "no space")]
    #[test_case(space(0, None, Some(100), None, Some(20)), 80, Ok(()); "down to min_avail")]
    #[test_case(space(0, None, Some(100), None, Some(20)), 81,
        Err(NoFit::MinAvail { avail: 100, size: 81, min_avail: 20 }); "under min_avail")]
    #[test_case(space(0, None, Some(50), Some(100), None), 47, Ok(()); "exactly 97 percent")]
    #[test_case(space(0, None, Some(50), Some(100), None), 48,
        Err(NoFit::TooFull { percent_after: 98.0 }); "over 97 percent")]
    #[test_case(space(0, None, Some(50), Some(0), None), 50, Ok(()); "zero capacity is unknown")]
    #[test_case(space(0, None, Some(u64::MAX), Some(10), None), 5, Ok(()); "avail over capacity")]
    fn fits_table(space: NodeSpace, size: u64, want: Result<(), NoFit>) {
        assert_eq!(fits(&space, size), want);
    }

    #[test_case(NoFit::MaxTotal { used: 90, size: 11, max_total: 100 },
        "11 B more would take the node's copies past max_total (90 B used of 100 B)"; "max_total")]
    #[test_case(NoFit::MinAvail { avail: 100, size: 81, min_avail: 20 },
        "81 B would leave 19 B free, under min_avail 20 B"; "min_avail")]
    #[test_case(NoFit::NoSpace { avail: 10, size: 11 }, "11 B does not fit in 10 B free";
        "no space")]
    #[test_case(NoFit::TooFull { percent_after: 97.0001 },
        "the disk would be 97.1 % full, over the 97 % limit"; "too full rounds up")]
    fn no_fit_display(why: NoFit, want: &str) {
        assert_eq!(why.to_string(), want);
    }

    /// Small values to hit the boundaries often, any value to catch overflow.
    fn bytes_value() -> impl Strategy<Value = u64> {
        prop_oneof![3 => 0..1_000u64, 1 => any::<u64>()]
    }

    fn node_space() -> impl Strategy<Value = NodeSpace> {
        (
            bytes_value(),
            prop::option::of(bytes_value()),
            prop::option::of(bytes_value()),
            prop::option::of(bytes_value()),
            prop::option::of(bytes_value()),
        )
            .prop_map(|(u, m, a, c, n)| space(u, m, a, c, n))
    }

    proptest! {
        #[test]
        fn fit_is_monotonic_in_size(s in node_space(), a in bytes_value(), b in bytes_value()) {
            let (small, large) = (a.min(b), a.max(b));
            if fits(&s, small).is_err() {
                prop_assert!(fits(&s, large).is_err());
            }
        }

        #[test]
        fn anything_fits_an_unconstrained_node(used in any::<u64>(), size in any::<u64>()) {
            prop_assert_eq!(fits(&space(used, None, None, None, None), size), Ok(()));
        }
    }

    // --- choose_transport --------------------------------------------------------------------

    fn disk(
        node_id: i64,
        host_id: Option<i64>,
        active: bool,
        space: NodeSpace,
    ) -> TransportCandidate {
        TransportCandidate {
            node_id: NodeId(node_id),
            name: format!("t{node_id}"),
            host_id: host_id.map(HostId),
            active,
            space,
        }
    }

    /// A measured 1000-byte disk with `avail` free.
    fn measured(avail: u64) -> NodeSpace {
        space(0, None, Some(avail), Some(1_000), None)
    }

    #[test]
    fn transport_fills_the_fullest_disk_that_fits() {
        let cands = [
            disk(1, Some(7), true, measured(900)),
            disk(2, Some(7), true, measured(100)),
            disk(3, Some(7), true, measured(300)),
        ];
        // Disk 2 is fullest but would pass 97 %.
        assert_eq!(choose_transport(&cands, HostId(7), 50), Ok(NodeId(2)));
        assert_eq!(choose_transport(&cands, HostId(7), 80), Ok(NodeId(3)));
    }

    #[test]
    fn transport_uses_only_active_disks_on_the_source_host() {
        let cands = [
            disk(1, Some(8), true, measured(500)),
            disk(2, Some(7), false, measured(500)),
            disk(3, None, true, measured(500)),
        ];
        assert_eq!(
            choose_transport(&cands, HostId(7), 1),
            Err(NoTransport::NoDiskOnHost)
        );
        assert_eq!(
            NoTransport::NoDiskOnHost.to_string(),
            "no active transport disk on the source's host"
        );
    }

    #[test]
    fn transport_ties_go_to_fewer_free_bytes_then_smaller_id() {
        let half_of = |capacity: u64| space(0, None, Some(capacity / 2), Some(capacity), None);
        let cands = [
            disk(5, Some(7), true, half_of(1_000)),
            disk(4, Some(7), true, half_of(2_000)),
            disk(3, Some(7), true, half_of(1_000)),
        ];
        assert_eq!(choose_transport(&cands, HostId(7), 1), Ok(NodeId(3)));
    }

    #[test]
    fn transport_unmeasured_disks_rank_by_max_total_then_below_known() {
        let cands = [
            disk(1, Some(7), true, space(0, None, None, None, None)),
            disk(2, Some(7), true, space(100, Some(1_000), None, None, None)),
            disk(3, Some(7), true, space(600, Some(1_000), None, None, None)),
        ];
        assert_eq!(choose_transport(&cands, HostId(7), 1), Ok(NodeId(3)));
        assert_eq!(choose_transport(&cands, HostId(7), 500), Ok(NodeId(2)));
        assert_eq!(choose_transport(&cands, HostId(7), 5_000), Ok(NodeId(1)));
    }

    #[test]
    fn transport_none_fits_names_each_disk() {
        let cands = [
            disk(1, Some(7), true, measured(10)),
            disk(2, Some(7), true, space(0, Some(5), None, None, None)),
        ];
        let err = choose_transport(&cands, HostId(7), 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no transport disk has room: t1: 20 B does not fit in 10 B free; \
             t2: 20 B more would take the node's copies past max_total (0 B used of 5 B)"
        );
    }

    /// The fraction used, as an independent float oracle (exact for these small values);
    /// unknown ranks below any known fraction.
    fn fraction_or_below(s: &NodeSpace) -> f64 {
        s.used_fraction().unwrap_or(-1.0)
    }

    fn transport_candidates() -> impl Strategy<Value = Vec<TransportCandidate>> {
        let small = || prop::option::of(0..1_000u64);
        let space = (
            0..1_000u64,
            small(),
            small(),
            small(),
            prop::option::of(0..50u64),
        )
            .prop_map(|(u, m, a, c, n)| space(u, m, a, c, n));
        let one = (prop::option::of(0..3i64), any::<bool>(), space);
        prop::collection::vec(one, 0..8).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (host, active, s))| disk(i as i64, host, active, s))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn transport_choice_is_on_host_active_fitting_and_fullest(
            cands in transport_candidates(),
            host in (0..3i64).prop_map(HostId),
            size in 0..300u64,
        ) {
            let eligible: Vec<&TransportCandidate> =
                cands.iter().filter(|c| c.active && c.host_id == Some(host)).collect();
            match choose_transport(&cands, host, size) {
                Ok(id) => {
                    let chosen = cands.iter().find(|c| c.node_id == id).expect("a candidate's id");
                    prop_assert!(chosen.active);
                    prop_assert_eq!(chosen.host_id, Some(host));
                    prop_assert!(fits(&chosen.space, size).is_ok());
                    for other in eligible.iter().filter(|c| fits(&c.space, size).is_ok()) {
                        let fo = fraction_or_below(&other.space);
                        let fc = fraction_or_below(&chosen.space);
                        prop_assert!(fo <= fc, "{} is fuller than {}", other.name, chosen.name);
                        if fo == fc {
                            let free = |s: &NodeSpace| s.free_bytes().unwrap_or(u64::MAX);
                            prop_assert!(free(&other.space) >= free(&chosen.space));
                        }
                    }
                }
                Err(NoTransport::NoDiskOnHost) => prop_assert!(eligible.is_empty()),
                Err(NoTransport::NoneFits(refusals)) => {
                    prop_assert_eq!(refusals.len(), eligible.len());
                    prop_assert!(eligible.iter().all(|c| fits(&c.space, size).is_err()));
                }
            }
        }
    }
}
