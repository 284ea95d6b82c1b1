//! A publisher into a broker without a node: what `ringws ticker --bridge URL` runs.
//!
//! The ticker thread hands each quote to a [`BrokerSink`], which queues it (bounded: `capacity`
//! quotes; beyond it, or while the link is down, a quote is counted and dropped) for a thread that
//! runs the broker's client. Quotes keep the position (`epoch`, `seq`) and `ts` the ticker stamped,
//! and the broker carries the position beside the payload, so every node gives the same quote the
//! same position and a client can resume on any node from where it was on another.

use super::{
    BridgeError, BridgeOptions, Broker, LinkState, LinkThread, backoff, nats, redis, subject,
};
use crate::feed::QuoteSink;
use bytes::Bytes;
use ringws::{Message, Position};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// One quote on its way to the broker.
struct Item {
    index: usize,
    payload: Bytes,
    binary: bool,
    position: Position,
}

/// The ticker's side: queues quotes for the publisher thread without ever blocking.
#[derive(Debug)]
pub struct BrokerSink {
    tx: mpsc::Sender<Item>,
    link: Arc<LinkState>,
}

impl QuoteSink for BrokerSink {
    fn publish(&mut self, index: usize, _symbol: &str, position: Position, msg: Message<'_>) {
        let (payload, binary) = match msg {
            Message::Text(t) => (t.as_bytes(), false),
            Message::Binary(b) => (b, true),
        };
        if !self.link.is_connected() {
            self.link.drop_publications(1);
            return;
        }
        let item = Item {
            index,
            payload: Bytes::copy_from_slice(payload),
            binary,
            position,
        };
        if self.tx.try_send(item).is_err() {
            self.link.drop_publications(1);
        }
    }
}

/// The publisher thread; dropping it stops the thread after it has sent what was queued (for at
/// most a second).
#[derive(Debug)]
pub struct PublisherThread(LinkThread);

impl PublisherThread {
    /// Starts publishing to the subjects of `topics` (by index) and returns the sink to feed.
    pub fn start(
        opts: BridgeOptions,
        topics: &[String],
    ) -> Result<(Self, BrokerSink), BridgeError> {
        opts.check()?;
        let subjects = topics
            .iter()
            .map(|t| subject(&opts.prefix, t).ok_or_else(|| BridgeError::Prefix(t.clone())))
            .collect::<Result<Vec<String>, _>>()?;
        opts.url.check_client()?;
        let link = Arc::new(LinkState::new(format!("ticker to {}", opts.url.url)));
        let (tx, rx) = mpsc::channel(opts.capacity.max(1));
        let l = Arc::clone(&link);
        let thread = LinkThread::spawn(
            "ringws-ticker-link",
            Arc::clone(&link),
            move |stopped| async move {
                match opts.url.broker {
                    Broker::Nats => run_nats(opts, subjects, rx, stopped, l).await,
                    Broker::Redis => run_redis(opts, subjects, rx, stopped, l).await,
                }
            },
        )?;
        let sink = BrokerSink { tx, link };
        Ok((Self(thread), sink))
    }

    /// The link's state (dropped count, connected).
    pub fn link(&self) -> &LinkState {
        self.0.link()
    }
}

async fn run_nats(
    opts: BridgeOptions,
    subjects: Vec<String>,
    mut rx: mpsc::Receiver<Item>,
    mut stopped: watch::Receiver<bool>,
    link: Arc<LinkState>,
) {
    let client = match nats::connect(&opts, &link).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("ticker to {}: cannot start the client: {e}", opts.url.url);
            return;
        }
    };
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = stopped.changed() => None,
        };
        let Some(item) = item else { break };
        let subject = subjects[item.index].clone();
        let sent = nats::publish_bytes(
            &client,
            &link,
            subject,
            item.payload,
            item.binary,
            Some(item.position),
        );
        if !sent.await {
            link.drop_publications(1);
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await;
}

async fn run_redis(
    opts: BridgeOptions,
    subjects: Vec<String>,
    mut rx: mpsc::Receiver<Item>,
    mut stopped: watch::Receiver<bool>,
    link: Arc<LinkState>,
) {
    let client = match ::redis::Client::open(opts.url.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("ticker to {}: {e}", opts.url.url);
            return;
        }
    };
    let own = redis::origin();
    let mut out = Vec::new();
    let mut attempt = 0;
    loop {
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(c) => {
                attempt = 0;
                link.up();
                c
            }
            Err(e) => {
                link.unreachable_at_start(&e);
                attempt += 1;
                // While down the sink drops (it sees the link down); wait out the backoff.
                tokio::select! {
                    () = tokio::time::sleep(backoff(attempt, opts.max_backoff)) => continue,
                    _ = stopped.changed() => return,
                }
            }
        };
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = stopped.changed() => None,
            };
            let Some(item) = item else { return };
            out.clear();
            redis::wrap(
                &mut out,
                own,
                &item.payload,
                item.binary,
                Some(item.position),
            );
            if let Err(e) = redis::publish(&mut conn, &subjects[item.index], &out, opts.ping).await
            {
                link.drop_publications(1);
                link.down(&e);
                break;
            }
        }
    }
}
