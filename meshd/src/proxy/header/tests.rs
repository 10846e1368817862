use super::*;

#[test]
fn requests_round_trip() {
    for addr in ["10.100.1.2:8080", "[fd00:100:1::2]:554", "[::ffff:10.0.0.1]:1"] {
        let r = Request { destination: addr.parse().unwrap() };
        assert_eq!(Request::decode(&r.encode()), Ok(r), "{addr}");
    }
}

#[test]
fn malformed_requests_are_named() {
    let good = Request { destination: "10.0.0.1:80".parse().unwrap() }.encode();
    let mutate = |i: usize, v: u8| {
        let mut b = good;
        b[i] = v;
        Request::decode(&b)
    };
    assert!(matches!(mutate(0, b'X'), Err(Error::Magic(_))));
    assert_eq!(mutate(4, 2), Err(Error::Version(2)));
    assert_eq!(mutate(5, 5), Err(Error::Family(5)));
    assert_eq!(mutate(9, 1), Err(Error::Reserved));
    assert_eq!(mutate(20, 1), Err(Error::Padding));
    let mut zero_port = good;
    zero_port[6] = 0;
    zero_port[7] = 0;
    assert_eq!(Request::decode(&zero_port), Err(Error::Port));
}

#[test]
fn responses_round_trip_and_limit_the_reason() {
    let r = Response::new(Status::Denied, "policy: spiffe://a denied");
    let enc = r.encode();
    let mut head = [0u8; RESPONSE_HEAD_LEN];
    head.copy_from_slice(&enc[..RESPONSE_HEAD_LEN]);
    let (status, len) = Response::decode_head(&head).unwrap();
    assert_eq!(Response::decode_reason(status, &enc[RESPONSE_HEAD_LEN..RESPONSE_HEAD_LEN + len]).unwrap(), r);
    let long = Response::new(Status::Internal, "é".repeat(400));
    assert!(long.reason.len() <= MAX_REASON && long.reason.is_char_boundary(long.reason.len()));
    let mut bad = head;
    bad[6] = 0xff;
    assert!(matches!(Response::decode_head(&bad), Err(Error::ReasonTooLong(_))));
    bad = head;
    bad[5] = 77;
    assert_eq!(Response::decode_head(&bad), Err(Error::Status(77)));
    assert_eq!(Response::decode_reason(Status::Ok, &[0xff, 0xfe]), Err(Error::ReasonUtf8));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A deterministic sweep standing in for the fuzz target in CI: random and mutated inputs.
    let mut x = 0x1234_5678_9abc_def0u64;
    let seed = Request { destination: "[fd00::1]:9".parse().unwrap() }.encode();
    for i in 0..20_000 {
        let mut data = Vec::with_capacity(64);
        for _ in 0..(i % 64) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        fuzz(&data);
        let mut m = seed.to_vec();
        m[(x as usize) % REQUEST_LEN] ^= (x >> 8) as u8;
        fuzz(&m);
    }
}
