//! `Server::run` and its thread: a panic on the thread that runs the server (the `ready` callback,
//! or a log subscriber that panics) must not leave the workers serving forever: they are stopped,
//! and the panic reaches the caller.

use ringws_engine::{Handler, Message, Server, Socket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

struct Echo;

impl Handler for Echo {
    type State = ();
    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

#[test]
fn a_panic_in_ready_stops_the_workers_and_reaches_the_caller() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let server = Server::builder()
            .bind("127.0.0.1:0")
            .workers(2)
            .build()
            .expect("server builds");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            server.run_with_ready(|_| Echo, || panic!("ready failed"))
        }));
        let _ = tx.send(outcome.is_err());
    });
    let panicked = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("run returned: the workers stopped after the panic");
    assert!(panicked, "the panic reached the caller");
}
