//! The lease and the fence, on both engines (`M2POOL_TEST_STORE=mariadb`).

use super::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(600);

/// Writes one outbox row under `s`'s fence.
async fn write(s: &Store, body: &[u8]) -> Result<(), StoreError> {
    let mut tx = s.begin().await?;
    tx.push_outbox("topup_resp", body, None).await?;
    tx.commit().await
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_deposed_one_commits_nothing() {
    let (scratch, a) = store().await;
    let b = reopen(&scratch).await;
    let fresh = a.lease().await.expect("lease");
    assert_eq!((fresh.holder.as_str(), fresh.term), ("", 0));

    // A takes it; B cannot while it runs.
    assert_eq!(a.take_lease("a", LONG, false).await.expect("take"), Some(1));
    assert_eq!(b.take_lease("b", LONG, false).await.expect("take"), None);
    let row = b.lease().await.expect("lease");
    assert_eq!((row.holder.as_str(), row.term), ("a", 1));
    assert!(row.expires_in_ms > 590_000, "{row:?}");
    let fence_a = Fence {
        holder: "a".into(),
        term: 1,
    };
    a.fence(fence_a.clone());
    assert_eq!(a.fenced_by(), Some(&fence_a));
    write(&a, b"a-1").await.expect("the holder commits");
    assert!(a.renew_lease(&fence_a, LONG).await.expect("renew"));

    // B takes over (forced, as with the SQLite lock file): A is deposed.
    assert_eq!(b.take_lease("b", LONG, true).await.expect("take"), Some(2));
    b.fence(Fence {
        holder: "b".into(),
        term: 2,
    });
    let refused = write(&a, b"a-2").await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { ref holder, term: 1 }) if holder == "a"),
        "{refused:?}"
    );
    assert!(
        !a.renew_lease(&fence_a, LONG).await.expect("renew"),
        "deposed"
    );
    write(&b, b"b-1").await.expect("the new holder commits");
    let bodies: Vec<Vec<u8>> = b
        .unsent(0, 10)
        .await
        .expect("unsent")
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(
        bodies,
        vec![b"a-1".to_vec(), b"b-1".to_vec()],
        "a-2 was rolled back"
    );

    // A release frees it at once; an old holder's release changes nothing.
    a.release_lease(&fence_a).await.expect("no-op");
    assert_eq!(a.lease().await.expect("lease").holder, "b");
    b.release_lease(&Fence {
        holder: "b".into(),
        term: 2,
    })
    .await
    .expect("release");
    let c = reopen(&scratch).await;
    assert_eq!(c.take_lease("c", LONG, false).await.expect("take"), Some(3));
    let refused = write(&b, b"b-2").await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { term: 2, .. })),
        "{refused:?}"
    );

    // An expired lease is free to take, by the database's clock.
    let d = reopen(&scratch).await;
    assert_eq!(d.take_lease("d", LONG, false).await.expect("take"), None);
    assert!(
        c.renew_lease(
            &Fence {
                holder: "c".into(),
                term: 3
            },
            Duration::ZERO
        )
        .await
        .expect("renew")
    );
    assert_eq!(d.take_lease("d", LONG, false).await.expect("take"), Some(4));
    for s in [a, b, c, d] {
        s.close().await;
    }
}

#[tokio::test]
async fn a_store_without_a_fence_commits_as_before() {
    let (_d, s) = store().await;
    assert_eq!(s.fenced_by(), None);
    write(&s, b"x").await.expect("commits");
    assert_eq!(s.outbox_backlog().await.expect("count"), 1);
}
