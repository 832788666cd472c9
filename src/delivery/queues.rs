//! The scheduler's queues of waiting deliveries, one per target (a mailbox, a command, another host), each
//! with its own limit of jobs at once and, for a mailbox, its pace; and the choice of the next job for a free
//! worker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use crate::config::Config;
use crate::delivery::job::{Job, Part, Target};

/// The waiting deliveries of one target.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Part>,
    /// Its jobs with a worker now.
    running: usize,
    /// Whether it is in [`Queues::ready`].
    listed: bool,
    /// Its next job waits until then (see [`Target::pace`]).
    not_before: Option<Instant>,
    /// Whether it is in [`Queues::pacing`].
    paced: bool,
}

/// Every target with work waiting or running, or with a job started within its pace. A target is listed as
/// ready while it has waiting work, room for another job and its pace allows one; ready targets take turns,
/// so one busy target does not starve the others.
pub struct Queues {
    targets: HashMap<Target, Queue>,
    ready: VecDeque<Target>,
    /// Targets held back by their pace, by when it allows their next job (or, with nothing waiting, when they
    /// are forgotten).
    pacing: BinaryHeap<Reverse<(Instant, Target)>>,
    /// Remote jobs with a worker now, and how many there may be: fewer than the workers, so that local
    /// deliveries always find one.
    remote_running: usize,
    remote_limit: usize,
}

impl Queues {
    pub fn new(workers: usize) -> Queues {
        Queues {
            targets: HashMap::new(),
            ready: VecDeque::new(),
            pacing: BinaryHeap::new(),
            remote_running: 0,
            remote_limit: workers.saturating_sub(1).max(1),
        }
    }

    /// Adds one message's deliveries to `target`.
    pub fn push(&mut self, target: Target, part: Part, config: &Config, now: Instant) {
        self.targets
            .entry(target.clone())
            .or_default()
            .waiting
            .push_back(part);
        self.consider(target, config, now);
    }

    /// The next job for a free worker, if any target may start one: up to [`Target::most_per_job`] messages for
    /// one target.
    pub fn next_job(&mut self, config: &Config, now: Instant) -> Option<Job> {
        while let Some(Reverse((due, _))) = self.pacing.peek()
            && *due <= now
        {
            let Reverse((_, target)) = self.pacing.pop().expect("just looked at");
            if let Some(queue) = self.targets.get_mut(&target) {
                queue.paced = false;
            }
            self.consider(target, config, now);
        }
        for _ in 0..self.ready.len() {
            let target = self.ready.pop_front()?;
            if target.is_remote() && self.remote_running >= self.remote_limit {
                self.ready.push_back(target);
                continue;
            }
            let queue = self.targets.get_mut(&target)?;
            let take = queue.waiting.len().min(target.most_per_job());
            let parts: Vec<Part> = queue.waiting.drain(..take).collect();
            queue.running += 1;
            queue.listed = false;
            queue.not_before = target.pace().map(|pace| now + pace);
            if target.is_remote() {
                self.remote_running += 1;
            }
            self.consider(target.clone(), config, now);
            return Some(Job { target, parts });
        }
        None
    }

    /// When [`Queues::next_job`] may have a job that it does not have now: when the first paced target's pace
    /// is over.
    pub fn next_due(&self) -> Option<Instant> {
        self.pacing.peek().map(|Reverse((due, _))| *due)
    }

    /// A job for `target` is over.
    pub fn job_done(&mut self, target: &Target, config: &Config, now: Instant) {
        if target.is_remote() {
            self.remote_running -= 1;
        }
        let Some(queue) = self.targets.get_mut(target) else {
            return;
        };
        queue.running -= 1;
        self.consider(target.clone(), config, now);
    }

