//! Webhook targets and deliveries, on both engines
//! (`M2POOL_TEST_STORE=mariadb`): planned with the stream positions, one
//! at a time per group in order, dead with the rest of their group, and
//! replayed in order.

use super::*;

const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

/// Commits answers for targets `A`, `A`, `B`, `A`, `C` (no URL), then
/// sequences them with a planner that targets by the body's first byte.
async fn planned(s: &Store) {
    let mut tx = s.begin().await.expect("begin");
    tx.set_notify_targets(&[
        (&A, "http://old.example/a"),
        (&B, "https://b.example/hook?k=1"),
    ])
    .await
    .expect("targets");
    // The latest URL given wins.
    tx.set_notify_targets(&[(&A, "https://a.example/hook")])
        .await
        .expect("targets");
    for body in [b"A1", b"A2", b"B1", b"A3", b"C1"] {
        tx.push_outbox("pay_resp", body, None).await.expect("push");
    }
    tx.push_outbox("dead_letter.pay", b"A9", None)
        .await
        .expect("push");
    tx.commit().await.expect("commit");
    let plan = |row: &StreamRow| {
        let target = match row.body.first()? {
            b'A' => A,
            b'B' => B,
            _ => [3; 32],
        };
        row.kind.ends_with("_resp").then_some(Planned {
            target,
            fallback: None,
        })
    };
    assert_eq!(s.sequence_outbox(100, &plan).await.expect("seq").len(), 6);
}

fn bodies(d: &[Delivery]) -> Vec<&[u8]> {
    d.iter().map(|d| d.body.as_slice()).collect()
}

#[tokio::test]
async fn deliveries_go_one_at_a_time_per_group_die_together_and_replay_in_order() {
    let (_scratch, s) = store().await;
    planned(&s).await;
    let now = crate::clock::now_ms();
    // The head of each group with a URL; C has none, the dead letter none.
    let due = s.webhooks_due(now, &[], &[], 10).await.expect("due");
    assert_eq!(bodies(&due), [b"A1".as_slice(), b"B1"]);
    assert_eq!(due[0].url, "https://a.example/hook");
    assert_eq!(
        (due[1].host.as_str(), due[0].seq, due[1].seq),
        ("b.example", 1, 3)
    );
    assert_eq!(s.webhook_counts().await.expect("counts"), (4, 0));
    // In flight and full hosts are left out.
    let due = s
        .webhooks_due(now, &[due[0].id], &["b.example"], 10)
        .await
        .expect("due");
    assert!(due.is_empty(), "{due:?}");

    // A1 delivered: A2 is next. B1 fails and waits; not due before then.
    let first = s.webhooks_due(now, &[], &[], 10).await.expect("due");
    s.record_attempts(&[
        AttemptResult::Delivered { id: first[0].id },
        AttemptResult::Retry {
            id: first[1].id,
            next_at: now + 60_000,
            error: "the receiver answered 500".into(),
        },
    ])
    .await
    .expect("record");
    let due = s.webhooks_due(now, &[], &[], 10).await.expect("due");
    assert_eq!(bodies(&due), [b"A2".as_slice()]);
    let later = s
        .webhooks_due(now + 60_000, &[], &[], 10)
        .await
        .expect("due");
    assert_eq!(bodies(&later), [b"A2".as_slice(), b"B1"]);
    assert_eq!(later[1].attempts, 1);

    // A2 dies: A3 behind it dies with it.
    s.record_attempts(&[AttemptResult::Dead {
        id: due[0].id,
        error: "no answer in time".into(),
    }])
    .await
    .expect("record");
    assert_eq!(s.webhook_counts().await.expect("counts"), (1, 2));
    let dead = s.dead_webhooks(10).await.expect("dead");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].error.as_deref(), Some("no answer in time"));
    assert!(
        dead[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("earlier answer"))
    );

    // Replayed: back in line, in order, fresh.
    assert_eq!(s.replay_webhooks(Some(&[])).await.expect("none"), 0);
    assert_eq!(s.replay_webhooks(None).await.expect("replay"), 2);
    let due = s
        .webhooks_due(crate::clock::now_ms(), &[], &[], 10)
        .await
        .expect("due");
    assert_eq!(bodies(&due), [b"A2".as_slice()]);
    assert_eq!(due[0].attempts, 0);
    assert_eq!(s.webhook_counts().await.expect("counts"), (3, 0));

    // Delivered rows are pruned by age; others stay.
    assert_eq!(
        s.prune_webhooks(crate::clock::now_ms() + 1)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(s.webhook_counts().await.expect("counts"), (3, 0));
}
