//! The scheduler's queues of waiting deliveries, one per target (a mailbox, a command, another host), each
//! with its own limit of jobs at once, and the choice of the next job for a free worker.

use std::collections::{HashMap, VecDeque};

use crate::config::Config;
use crate::delivery::job::{Job, MESSAGES_PER_JOB, Part, Target};

/// The waiting deliveries of one target.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Part>,
    /// Its jobs with a worker now.
    running: usize,
    /// Whether it is in [`Queues::ready`].
    listed: bool,
}

/// Every target with work waiting or running. A target is listed as ready while it has waiting work and room
/// for another job; ready targets take turns, so one busy target does not starve the others.
pub struct Queues {
    targets: HashMap<Target, Queue>,
    ready: VecDeque<Target>,
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
            remote_running: 0,
            remote_limit: workers.saturating_sub(1).max(1),
        }
    }

    /// Adds one message's deliveries to `target`.
    pub fn push(&mut self, target: Target, part: Part, config: &Config) {
        let limit = target.limit(config);
        let queue = self.targets.entry(target.clone()).or_default();
        queue.waiting.push_back(part);
        if !queue.listed && queue.running < limit {
            queue.listed = true;
            self.ready.push_back(target);
        }
    }

    /// The next job for a free worker, if any target may start one: up to [`MESSAGES_PER_JOB`] messages for one
    /// target.
    pub fn next_job(&mut self, config: &Config) -> Option<Job> {
        for _ in 0..self.ready.len() {
            let target = self.ready.pop_front()?;
            if target.is_remote() && self.remote_running >= self.remote_limit {
                self.ready.push_back(target);
                continue;
            }
            let limit = target.limit(config);
            let queue = self.targets.get_mut(&target)?;
            let take = queue.waiting.len().min(MESSAGES_PER_JOB);
            let parts: Vec<Part> = queue.waiting.drain(..take).collect();
            queue.running += 1;
            if !queue.waiting.is_empty() && queue.running < limit {
                self.ready.push_back(target.clone());
            } else {
                queue.listed = false;
            }
            if target.is_remote() {
                self.remote_running += 1;
            }
            return Some(Job { target, parts });
        }
        None
    }

    /// A job for `target` is over.
    pub fn job_done(&mut self, target: &Target, config: &Config) {
        if target.is_remote() {
            self.remote_running -= 1;
        }
        let Some(queue) = self.targets.get_mut(target) else {
            return;
        };
        queue.running -= 1;
        if queue.waiting.is_empty() {
            if queue.running == 0 {
                self.targets.remove(target);
            }
        } else if !queue.listed && queue.running < target.limit(config) {
            queue.listed = true;
            self.ready.push_back(target.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
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
        let mut queues = Queues::new(4);
        for _ in 0..3 {
            queues.push(remote("slow.test"), part(), &config);
            queues.push(remote("slow.test"), part(), &config);
            queues.push(remote("other.test"), part(), &config);
        }
        let first = queues.next_job(&config).unwrap();
        assert_eq!(
            (first.target.clone(), first.parts.len()),
            (remote("slow.test"), 6)
        );
        let second = queues.next_job(&config).unwrap();
        assert_eq!(second.target, remote("other.test"));
        queues.push(remote("slow.test"), part(), &config);
        queues.push(remote("third.test"), part(), &config);
        let third = queues.next_job(&config).unwrap();
        assert_eq!(third.target, remote("slow.test"), "room for a second job");
        // Three remote jobs with 4 workers: the fourth worker is kept for local work.
        assert!(queues.next_job(&config).is_none());
        let mailbox = Target::Mailbox("/m/bob".into());
        queues.push(mailbox.clone(), part(), &config);
        queues.push(mailbox.clone(), part(), &config);
        let both = queues.next_job(&config).unwrap();
        assert_eq!((both.target, both.parts.len()), (mailbox.clone(), 2));
        queues.push(mailbox.clone(), part(), &config);
        queues.push(mailbox.clone(), part(), &config);
        assert!(
            queues.next_job(&config).is_none(),
            "one job at a time for a mailbox: the others gather meanwhile"
        );
        queues.job_done(&mailbox, &config);
        let gathered = queues.next_job(&config).unwrap();
        assert_eq!(
            (gathered.target, gathered.parts.len()),
            (mailbox.clone(), 2)
        );
        queues.job_done(&mailbox, &config);
        queues.job_done(&remote("slow.test"), &config);
        assert_eq!(
            queues.next_job(&config).unwrap().target,
            remote("third.test")
        );
        assert!(queues.next_job(&config).is_none());
    }
}
