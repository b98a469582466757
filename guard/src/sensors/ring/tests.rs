use super::*;

#[test]
fn a_batch_gives_back_its_records_in_order() {
    let mut b = Batch::default();
    assert_eq!(b.records().count(), 0);
    for r in [&b"first"[..], b"", b"third record"] {
        b.push(r);
    }
    assert_eq!(b.len(), 3);
    assert_eq!(b.records().collect::<Vec<_>>(), vec![&b"first"[..], b"", b"third record"]);
    // Too short for a header: an error naming its length, not a panic.
    assert!(matches!(b.events().nth(1), Some(Err((_, 0)))));
}

#[test]
fn spares_hand_back_emptied_buffers_and_keep_few_small_ones() {
    let s = Spares::default();
    let mut b = Batch::default();
    b.bytes.reserve(4096);
    b.push(b"record");
    let ptr = b.bytes.as_ptr();
    s.give(b);
    let again = s.take();
    assert!(again.is_empty() && again.bytes.is_empty(), "a spare comes back empty");
    assert_eq!(again.bytes.as_ptr(), ptr, "the same allocation is reused");
    assert!(again.bytes.capacity() >= 4096);

    // A burst's buffer is freed rather than kept.
    let mut big = Batch::default();
    big.bytes.reserve(MAX_SPARE_BYTES + 1);
    s.give(big);
    assert_eq!(s.take().heap_bytes(), 0);

    // At most MAX_SPARES are kept.
    for _ in 0..MAX_SPARES + 3 {
        let mut b = Batch::default();
        b.bytes.reserve(8);
        s.give(b);
    }
    let kept = std::iter::from_fn(|| Some(s.take())).take_while(|b| b.heap_bytes() > 0).count();
    assert_eq!(kept, MAX_SPARES);
}
