//! Timers of `ringws serve`: `--idle-timeout` closes a connection that sent nothing for that long
//! with Close 1001 (the engine's documented behaviour, `engine/src/config.rs`), and any traffic from
//! the client, a ping included, keeps it open. That a timer never fires before its value is proven
//! on a virtual clock in the engine's connection machine (`engine/src/conn/machine.rs`, `slot.rs`);
//! here the wall clock only bounds how late it may be.

mod common;

use common::{Frame, RawClient, Server};
use std::time::{Duration, Instant};

#[test]
fn idle_connection_gets_1001_and_traffic_keeps_it_open() {
    let server = Server::start(&["--idle-timeout", "1"]);

    let mut idle = RawClient::connect(server.addr);
    let mut busy = RawClient::connect(server.addr);

    // A busy connection: a ping every 250 ms for 2.5 s, well past the 1 s timeout, each answered.
    for i in 0..10 {
        busy.send(&Frame::ping(format!("keepalive {i}")));
        busy.expect_pong(format!("keepalive {i}").as_bytes());
        // Paces the traffic: a ping every 250 ms, each within the 1 s idle timeout.
        std::thread::sleep(Duration::from_millis(250));
    }

    // The idle one was closed meanwhile: its Close is waiting.
    idle.expect_close(Some(1001));

    // Once the busy connection goes quiet, it is closed too, within the timeout and a tick or two.
    let quiet = Instant::now();
    busy.expect_close(Some(1001));
    let waited = quiet.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "idle close after {waited:?}, want about 1 s"
    );
}
