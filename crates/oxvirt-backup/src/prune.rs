//! Which backups a retention policy keeps (as Proxmox Backup Server's prune does): of each VM's
//! backups, newest first, `keep_last` are kept, then the newest of each of the last
//! `keep_daily` days that have one (and not already kept), then of `keep_weekly` ISO weeks,
//! then of `keep_monthly` months. Every other backup goes. Times are UTC.

use crate::index::civil_from_days;
use std::collections::{HashMap, HashSet};

/// A period's key of a backup (backups with the same key fall in the same period).
type PeriodOf = Box<dyn Fn(&Candidate) -> i64>;

/// How many of each period's newest backups to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeepPolicy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl KeepPolicy {
    /// Keeps nothing: refused, so that a prune never removes every backup by mistake.
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0
    }
}

/// A backup as prune sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub vm: String,
    pub taken_at: u64,
}

/// The ids `policy` keeps among `backups` (every VM's apart).
pub fn keep(backups: &[Candidate], policy: &KeepPolicy) -> HashSet<String> {
    let mut by_vm: HashMap<&str, Vec<&Candidate>> = HashMap::new();
    for b in backups {
        by_vm.entry(b.vm.as_str()).or_default().push(b);
    }
    let mut kept = HashSet::new();
    for list in by_vm.values_mut() {
        list.sort_by(|a, b| (b.taken_at, &b.id).cmp(&(a.taken_at, &a.id)));
        let day = |b: &Candidate| (b.taken_at / 86_400_000) as i64;
        let periods: [(u32, PeriodOf); 4] = [
            (policy.keep_last, Box::new(|b: &Candidate| -(b.taken_at as i64) - 1)),
            (policy.keep_daily, Box::new(day)),
            // ISO weeks start on Monday; 1970-01-01 was a Thursday.
            (policy.keep_weekly, Box::new(move |b: &Candidate| (day(b) + 3).div_euclid(7))),
            (
                policy.keep_monthly,
                Box::new(move |b: &Candidate| {
                    let (y, m, _) = civil_from_days(day(b));
                    y * 12 + i64::from(m)
                }),
            ),
        ];
        let mut decided: HashSet<&str> = HashSet::new();
        for (n, period) in periods.iter() {
            if *n == 0 {
                continue;
            }
            // Periods a backup kept by an earlier option covers already count as kept.
            let covered: HashSet<i64> = list.iter().filter(|b| kept.contains(&b.id)).map(|b| period(b)).collect();
            let mut taken: HashSet<i64> = HashSet::new();
            for b in list.iter() {
                if decided.contains(b.id.as_str()) {
                    continue;
                }
                let p = period(b);
                if covered.contains(&p) {
                    continue;
                }
                if !taken.contains(&p) {
                    if taken.len() >= *n as usize {
                        break;
                    }
                    taken.insert(p);
                    kept.insert(b.id.clone());
                }
                decided.insert(b.id.as_str());
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn at(days: u64, hour: u64) -> Candidate {
        Candidate { id: format!("web-{days:03}-{hour:02}"), vm: "web".into(), taken_at: days * DAY + hour * 3_600_000 }
    }

    #[test]
    fn the_newest_of_each_period_is_kept() {
        // 60 days, two backups a day (06:00 and 18:00).
        let all: Vec<Candidate> = (0..60).flat_map(|d| [at(d, 6), at(d, 18)]).collect();
        let k = keep(&all, &KeepPolicy { keep_last: 3, ..Default::default() });
        assert_eq!(k, ["web-059-18", "web-059-06", "web-058-18"].iter().map(|s| s.to_string()).collect());

        let k = keep(&all, &KeepPolicy { keep_last: 1, keep_daily: 3, ..Default::default() });
        // Day 59 is covered by keep_last's backup: the daily ones are days 58, 57, 56.
        let want: HashSet<String> =
            ["web-059-18", "web-058-18", "web-057-18", "web-056-18"].iter().map(|s| s.to_string()).collect();
        assert_eq!(k, want);

        let k = keep(&all, &KeepPolicy { keep_weekly: 2, keep_monthly: 2, ..Default::default() });
        // Day 59 is 1970-03-01, a Sunday: the weeks of days 53..=59 and 46..=52; March and
        // February are covered by those, so the months add January's newest (day 30).
        let want: HashSet<String> = ["web-059-18", "web-052-18", "web-030-18"].iter().map(|s| s.to_string()).collect();
        assert_eq!(k, want);
        assert!(k.iter().all(|id| all.iter().any(|b| &b.id == id)));
    }

    #[test]
    fn vms_are_pruned_apart_and_nothing_kept_is_refused() {
        let mut all = vec![at(1, 1), at(2, 1)];
        all.push(Candidate { id: "db-1".into(), vm: "db".into(), taken_at: 0 });
        let k = keep(&all, &KeepPolicy { keep_last: 1, ..Default::default() });
        assert!(k.contains("db-1") && k.contains("web-002-01") && k.len() == 2);
        assert!(KeepPolicy::default().keeps_nothing());
    }
}
