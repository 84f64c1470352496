//! Allocation of regions of the `SLOTS` array to VIP tables.
//!
//! A VIP's tables are replaced by writing new regions and then switching the VIP's meta to
//! them; the old regions are freed only after a quarantine, so that a packet that read the old
//! meta just before the switch still reads the old, intact table. A caller that wants a region
//! back sooner can end the quarantine with an RCU grace period ([`rcu_grace_period`]).

use std::time::{Duration, Instant};

/// How long a freed region waits before it can be reused. XDP runs in an RCU read section
/// lasting microseconds; this is generous.
pub const QUARANTINE: Duration = Duration::from_millis(200);

/// About how long [`rcu_grace_period`] takes (measured 13-16 ms on two CPUs): a quarantine
/// ending sooner is waited out instead.
const GRACE_PERIOD: Duration = Duration::from_millis(20);

/// Waits until every XDP program run that started before this call has ended, so that no
/// packet still reads a table its VIP switched away from before the call.
///
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` runs `synchronize_rcu()` (kernel/sched/membarrier.c),
/// which returns once every RCU read-side critical section that began before it has ended;
/// an XDP program always runs inside one (`rcu_read_lock` in NAPI polls, generic XDP and
/// `BPF_PROG_TEST_RUN`). On one CPU the kernel skips the wait, which is not enough where
/// RCU readers can be preempted, and with `nohz_full` it refuses: both are errors here, and
/// the caller waits out the quarantine instead.
fn rcu_grace_period() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: `sysconf` reads a system value.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if cpus < 2 {
        return Err(std::io::Error::other("one CPU"));
    }
    // SAFETY: `membarrier` with this command takes no pointer and changes no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A region `[off, off + len)` of the slots array.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub off: u32,
    pub len: u32,
}

/// First-fit allocator over `[0, capacity)`.
#[derive(Debug, Clone)]
pub struct Regions {
    capacity: u32,
    /// Free regions, sorted by offset, never adjacent (merged).
    free: Vec<Region>,
    quarantined: Vec<(Instant, Region)>,
    /// While a change's map writes are held back ([`Regions::defer_frees`]): the regions it
    /// freed, which the data path may still read until the change is made.
    deferred: Option<Vec<Region>>,
    /// When the latest grace period that has ended began (waited for in a thread of its own
    /// after each change, [`Regions::end_deferral`]): a region quarantined before that is free.
    grace: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Regions {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: vec![Region {
                off: 0,
                len: capacity,
            }],
            quarantined: Vec::new(),
            deferred: None,
            grace: Default::default(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries free now or after quarantine.
    pub fn available(&self) -> u64 {
        self.free
            .iter()
            .chain(self.quarantined.iter().map(|(_, r)| r))
            .map(|r| u64::from(r.len))
            .sum()
    }

    /// A region of `len` entries (`len` > 0), or `None` if none is free. Waits out the
    /// quarantine of freed regions if that is what it takes.
    pub fn alloc(&mut self, len: u32) -> Option<Region> {
        assert!(len > 0, "empty regions are not allocated");
        self.release(Instant::now());
        if let Some(region) = self.take(len) {
            return Some(region);
        }
        if let Some(&(until, _)) = self.quarantined.iter().max_by_key(|(t, _)| *t)
            && self.available() >= u64::from(len)
        {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            self.release(until);
            return self.take(len);
        }
        None
    }

    /// Like [`Regions::alloc`], but `prefer` if it has `len` entries and is free, now or after
    /// the rest of its quarantine if that is at most `wait`: a VIP's tables alternate between
    /// two regions, and a table written over the one before last differs from it only where
    /// slots moved, which can be much faster to write than a whole table.
    pub fn alloc_preferring(
        &mut self,
        len: u32,
        prefer: Option<Region>,
        wait: Duration,
    ) -> Option<Region> {
        if let Some(region) = prefer.filter(|r| r.len == len) {
            let now = Instant::now();
            self.release(now);
            if self.reserve(region) {
                return Some(region);
            }
            if let Some(&(until, _)) = self.quarantined.iter().find(|(_, r)| *r == region)
                && until.saturating_duration_since(now) <= wait
            {
                let rest = until.saturating_duration_since(now);
                if rest > GRACE_PERIOD && rcu_grace_period().is_ok() {
                    // Every region in quarantine now was freed after its VIP switched away
                    // from it; the programs that read it before the switch have ended.
                    self.release(now + QUARANTINE);
                } else {
                    std::thread::sleep(rest);
                    self.release(until);
                }
                if self.reserve(region) {
                    return Some(region);
                }
            }
        }
        self.alloc(len)
    }

    /// Marks `region` as allocated (restoring a saved allocation); false if any of it is not
    /// free.
    pub fn reserve(&mut self, region: Region) -> bool {
        let Some(i) = self
            .free
            .iter()
            .position(|r| r.off <= region.off && region.off + region.len <= r.off + r.len)
        else {
            return false;
        };
        let r = self.free.remove(i);
        let before = Region {
            off: r.off,
            len: region.off - r.off,
        };
        let after = Region {
            off: region.off + region.len,
            len: r.off + r.len - (region.off + region.len),
        };
        for (k, part) in [before, after]
            .into_iter()
            .filter(|p| p.len > 0)
            .enumerate()
        {
            self.free.insert(i + k, part);
        }
        true
    }

    /// Frees `region` after the quarantine.
    pub fn free(&mut self, region: Region) {
        match &mut self.deferred {
            Some(deferred) => deferred.push(region),
            None => self.quarantined.push((Instant::now() + QUARANTINE, region)),
        }
    }

    /// From now on, freed regions are not reused (nor counted as available) until
    /// [`Regions::end_deferral`]: the change that frees them has not reached the data path yet.
    pub fn defer_frees(&mut self) {
        self.deferred.get_or_insert_with(Vec::new);
    }

    /// The change has reached the data path: the regions it freed go into quarantine now, and
    /// a grace period, waited for in the background, may end it sooner (within some 15 ms
    /// rather than [`QUARANTINE`]), so that the next change finds them free.
    pub fn end_deferral(&mut self) {
        let freed = self.deferred.take().unwrap_or_default();
        if freed.is_empty() {
            return;
        }
        for region in freed {
            self.free(region);
        }
        let grace = std::sync::Arc::clone(&self.grace);
        let start = Instant::now();
        std::thread::spawn(move || {
            if rcu_grace_period().is_ok() {
                let mut latest = grace.lock().unwrap_or_else(|p| p.into_inner());
                if latest.is_none_or(|t| t < start) {
                    *latest = Some(start);
                }
            }
        });
    }

    fn take(&mut self, len: u32) -> Option<Region> {
        let i = self.free.iter().position(|r| r.len >= len)?;
        let region = Region {
            off: self.free[i].off,
            len,
        };
        if self.free[i].len == len {
            self.free.remove(i);
        } else {
            self.free[i].off += len;
            self.free[i].len -= len;
        }
        Some(region)
    }

    fn release(&mut self, now: Instant) {
        // Quarantined (at `until - QUARANTINE`) before the latest grace period began.
        let grace = *self.grace.lock().unwrap_or_else(|p| p.into_inner());
        let before_grace = |until: Instant| grace.is_some_and(|g| until < g + QUARANTINE);
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .quarantined
            .drain(..)
            .partition(|(until, _)| *until <= now || before_grace(*until));
        self.quarantined = waiting;
        for (_, region) in ready {
            let at = self.free.partition_point(|r| r.off < region.off);
            self.free.insert(at, region);
            if at + 1 < self.free.len()
                && self.free[at].off + self.free[at].len == self.free[at + 1].off
            {
                self.free[at].len += self.free[at + 1].len;
                self.free.remove(at + 1);
            }
            if at > 0 && self.free[at - 1].off + self.free[at - 1].len == self.free[at].off {
                self.free[at - 1].len += self.free[at].len;
                self.free.remove(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_frees_and_merges() {
        let mut regions = Regions::new(100);
        let a = regions.alloc(40).unwrap();
        let b = regions.alloc(40).unwrap();
        assert_eq!((a.off, b.off), (0, 40));
        assert_eq!(regions.alloc(30), None, "only 20 left");
        regions.free(a);
        regions.free(b);
        // Both are in quarantine; the allocator waits it out and merges them with the tail.
        let c = regions.alloc(100).unwrap();
        assert_eq!(c, Region { off: 0, len: 100 });
    }

    #[test]
    fn reserving_splits_the_free_region() {
        let mut regions = Regions::new(100);
        assert!(regions.reserve(Region { off: 10, len: 20 }));
        assert!(!regions.reserve(Region { off: 25, len: 10 }), "overlaps");
        assert_eq!(regions.alloc(10), Some(Region { off: 0, len: 10 }));
        assert_eq!(regions.alloc(10), Some(Region { off: 30, len: 10 }));
        assert_eq!(regions.available(), 60);
    }

    #[test]
    fn regions_freed_by_a_held_change_wait_until_it_is_made() {
        let mut regions = Regions::new(20);
        let a = regions.alloc(10).unwrap();
        regions.defer_frees();
        regions.free(a);
        assert_eq!(
            regions.available(),
            10,
            "a deferred region is not available"
        );
        assert_eq!(regions.alloc(20), None);
        let b = regions.alloc(10).unwrap();
        assert_ne!(a.off, b.off);
        regions.end_deferral();
        regions.free(b);
        assert_eq!(regions.alloc(20), Some(Region { off: 0, len: 20 }));
    }

    #[test]
    fn a_preferred_region_is_taken_once_its_quarantine_is_over() {
        let mut regions = Regions::new(100);
        let a = regions.alloc(10).unwrap();
        let b = regions.alloc(10).unwrap();
        regions.free(a);
        // In quarantine for longer than the caller waits: somewhere else.
        let c = regions
            .alloc_preferring(10, Some(a), Duration::ZERO)
            .unwrap();
        assert_eq!(c, Region { off: 20, len: 10 });
        // Waiting for the quarantine, or for a grace period (far shorter), when the caller
        // would rather wait.
        regions.free(b);
        let start = Instant::now();
        assert_eq!(regions.alloc_preferring(10, Some(b), QUARANTINE), Some(b));
        if rcu_grace_period().is_ok() {
            assert!(
                start.elapsed() < QUARANTINE / 2,
                "waited {:?}",
                start.elapsed()
            );
        } else {
            assert!(
                start.elapsed() >= QUARANTINE / 2,
                "waited {:?}",
                start.elapsed()
            );
        }
        // Free (`a`, released by the wait): there, although first fit gives a lower region.
        let d = Region { off: 5, len: 5 };
        assert_eq!(
            regions.alloc_preferring(5, Some(d), Duration::ZERO),
            Some(d)
        );
        // Another size, or a region that is taken: first fit.
        assert_eq!(
            regions.alloc_preferring(5, Some(c), Duration::ZERO),
            Some(Region { off: 0, len: 5 })
        );
        let e = Region { off: 50, len: 10 };
        assert_eq!(
            regions.alloc_preferring(10, Some(e), Duration::ZERO),
            Some(e)
        );
        assert_eq!(
            regions.alloc_preferring(10, Some(e), QUARANTINE),
            Some(Region { off: 30, len: 10 })
        );
    }

    #[test]
    fn a_grace_period_after_a_change_frees_its_regions_before_the_quarantine_ends() {
        if rcu_grace_period().is_err() {
            return; // One CPU: the quarantine is all there is.
        }
        let mut regions = Regions::new(20);
        let a = regions.alloc(10).unwrap();
        regions.defer_frees();
        regions.free(a);
        regions.end_deferral();
        let start = Instant::now();
        // Room for 10 more only once `a` is free; the other 10 are taken first.
        assert_eq!(regions.alloc(10), Some(Region { off: 10, len: 10 }));
        while regions.quarantined.len() == 1 && start.elapsed() < QUARANTINE {
            regions.release(start);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(regions.quarantined.is_empty(), "still in quarantine");
        assert!(
            start.elapsed() < QUARANTINE / 2,
            "freed after {:?}",
            start.elapsed()
        );
        assert_eq!(regions.alloc(10), Some(a));
    }

    #[test]
    fn a_freed_region_is_not_reused_during_quarantine_if_there_is_room_elsewhere() {
        let mut regions = Regions::new(100);
        let a = regions.alloc(10).unwrap();
        regions.free(a);
        let b = regions.alloc(10).unwrap();
        assert_ne!(a.off, b.off);
    }
}
