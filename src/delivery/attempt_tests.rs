//! A real deliverer on a spool and a mailbox folder of its own: routing, local delivery, bounces, retries on
//! the backoff schedule and expiry.

use std::fs;
use std::net::TcpListener;
use std::time::Duration;

use chrono::TimeZone;

use super::*;
use crate::config::LocalUsers;
use crate::smtp::Protocol;
use crate::spool::Envelope;
use crate::testing::TempDir;

/// A deliverer for the local users alice and bob at mx.test, with mail for other hosts going to a port where
/// nothing listens, retries after 5 minutes (doubling to an hour) and no wait for a locked mailbox.
fn deliverer(dir: &TempDir, aliases: &str) -> Deliverer {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = Config::builtin();
    config.hostname = "mx.test".into();
    config.local_domains = vec!["localhost".into(), "mx.test".into()];
    config.spool_dir = dir.0.join("spool");
    config.mailbox_dir = dir.0.join("mailboxes");
    config.local_users = LocalUsers::List(vec!["alice".into(), "bob".into()]);
    config.smarthost = Some(closed.to_string());
    config.nameservers = vec![closed];
    config.retry_first = Duration::from_secs(300);
    config.retry_max = Duration::from_secs(3600);
    config.mailbox_lock_timeout = Duration::ZERO;
    fs::create_dir_all(&config.mailbox_dir).unwrap();
    let spool = Spool::open(&config.spool_dir).unwrap();
    let aliases = Aliases::parse(aliases, "aliases").unwrap();
    Deliverer::new(
        Arc::new(config),
        Arc::new(spool),
        Arc::new(Reloadable::new(aliases)),
    )
}

fn arrival() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap()
}

fn queue(deliverer: &Deliverer, recipients: &[&str]) -> Queued {
    queue_text(
        deliverer,
        recipients,
        b"Subject: hi\r\nMessage-ID: <hi@client.test>\r\n\r\nFrom the body.\r\n",
    )
}

fn queue_text(deliverer: &Deliverer, recipients: &[&str], text: &[u8]) -> Queued {
    let recipients = recipients.iter().map(|r| r.to_string()).collect();
    let mut writer = deliverer.spool.new_message(Envelope {
        client: Some("192.0.2.7".parse().unwrap()),
        helo: "client.test".into(),
        protocol: Protocol::Esmtp,
        ..Envelope::new("carol@example.org".into(), recipients, arrival())
    });
    writer.write(text);
    deliverer.spool.commit(writer).unwrap()
}

fn mailbox(deliverer: &Deliverer, user: &str) -> String {
    fs::read_to_string(deliverer.config.mailbox_dir.join(user)).unwrap_or_default()
}

fn outcome<'a>(message: &'a Queued, key: &str) -> &'a Outcome {
    message.state.outcome(key).unwrap()
}

#[test]
fn aliases_route_to_mailboxes_and_unknown_users_are_bounced_at_once() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "staff: alice, bob\n");
    let mut message = queue(
        &deliverer,
        &["staff@mx.test", "Alice@localhost", "nobody@mx.test"],
    );
    let attempted = deliverer.attempt(&mut message, arrival()).unwrap();
    assert_eq!(attempted.next_try, None, "nothing is left to retry");
    for user in ["alice", "bob"] {
        let text = mailbox(&deliverer, user);
        assert_eq!(
            text.matches("\nFrom ").count() + 1,
            1,
            "{user} gets one copy:\n{text}"
        );
        assert!(
            text.starts_with("From carol@example.org Tue Nov 24 06:00:00 2026\n"),
            "{text}"
        );
        assert!(text.contains("\n>From the body.\n"), "{text}");
    }
    assert_eq!(
        outcome(&message, "nobody"),
        &Outcome::Failed {
            status: "5.1.1".into(),
            diagnostic: "no such user here: nobody".into()
        }
    );
    let [bounce] = &attempted.bounces[..] else {
        panic!("{} notifications", attempted.bounces.len());
    };
    assert_eq!(bounce.envelope.recipients, ["carol@example.org"]);
    assert_eq!(bounce.envelope.sender, "");
    let scan = deliverer.spool.scan(false).unwrap();
    assert_eq!(
        scan.messages
            .iter()
            .map(|m| &m.envelope.id)
            .collect::<Vec<_>>(),
        [&bounce.envelope.id],
        "the message is finished; its notification waits"
    );
}

#[test]
fn a_notification_quotes_the_header_section_the_summary_measures() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let mut message = queue_text(
        &deliverer,
        &["nobody@localhost"],
        b"Subject: quoted\r\nX-Last: field\r\n\r\nX-Body: not a field\r\n",
    );
    assert_eq!(message.envelope.headers.map(|h| h.len), Some(32));
    let attempted = deliverer.attempt(&mut message, arrival()).unwrap();
    let [bounce] = &attempted.bounces[..] else {
        panic!("{} notifications", attempted.bounces.len());
    };
    let mut text = String::new();
    let mut body = deliverer.spool.read_body(bounce).unwrap();
    body.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("Subject: quoted\r\nX-Last: field\r\n"),
        "{text}"
    );
    assert!(!text.contains("X-Body"), "{text}");
}

