//! The console's reads, on both engines (`M2POOL_TEST_STORE=mariadb`):
//! lists newest first with filters and pages, searches by queue_id,
//! order_id, address and transaction hash, waiting payouts per wallet,
//! refusals and dead letters.

use super::*;

#[tokio::test]
async fn the_console_finds_payouts_deposits_and_requests_by_index() {
    let (_d, s) = store().await;
    let mut tx = s.begin().await.expect("begin");
    let a = tx.insert_payout(&new_payout("a")).await.expect("insert");
    let mut pay = new_payout("batch");
    pay.kind = crate::msg::Kind::Pay;
    pay.order_id = "order-8812".into();
    pay.to = Address::repeat_byte(0x33);
    let b = tx.insert_payout(&pay).await.expect("insert");
    let c = tx.insert_payout(&new_payout("c")).await.expect("insert");
    let signed = signed_tx(b, 0x77);
    tx.mark_signed_many(Address::repeat_byte(1), &[(0, &signed)])
        .await
        .expect("signed");
    tx.move_payout(c, PayoutState::Queued, PayoutState::Refused, Some("no"))
        .await
        .expect("refuse");
    tx.deposit_seen(&dep(100, 1)).await.expect("seen");
    tx.record_requests(&[
        row("topup", &[1; 32]),
        InboxRow {
            outcome: Outcome::BadSignature,
            error: Some("signature does not verify"),
            ..row("withdraw", &[2; 32])
        },
    ])
    .await
    .expect("record");
    tx.push_dead_letter("pay", b"{\"queue_id\":\"x\"}", "no queue")
        .await
        .expect("dead letter");
    tx.commit().await.expect("commit");

    // Newest first; a filter; a page of one goes on from its row.
    let all = s
        .console_payouts(&PayoutFilter::default(), None, 10)
        .await
        .expect("list");
    let ids: Vec<i64> = all.rows.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![c, b, a]);
    assert_eq!(all.next, None, "everything seen");
    let refused = PayoutFilter {
        state: Some("refused".into()),
        ..PayoutFilter::default()
    };
    let r = s.console_payouts(&refused, None, 10).await.expect("list");
    assert_eq!(r.rows.iter().map(|p| p.id).collect::<Vec<_>>(), vec![c]);
    let one = s
        .console_payouts(&PayoutFilter::default(), None, 1)
        .await
        .expect("page");
    assert_eq!(one.next, Some(c));
    let second = s
        .console_payouts(&PayoutFilter::default(), one.next, 1)
        .await
        .expect("page");
    assert_eq!(second.rows[0].id, b);
    let paid_by = PayoutFilter {
        wallet: Some(Address::repeat_byte(1)),
        ..PayoutFilter::default()
    };
    assert_eq!(
        s.console_payouts(&paid_by, None, 10)
            .await
            .expect("list")
            .rows
            .len(),
        3
    );

    // Searches.
    let nets = ["ETH".to_owned()];
    let find = |text: &'static str| {
        let s = s.clone();
        let nets = nets.clone();
        async move {
            s.find_payouts(&nets, text, 10)
                .await
                .expect("find")
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(find("a").await, vec![a], "by queue_id");
    assert_eq!(find("order-8812").await, vec![b], "by order_id");
    assert_eq!(
        find("0x7777777777777777777777777777777777777777777777777777777777777777").await,
        vec![b],
        "by a transaction signed for it"
    );
    assert_eq!(
        find("0x3333333333333333333333333333333333333333").await,
        vec![b],
        "by recipient"
    );
    assert!(find("nothing").await.is_empty());
    let txs = s.payout_tx_views(b).await.expect("txs");
    assert_eq!((txs.len(), txs[0].max_fee.as_str()), (1, "2"));
    assert_eq!(
        s.waiting_per_wallet("ETH").await.expect("waiting"),
        vec![(Address::repeat_byte(1), 2)],
        "a (queued) and b (signed); c is final"
    );

    // Deposits.
    let d = s
        .console_deposits(&DepositFilter::default(), None, 10)
        .await
        .expect("deposits");
    assert_eq!(d.rows.len(), 1);
    let confirmed = DepositFilter {
        state: Some(crate::store::DEPOSIT_CONFIRMED),
        ..DepositFilter::default()
    };
    assert!(
        s.console_deposits(&confirmed, None, 10)
            .await
            .expect("list")
            .rows
            .is_empty()
    );
    let by_address = s
        .find_deposits(&nets, "0x0101010101010101010101010101010101010101", 10)
        .await
        .expect("find");
    assert_eq!(by_address.len(), 1);
    let by_tx = s
        .find_deposits(&nets, &B256::repeat_byte(0xaa).to_string(), 10)
        .await
        .expect("find");
    assert_eq!(by_tx[0].amount, U256::from(100_500_000u64));

    // Requests and dead letters.
    let bad = s
        .console_requests(None, Some("bad_signature"), None, 10)
        .await
        .expect("requests");
    assert_eq!(bad.rows.len(), 1);
    assert_eq!(
        bad.rows[0].error.as_deref(),
        Some("signature does not verify")
    );
    assert_eq!(
        s.console_requests(Some("topup"), None, None, 10)
            .await
            .expect("requests")
            .rows
            .len(),
        1
    );
    let dead = s.console_dead_letters(None, 10).await.expect("dead");
    assert_eq!(dead.rows.len(), 1);
    assert_eq!(
        (dead.rows[0].kind.as_str(), dead.rows[0].reason.as_deref()),
        ("pay", Some("no queue"))
    );
    assert_eq!(s.ledger_backlog().await.expect("ledger"), 0);
}
