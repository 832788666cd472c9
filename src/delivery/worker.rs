//! A delivery worker: takes one piece of work at a time from the scheduler — plan attempts, deliver a job,
//! conclude attempts — and reports what came of it. A panic in the work is caught and reported as a failure
//! of that work (of each message in it); the worker goes on.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use chrono::Utc;
use crossbeam_channel::Receiver;
use log::error;

use crate::delivery::attempt::{Attempted, Conclusion, Deliverer, Plan};
use crate::delivery::body;
use crate::delivery::job::{Job, JobResults, Target};
use crate::delivery::transport::Delivery;
use crate::logging;
use crate::smtp::Detail;
use crate::spool::{Queued, SpoolError};
use crate::step;

/// What the scheduler gives a worker. Plans and conclusions come several at a time when several wait, so that a
/// busy scheduler wakes a worker per batch, not per message.
pub enum Work {
    /// Route messages and read their header sections: the first step of their attempts.
    Plan(Vec<Queued>),
    /// Deliver a job: one target, one or more messages for it.
    Deliver(Job),
    /// Record attempts whose deliveries are all done, in one journal write.
    Conclude(Vec<Conclusion>),
}

/// What a worker reports.
pub enum Finished {
    Planned(Vec<(Queued, Result<Plan, SpoolError>)>),
    Delivered(Target, JobResults),
    Concluded(Vec<(Queued, Result<Attempted, SpoolError>)>),
}

/// Works until the scheduler closes `work` or stops listening (`report` returns false).
pub fn run(deliverer: &Deliverer, work: &Receiver<Work>, report: impl Fn(Finished) -> bool) {
    for item in work.iter() {
        let finished = perform(deliverer, item);
        body::close_file();
        if !report(finished) {
            return;
        }
    }
}

fn perform(deliverer: &Deliverer, work: Work) -> Finished {
    match work {
        Work::Plan(messages) => Finished::Planned(logging::together(|| {
            messages
                .into_iter()
                .map(|message| {
                    let planned = guarded(|| deliverer.plan(&message))
                        .unwrap_or_else(|| Err(internal_error(&message)));
                    (message, planned)
                })
                .collect()
        })),
        Work::Deliver(job) => {
            let results = guarded(|| deliver(deliverer, &job)).unwrap_or_else(|| {
                let failed =
                    Delivery::temporary(Detail::OtherMailSystem, "internal error during delivery");
                job.parts
                    .iter()
                    .map(|part| {
                        let routes = part.routes.iter().map(|r| (r.clone(), failed.clone()));
                        (part.message.envelope.id.clone(), routes.collect())
                    })
                    .collect()
            });
            Finished::Delivered(job.target, results)
        }
        Work::Conclude(mut conclusions) => {
            let attempted = logging::together(|| {
                guarded(|| deliverer.conclude_all(&mut conclusions, Utc::now()))
            })
            .unwrap_or_else(|| {
                let failed = conclusions.iter().map(|c| Err(internal_error(&c.message)));
                failed.collect()
            });
            let messages = conclusions.into_iter().map(|c| c.message);
            Finished::Concluded(messages.zip(attempted).collect())
        }
    }
}

/// Delivers the job: a mailbox's messages appended together, other targets' messages one after another.
/// Once a remote destination is found down, the job's other messages are deferred with the same reason
/// rather than each waiting out the same timeouts (which would hold the results of all of them for as long).
fn deliver(deliverer: &Deliverer, job: &Job) -> JobResults {
    if let Target::Mailbox(_) = job.target {
        return deliverer.deliver_to_mailbox(&job.parts);
    }
    let mut down: Option<Delivery> = None;
    job.parts
        .iter()
        .map(|part| {
            let id = part.message.envelope.id.clone();
            if let Some(failure) = &down {
                step!(
                    id.as_str(),
                    "not tried: the destination did not answer for an earlier message of this job"
                );
                let routes = part.routes.iter().map(|r| (r.clone(), failure.clone()));
                return (id, routes.collect());
            }
            let delivered =
                deliverer.deliver_routes(&part.message, part.routes.clone(), &part.headers);
            if matches!(job.target, Target::Remote(_))
                && delivered.iter().all(|(_, d)| d.destination_down())
            {
                down = delivered.first().map(|(_, d)| d.clone());
            }
            (id, delivered)
        })
        .collect()
}

/// Runs `work`, catching a panic (logged at error level).
fn guarded<T>(work: impl FnOnce() -> T) -> Option<T> {
    panic::catch_unwind(AssertUnwindSafe(work))
        .map_err(|panic| {
            error!(
                "delivery failed on an internal error ({}); the worker goes on",
                panic_text(panic.as_ref())
            );
        })
        .ok()
}

fn internal_error(message: &Queued) -> SpoolError {
    SpoolError::Io {
        path: message.file.clone(),
        source: std::io::Error::other("internal error during delivery"),
    }
}

/// What a caught panic said.
pub fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
