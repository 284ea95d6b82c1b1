//! `Handler::on_idle`: a worker that goes quiet after traffic (a whole 100 ms tick without a
//! completion) tells its handler once per quiet spell, on its own thread, and not while it stays
//! quiet; traffic starts a new spell. The `ringws` binary collects the allocator there
//! (benches/idle_memory.sh shows the effect; docs/benchmarks.md).

mod common;

use common::{Frame, InProcess, RawClient, eventually};
use ringws::{Context, Handler, Message, Socket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Echoes, and counts the quiet spells it is told of.
struct Quiet {
    idles: Arc<AtomicUsize>,
}

impl Handler for Quiet {
    type State = ();

    fn on_message(&mut self, ws: &mut Socket<'_, ()>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }

    fn on_idle(&mut self, _ctx: &mut Context<'_, ()>) {
        self.idles.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_quiet_spell_after_traffic_is_reported_once() {
    let idles = Arc::new(AtomicUsize::new(0));
    let server = InProcess::builder(1).build().expect("build");
    let server = {
        let idles = Arc::clone(&idles);
        InProcess::run(server, move |_| Quiet {
            idles: Arc::clone(&idles),
        })
    };
    let enters = || server.handle.stats().workers[0].io_uring_enters;
    let mut c = RawClient::connect(server.addr);
    let reported = |n: usize| {
        eventually(Duration::from_secs(10), || {
            idles.load(Ordering::SeqCst) == n
        })
    };
    // One echo, then the quiet spell it ends in is reported: `n` reports in all.
    let mut stir = |n: usize| {
        c.send(&Frame::text(b"stir".to_vec()));
        c.expect_text(b"stir");
        assert!(reported(n), "no on_idle after traffic number {n} stopped");
    };
    stir(1);
    // Quiet on: at least five more ticks (each one a wake-up of the idle worker) bring no second
    // report.
    let at = enters();
    assert!(
        eventually(Duration::from_secs(10), || enters() >= at + 5),
        "the idle worker stopped ticking"
    );
    assert_eq!(
        idles.load(Ordering::SeqCst),
        1,
        "reported again while quiet"
    );
    // Traffic again, then a second spell.
    stir(2);
}
