//! The proxy's refusals that need no backend: requests inside a dialog the
//! proxy does not know are answered 481 and never forwarded (no open
//! relay), and CANCEL without its INVITE is 481.

mod common;

use std::time::Duration;

use common::{config, start, DOMAIN};
use dialtone_sip::test_ua::TestUa;

const T: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_unknown_dialogs_are_refused_not_relayed() {
    let (gw, _reg, addr) = start(config()).await;
    let mut ua = TestUa::udp(addr).await.unwrap();
    let local = ua.local_addr();
    // Where a relay would send the request: a socket we watch.
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    for method in ["BYE", "INVITE", "INFO", "ACK"] {
        let req = format!(
            "{method} sip:x@{victim_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={}\r\n\
             Route: <sip:{addr};lr>, <sip:{victim_addr};lr>\r\nMax-Forwards: 70\r\n\
             From: <sip:a@{DOMAIN}>;tag=1\r\nTo: <sip:b@{DOMAIN}>;tag=2\r\nCall-ID: {}\r\n\
             CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
            TestUa::branch(),
            TestUa::branch()
        );
        ua.send_raw(req.as_bytes()).await.unwrap();
        if method == "ACK" {
            assert!(ua.recv(Duration::from_millis(300)).await.unwrap().is_none());
        } else {
            assert_eq!(ua.expect(T).await.unwrap().code, 481, "{method}");
        }
        let mut buf = [0u8; 2048];
        let relayed =
            tokio::time::timeout(Duration::from_millis(200), victim.recv_from(&mut buf)).await;
        assert!(relayed.is_err(), "{method} was relayed");
    }
    gw.shutdown().await;
}
