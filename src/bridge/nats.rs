//! The NATS side of a bridge, with the official `async-nats` client (core NATS only).
//!
//! The client keeps one connection to the server, reconnects on its own (with
//! [`backoff`] as its delay and no limit on attempts, also when the server is down
//! at start) and replays its subscriptions after a reconnect, so that a restarted server learns the
//! node's interest again. Connections are made with `no_echo`: the server never sends a node its
//! own publications back.
//!
//! Payloads are the messages' bytes unchanged, so any NATS client can publish to or read from a
//! ringws topic. A binary message carries the header `Ringws-Binary: 1`; a message without it is
//! text when it is UTF-8 ([`super::message`]). The publication's position in its topic's stream
//! travels in the header `Ringws-Position: EPOCH:SEQ` (the epoch in hex), and a node publishes it
//! at that position ([`Bridge::publish_at`]); a message without it (e.g. from another NATS client)
//! is numbered by the node.

use super::{BridgeOptions, LinkState, Node, backoff, message, subject, topic_of, unbridgeable};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use ringws::{Bridge, BridgeEvent, Position};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The header that marks a binary message.
pub const BINARY_HEADER: &str = "Ringws-Binary";
/// The header that carries a publication's position (`EPOCH:SEQ`, the epoch in hex).
pub const POSITION_HEADER: &str = "Ringws-Position";

/// How long a publish may wait for room in the client's command queue before it is dropped (the
/// queue fills only while the connection is down or the server is slower than the node).
const PUBLISH_WAIT: Duration = Duration::from_millis(50);

/// Connects (in the background: the server may be down) with the bridge's options, reporting the
/// link's state changes to `link`.
pub async fn connect(opts: &BridgeOptions, link: &Arc<LinkState>) -> Result<Client, String> {
    let events = Arc::clone(link);
    let max = opts.max_backoff;
    ConnectOptions::new()
        .name(&opts.name)
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        // The client takes the link as lost after three unanswered pings.
        .ping_interval(opts.ping)
        .reconnect_delay_callback(move |attempt| backoff(attempt, max))
        .event_callback(move |event| {
            let link = Arc::clone(&events);
            async move {
                match event {
                    Event::Connected => link.up(),
                    Event::Disconnected => link.down(&"connection lost"),
                    Event::ClientError(e) => link.unreachable_at_start(&e),
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "bridge: subscription fell behind, messages dropped")
                    }
                    _ => {}
                }
            }
        })
        .connect(opts.url.url.as_str())
        .await
        .map_err(|e| e.to_string())
}

/// Publishes one message; `false` if it was dropped (link down, or no room in time).
pub async fn publish_bytes(
    client: &Client,
    link: &LinkState,
    subject: String,
    payload: Bytes,
    binary: bool,
    position: Option<Position>,
) -> bool {
    if !link.is_connected() {
        return false;
    }
    let send = async {
        if binary || position.is_some() {
            let mut headers = HeaderMap::new();
            if binary {
                headers.insert(BINARY_HEADER, "1");
            }
            if let Some(p) = position {
                headers.insert(POSITION_HEADER, p.to_string().as_str());
            }
            client.publish_with_headers(subject, headers, payload).await
        } else {
            client.publish(subject, payload).await
        }
    };
    matches!(tokio::time::timeout(PUBLISH_WAIT, send).await, Ok(Ok(())))
}

/// Runs a node's bridge until it is stopped.
pub(crate) async fn node(mut n: Node) {
    let client = match connect(&n.opts, &n.link).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("bridge to {}: cannot start the client: {e}", n.opts.url.url);
            return;
        }
    };
    let bridge = Arc::clone(&n.bridge);
    let mut subs: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
    let mut skipped = HashSet::new();
    if n.opts.all {
        let all = format!("{}.>", n.opts.prefix);
        match client.subscribe(all.clone()).await {
            Ok(sub) => {
                subs.insert(all.into(), spawn_reader(sub, &bridge, &n.opts.prefix));
            }
            Err(e) => tracing::error!("bridge: cannot subscribe to {all}: {e}"),
        }
    }
    let mut events = Vec::new();
    loop {
        tokio::select! {
            () = n.wake.notified() => {}
            _ = n.stopped.changed() => break,
        }
        bridge.poll(&mut events);
        let mut dropped = 0;
        for event in events.drain(..) {
            match event {
                BridgeEvent::Interest { topic, wanted } if !n.opts.all => {
                    if !wanted {
                        if let Some(task) = subs.remove(&topic) {
                            // Dropping the subscriber unsubscribes on the server.
                            task.abort();
                            // What the node last received goes stale from now on.
                            bridge.forget_last(&topic);
                        }
                        continue;
                    }
                    if subs.contains_key(&topic) {
                        continue;
                    }
                    let Some(subject) = subject(&n.opts.prefix, &topic) else {
                        unbridgeable(&topic, &mut skipped);
                        continue;
                    };
                    match client.subscribe(subject).await {
                        Ok(sub) => {
                            subs.insert(topic, spawn_reader(sub, &bridge, &n.opts.prefix));
                        }
                        Err(e) => tracing::error!(%topic, "bridge: cannot subscribe: {e}"),
                    }
                }
                BridgeEvent::Interest { .. } => {}
                BridgeEvent::Publish(out) => {
                    let Some(subject) = subject(&n.opts.prefix, out.topic()) else {
                        unbridgeable(out.topic(), &mut skipped);
                        continue;
                    };
                    // One copy into the client's buffer type (the engine's frame is shared with
                    // the local subscribers).
                    let payload = Bytes::copy_from_slice(out.payload());
                    let (binary, at) = (out.is_binary(), Some(out.position()));
                    if !publish_bytes(&client, &n.link, subject, payload, binary, at).await {
                        dropped += 1;
                    }
                }
            }
        }
        if dropped > 0 {
            n.link.drop_publications(dropped);
            bridge.count_dropped(dropped);
        }
    }
    for (_, task) in subs.drain() {
        task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), client.flush()).await;
}

/// Reads one subscription and publishes what arrives on the node, in arrival order.
fn spawn_reader(mut sub: Subscriber, bridge: &Arc<Bridge>, prefix: &str) -> JoinHandle<()> {
    let bridge = Arc::clone(bridge);
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(topic) = topic_of(&prefix, m.subject.as_str()) else {
                continue;
            };
            let headers = m.headers.as_ref();
            let binary = headers.is_some_and(|h| h.get(BINARY_HEADER).is_some());
            let at = headers
                .and_then(|h| h.get(POSITION_HEADER))
                .and_then(|v| v.as_str().parse::<Position>().ok());
            let msg = message(&m.payload, binary);
            let published = match at {
                Some(at) => bridge.publish_at(topic, msg, at),
                None => bridge.publish(topic, msg),
            };
            if let Err(e) = published {
                tracing::debug!(topic, "bridge: not published here: {e}");
            }
        }
    })
}