#[test]
fn the_plan_reads_the_header_section_only_when_the_summary_is_not_enough() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let section = |plan: Plan| match plan.headers {
        HeaderSection::Read(section) => Some(String::from_utf8_lossy(&section).into_owned()),
        HeaderSection::Summarized(_) => None,
    };
    let plain = queue(&deliverer, &["alice@localhost"]);
    assert_eq!(section(deliverer.plan(&plain).unwrap()), None);
    let hops = "Received: from a by b; Tue, 24 Nov 2026 06:00:00 +0000\r\n".repeat(101);
    let looping = queue_text(
        &deliverer,
        &["alice@localhost"],
        format!("{hops}Subject: hops\r\n\r\nbody\r\n").as_bytes(),
    );
    let plan = deliverer.plan(&looping).unwrap();
    assert_eq!(
        plan.headers.find_loop("alice"),
        Some(Loop::TooManyHops(101))
    );
    assert_eq!(section(plan), None);
    let forwarded = queue_text(
        &deliverer,
        &["alice@localhost"],
        b"Delivered-To: alice\r\nSubject: again\r\n\r\nbody\r\n",
    );
    let plan = deliverer.plan(&forwarded).unwrap();
    assert_eq!(
        plan.headers.find_loop("alice"),
        Some(Loop::AlreadyDelivered)
    );
    assert_eq!(
        section(plan).as_deref(),
        Some("Delivered-To: alice\r\nSubject: again\r\n")
    );
    let older = Queued {
        envelope: Envelope {
            headers: None,
            ..plain.envelope.clone()
        },
        ..plain
    };
    assert_eq!(
        section(deliverer.plan(&older).unwrap()).as_deref(),
        Some("Subject: hi\r\nMessage-ID: <hi@client.test>\r\n")
    );
}

#[test]
fn temporary_failures_wait_on_the_backoff_schedule_and_done_targets_are_not_tried_again() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let lock = deliverer.config.mailbox_dir.join("alice.lock");
    fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let mut message = queue(
        &deliverer,
        &["alice@mx.test", "bob@mx.test", "dave@remote.test"],
    );

    let first = deliverer.attempt(&mut message, arrival()).unwrap();
    assert_eq!(
        first.next_try,
        Some(arrival() + chrono::Duration::minutes(5))
    );
    assert!(first.bounces.is_empty());
    assert!(
        matches!(outcome(&message, "alice"), Outcome::Deferred { status, .. } if status == "4.2.0")
    );
    assert!(
        matches!(outcome(&message, "dave@remote.test"), Outcome::Deferred { status, .. } if status == "4.4.1")
    );
    assert_eq!(outcome(&message, "bob"), &Outcome::Delivered);

    let later = arrival() + chrono::Duration::minutes(5);
    let second = deliverer.attempt(&mut message, later).unwrap();
    assert_eq!(
        second.next_try,
        Some(later + chrono::Duration::minutes(10)),
        "the wait doubles"
    );

    fs::remove_file(&lock).unwrap();
    let third = deliverer.attempt(&mut message, later).unwrap();
    assert_eq!(outcome(&message, "alice"), &Outcome::Delivered);
    assert!(third.next_try.is_some(), "dave@remote.test still waits");
    assert_eq!(
        mailbox(&deliverer, "bob").matches("Subject: hi").count(),
        1,
        "bob got one copy"
    );
    assert_eq!(
        mailbox(&deliverer, "alice").matches("Subject: hi").count(),
        1
    );
}