    /// Lists `target` as ready if it may start a job now. Holds it back in `pacing` while its pace forbids
    /// one and no whole job is waiting; with nothing waiting it is kept there too until its pace is over, so
    /// that a message arriving meanwhile waits for the pace as well. Forgets a target that has nothing to do and
    /// no pace to keep.
    fn consider(&mut self, target: Target, config: &Config, now: Instant) {
        let Some(queue) = self.targets.get_mut(&target) else {
            return;
        };
        if queue.listed || queue.running >= target.limit(config) {
            return;
        }
        let full = queue.waiting.len() >= target.most_per_job();
        match queue.not_before.filter(|&until| until > now) {
            // The end of the job running now considers it again.
            _ if queue.waiting.is_empty() && queue.running > 0 => {}
            // Its entry in `pacing` comes due.
            Some(_) if queue.paced && !full => {}
            Some(until) if !full => {
                queue.paced = true;
                self.pacing.push(Reverse((until, target)));
            }
            None if queue.waiting.is_empty() => {
                self.targets.remove(&target);
            }
            _ => {
                queue.listed = true;
                self.ready.push_back(target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::job::{MAILBOX_PACE, MESSAGES_PER_BATCH, MESSAGES_PER_JOB};
    use crate::delivery::trace::HeaderSection;
    use crate::spool::{DeliveryState, Envelope, Queued};

    fn part() -> Part {
        Part {
            message: Arc::new(Queued {
                envelope: Envelope::new(String::new(), Vec::new(), chrono::Utc::now()),
                len: 0,
                file: "q".into(),
                record_offset: 0,
                body_offset: 0,
                state: DeliveryState::default(),
            }),
            headers: HeaderSection::Read(Arc::from(&b""[..])),
            routes: Vec::new(),
        }
    }

    fn remote(domain: &str) -> Target {
        Target::Remote(domain.to_string())
    }

    #[test]
    fn each_target_has_its_limit_and_local_work_passes_remote_work() {
        let config = Config {
            remote_concurrency: 2,
            ..Config::builtin()
        };
        let now = Instant::now();
        let mut queues = Queues::new(4);
        for _ in 0..3 {
            queues.push(remote("slow.test"), part(), &config, now);
            queues.push(remote("slow.test"), part(), &config, now);
            queues.push(remote("other.test"), part(), &config, now);
        }
        let first = queues.next_job(&config, now).unwrap();
        assert_eq!(
            (first.target.clone(), first.parts.len()),
            (remote("slow.test"), 6)
        );
        let second = queues.next_job(&config, now).unwrap();
        assert_eq!(second.target, remote("other.test"));
        queues.push(remote("slow.test"), part(), &config, now);
        queues.push(remote("third.test"), part(), &config, now);
        let third = queues.next_job(&config, now).unwrap();
        assert_eq!(third.target, remote("slow.test"), "room for a second job");
        // Three remote jobs with 4 workers: the fourth worker is kept for local work.
        assert!(queues.next_job(&config, now).is_none());
        let mailbox = Target::Mailbox("/m/bob".into());
        queues.push(mailbox.clone(), part(), &config, now);
        queues.push(mailbox.clone(), part(), &config, now);
        let both = queues.next_job(&config, now).unwrap();
        assert_eq!((both.target, both.parts.len()), (mailbox.clone(), 2));
        queues.push(mailbox.clone(), part(), &config, now);
        queues.push(mailbox.clone(), part(), &config, now);
        assert!(
            queues.next_job(&config, now).is_none(),
            "one job at a time for a mailbox: the others gather meanwhile"
        );
        let later = now + MAILBOX_PACE;
        queues.job_done(&mailbox, &config, later);
        let gathered = queues.next_job(&config, later).unwrap();
        assert_eq!(
            (gathered.target, gathered.parts.len()),
            (mailbox.clone(), 2)
        );
        queues.job_done(&mailbox, &config, later);
        queues.job_done(&remote("slow.test"), &config, later);
        assert_eq!(
            queues.next_job(&config, later).unwrap().target,
            remote("third.test")
        );
        assert!(queues.next_job(&config, later).is_none());
    }

    #[test]
    fn a_mailbox_job_follows_the_last_one_after_its_pace_or_when_a_whole_job_waits() {
        let config = Config::builtin();
        let mailbox = Target::Mailbox("/m/bob".into());
        let start = Instant::now();
        let mut queues = Queues::new(4);
        queues.push(mailbox.clone(), part(), &config, start);
        assert_eq!(
            queues.next_job(&config, start).unwrap().parts.len(),
            1,
            "a mailbox without a recent job is delivered to at once"
        );
        assert_eq!(queues.next_due(), None, "nothing is held back yet");
        let soon = start + MAILBOX_PACE / 4;
        queues.push(mailbox.clone(), part(), &config, soon);
        queues.job_done(&mailbox, &config, soon);
        queues.push(mailbox.clone(), part(), &config, soon);
        assert!(queues.next_job(&config, soon).is_none(), "within the pace");
        assert_eq!(queues.next_due(), Some(start + MAILBOX_PACE));
        let paced = start + MAILBOX_PACE;
        let job = queues.next_job(&config, paced).unwrap();
        assert_eq!((job.target, job.parts.len()), (mailbox.clone(), 2));
        // A whole job's worth goes without waiting for the pace.
        queues.job_done(&mailbox, &config, paced);
        for _ in 0..mailbox.most_per_job() - 1 {
            queues.push(mailbox.clone(), part(), &config, paced);
        }
        assert!(queues.next_job(&config, paced).is_none());
        queues.push(mailbox.clone(), part(), &config, paced);
        assert_eq!(
            queues.next_job(&config, paced).unwrap().parts.len(),
            mailbox.most_per_job()
        );
        // Once that job is done and its pace over, the mailbox is forgotten: the next message goes at once.
        let quiet = paced + MAILBOX_PACE;
        queues.job_done(&mailbox, &config, paced);
        assert_eq!(queues.next_job(&config, quiet).map(|job| job.target), None);
        assert!(queues.targets.is_empty() && queues.next_due().is_none());
        queues.push(mailbox.clone(), part(), &config, quiet);
        assert_eq!(queues.next_job(&config, quiet).unwrap().parts.len(), 1);
    }

    #[test]
    fn a_mailbox_job_carries_more_messages_than_a_remote_one() {
        let config = Config::builtin();
        let now = Instant::now();
        let mut queues = Queues::new(4);
        let mailbox = Target::Mailbox("/m/bob".into());
        for target in [mailbox.clone(), remote("example.org")] {
            for _ in 0..MESSAGES_PER_BATCH + 1 {
                queues.push(target.clone(), part(), &config, now);
            }
            let job = queues.next_job(&config, now).unwrap();
            assert_eq!(job.parts.len(), target.most_per_job());
        }
        assert_eq!(mailbox.most_per_job(), MESSAGES_PER_BATCH);
        assert_eq!(remote("example.org").most_per_job(), MESSAGES_PER_JOB);
    }

    #[test]
    fn only_mailboxes_keep_a_pace() {
        let config = Config::builtin();
        let now = Instant::now();
        let mut queues = Queues::new(4);
        for target in [
            remote("example.org"),
            Target::Command("cat".into()),
            Target::Refused,
        ] {
            queues.push(target.clone(), part(), &config, now);
            assert_eq!(queues.next_job(&config, now).unwrap().target, target);
            queues.job_done(&target, &config, now);
            queues.push(target.clone(), part(), &config, now);
            assert_eq!(queues.next_job(&config, now).unwrap().target, target);
        }
        assert_eq!(queues.next_due(), None);
    }
}