#[test]
fn after_the_queue_lifetime_a_temporary_failure_bounces_with_the_last_error() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let mut message = queue(&deliverer, &["dave@remote.test"]);
    let expired = arrival() + chrono::Duration::days(5);
    let attempted = deliverer.attempt(&mut message, expired).unwrap();
    assert_eq!(attempted.next_try, None);
    assert_eq!(attempted.bounces.len(), 1);
    match outcome(&message, "dave@remote.test") {
        Outcome::Failed { status, diagnostic } => {
            assert_eq!(status, "4.4.7");
            assert!(
                diagnostic.ends_with("(gave up: queued longer than 5d)"),
                "{diagnostic}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Found by the soak test: a relayed copy the journal could not record (the spool's disk was full) was relayed
/// again at every retry. What an attempt did stays in the message's state, so the retry only records it.
#[test]
fn a_delivery_the_journal_cannot_record_is_not_made_again_by_the_retry() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let mut message = queue(&deliverer, &["dave@remote.test"]);
    let plan = deliverer.plan(&message).unwrap();
    // The journal cannot be opened: as on a full disk, nothing can be recorded.
    let journal = deliverer.config.spool_dir.join("journal");
    let _ = fs::remove_file(&journal);
    fs::create_dir(&journal).unwrap();
    // The other server took the message (relay_all gives Done once it has said 250).
    let deliveries = plan
        .routes
        .into_iter()
        .map(|route| (route, Delivery::Done))
        .collect();
    let recorded = deliverer.conclude(&mut message, deliveries, &plan.headers, arrival());
    assert!(recorded.is_err(), "the journal is unwritable");
    assert_eq!(outcome(&message, "dave@remote.test"), &Outcome::Delivered);
    assert!(
        deliverer.plan(&message).unwrap().routes.is_empty(),
        "the retry has nothing to deliver"
    );

    fs::remove_dir(&journal).unwrap();
    let retry = deliverer.attempt(&mut message, arrival()).unwrap();
    assert_eq!(retry.next_try, None, "the retry finishes the message");
    assert!(deliverer.spool.scan(false).unwrap().messages.is_empty());
}

/// A worker concludes several attempts with one journal write: each gets its own result, and when that write
/// fails, every one of them keeps what it did for the retry.
#[test]
fn attempts_concluded_together_get_each_its_result_or_all_the_failed_write() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let conclusion = |recipients: &[&str], delivery: Delivery| {
        let message = queue(&deliverer, recipients);
        let plan = deliverer.plan(&message).unwrap();
        let deliveries = plan
            .routes
            .into_iter()
            .map(|route| (route, delivery.clone()))
            .collect();
        Conclusion {
            message,
            headers: plan.headers,
            deliveries,
        }
    };
    let deferred = Delivery::temporary(Detail::NoAnswer, "no answer");
    let journal = deliverer.config.spool_dir.join("journal");
    let _ = fs::remove_file(&journal);
    fs::create_dir(&journal).unwrap();
    let mut failing = [
        conclusion(&["dave@remote.test"], Delivery::Done),
        conclusion(&["erin@remote.test"], deferred.clone()),
    ];
    let attempted = deliverer.conclude_all(&mut failing, arrival());
    assert!(
        attempted.iter().all(Result::is_err),
        "the journal is unwritable"
    );
    assert_eq!(
        outcome(&failing[0].message, "dave@remote.test"),
        &Outcome::Delivered
    );
    fs::remove_dir(&journal).unwrap();

    let mut together = [
        conclusion(&["dave@remote.test"], Delivery::Done),
        conclusion(&["erin@remote.test"], deferred),
    ];
    let attempted = deliverer.conclude_all(&mut together, arrival());
    let [Ok(done), Ok(waiting)] = &attempted[..] else {
        panic!("not two results")
    };
    assert_eq!(done.next_try, None);
    assert!(waiting.next_try.is_some());
    let journal = fs::read_to_string(&journal).unwrap();
    for c in &together {
        assert!(
            journal.contains(c.message.envelope.id.as_str()),
            "{journal}"
        );
    }
    let left = deliverer.spool.scan(false).unwrap().messages;
    let ids: Vec<_> = left.iter().map(|m| m.envelope.id.clone()).collect();
    assert!(
        ids.contains(&together[1].message.envelope.id),
        "erin's waits"
    );
    assert!(
        !ids.contains(&together[0].message.envelope.id),
        "dave's is finished"
    );
}

/// Found by the soak test: an attempt that delivered to one recipient and failed another, on a full disk, could
/// not queue the notification; the retry started from the state before the attempt and appended a second copy.
#[test]
fn an_attempt_whose_notification_cannot_be_queued_keeps_its_deliveries() {
    let dir = TempDir::new("attempt");
    let deliverer = deliverer(&dir, "");
    let mut message = queue(&deliverer, &["alice@mx.test", "nobody@mx.test"]);
    let plan = deliverer.plan(&message).unwrap();
    let deliveries = deliverer.deliver_routes(&message, plan.routes, &plan.headers);
    // No queue file can be made, as on a full disk: the notification for nobody cannot be queued.
    let tmp = deliverer.config.spool_dir.join("tmp");
    fs::remove_dir_all(&tmp).unwrap();
    fs::write(&tmp, "").unwrap();
    let concluded = deliverer.conclude(&mut message, deliveries, &plan.headers, arrival());
    assert!(concluded.is_err(), "the notification could not be queued");
    assert_eq!(outcome(&message, "alice"), &Outcome::Delivered);
    let left: Vec<_> = deliverer
        .plan(&message)
        .unwrap()
        .routes
        .into_iter()
        .map(|route| route.key)
        .collect();
    assert_eq!(left, ["nobody"], "the retry only notifies");

    fs::remove_file(&tmp).unwrap();
    fs::create_dir(&tmp).unwrap();
    let retry = deliverer.attempt(&mut message, arrival()).unwrap();
    assert_eq!((retry.next_try, retry.bounces.len()), (None, 1));
    assert_eq!(
        mailbox(&deliverer, "alice").matches("Subject: hi").count(),
        1
    );
}
