//! The Redis side of a bridge (Redis pub/sub, not Streams), with the redis-rs client.
//!
//! Two connections per node: one in subscribe mode (`SUBSCRIBE`/`UNSUBSCRIBE`, or `PSUBSCRIBE
//! PREFIX.*` with `--bridge-all`) and a multiplexed one for `PUBLISH`. A `PING` on the first every
//! `--bridge-ping`, and every other command (`PUBLISH`, `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`),
//! must be answered within that time. When one is not, the node
//! logs it once, drops its local publications (counted) while it reconnects with
//! [`backoff`], and then subscribes again to what its clients want at that moment.
//!
//! Redis has no `no_echo`: a subscriber gets every message on its channels, its own publications
//! included. So what a node (or `ringws ticker`) publishes carries an envelope: the bytes
//! `FF 'R' 'W'`, `'t'` (text) or `'b'` (binary), and the publisher's 8-byte origin id (12 bytes);
//! with `'T'` or `'B'` instead, the publication's position follows, its epoch and seq as 8 bytes
//! each, little-endian (28 bytes), and a node publishes it at that position
//! ([`Bridge::publish_at`]). A node drops messages carrying its own id. `FF` never starts UTF-8
//! text, so a message without the envelope (published by anything else, e.g. `redis-cli PUBLISH
//! ringws.BTC-USD '{...}'`) is taken as it is: text when it is UTF-8 ([`super::message`]), numbered
//! by the node.

use super::{BridgeOptions, Node, backoff, message, subject, topic_of, unbridgeable};
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use ringws::{Bridge, BridgeEvent, Message, Position};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// The envelope's first bytes.
const MAGIC: [u8; 3] = [0xff, b'R', b'W'];
/// The envelope's length without a position.
pub const ENVELOPE: usize = 12;
/// The envelope's length with a position.
pub const ENVELOPE_AT: usize = 28;

/// A random origin id for this process's publications.
pub fn origin() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Appends the envelope (with `position`, if any) and `payload` to `out`.
pub fn wrap(
    out: &mut Vec<u8>,
    origin: u64,
    payload: &[u8],
    binary: bool,
    position: Option<Position>,
) {
    out.extend_from_slice(&MAGIC);
    out.push(match (binary, position.is_some()) {
        (false, false) => b't',
        (true, false) => b'b',
        (false, true) => b'T',
        (true, true) => b'B',
    });
    out.extend_from_slice(&origin.to_le_bytes());
    if let Some(p) = position {
        out.extend_from_slice(&p.epoch.to_le_bytes());
        out.extend_from_slice(&p.seq.to_le_bytes());
    }
    out.extend_from_slice(payload);
}

/// The message inside a payload from Redis and its position if it carries one, or `None` if it
/// is `own`'s (an echo).
pub fn unwrap(payload: &[u8], own: u64) -> Option<(Message<'_>, Option<Position>)> {
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    match payload {
        [0xff, b'R', b'W', kind @ (b't' | b'b'), rest @ ..] if rest.len() >= 8 => {
            let (id, body) = rest.split_at(8);
            (u64_at(id, 0) != own).then(|| (message(body, *kind == b'b'), None))
        }
        [0xff, b'R', b'W', kind @ (b'T' | b'B'), rest @ ..] if rest.len() >= 24 => {
            let (head, body) = rest.split_at(24);
            let at = Position {
                epoch: u64_at(head, 8),
                seq: u64_at(head, 16),
            };
            (u64_at(head, 0) != own).then(|| (message(body, *kind == b'B'), Some(at)))
        }
        other => Some((message(other, false), None)),
    }
}

/// Opens the subscribing and the publishing connection.
async fn open(
    client: &redis::Client,
) -> redis::RedisResult<(PubSubSink, redis::aio::PubSubStream, MultiplexedConnection)> {
    let pubsub = client.get_async_pubsub().await?;
    let conn = client.get_multiplexed_async_connection().await?;
    let (sink, stream) = pubsub.split();
    Ok((sink, stream, conn))
}

/// `PUBLISH channel payload`, answered within `within` (else the connection is taken as lost).
pub async fn publish(
    conn: &mut MultiplexedConnection,
    channel: &str,
    payload: &[u8],
    within: Duration,
) -> Result<(), String> {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(channel).arg(payload);
    answered(within, "PUBLISH", cmd.query_async::<i64>(conn))
        .await
        .map(drop)
}

/// The broker's answer to `what`, waited for at most `within`. A network that drops packets ends
/// no connection, so every command must time out on its own: one left waiting (an `UNSUBSCRIBE`
/// sent just as the link went quiet) would hold the bridge, and with it the `PING` that notices the
/// loss, forever.
async fn answered<T>(
    within: Duration,
    what: &str,
    reply: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(within, reply).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to {what} within {within:?}")),
    }
}

/// Connects, retrying with backoff until it succeeds or the bridge stops (`None`). While the link
/// is down, the node's publications are taken from the engine's queue and dropped (counted).
async fn connect(
    client: &redis::Client,
    n: &mut Node,
    bridge: &Bridge,
) -> Option<(PubSubSink, redis::aio::PubSubStream, MultiplexedConnection)> {
    let mut attempt = 0;
    let mut events = Vec::new();
    loop {
        match open(client).await {
            Ok(c) => return Some(c),
            Err(e) => n.link.unreachable_at_start(&e),
        }
        attempt += 1;
        let wait = backoff(attempt, n.opts.max_backoff);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = n.wake.notified() => {
                    bridge.poll(&mut events);
                    let dropped = events.drain(..).filter(|e| matches!(e, BridgeEvent::Publish(_))).count() as u64;
                    if dropped > 0 {
                        n.link.drop_publications(dropped);
                        bridge.count_dropped(dropped);
                    }
                }
                _ = n.stopped.changed() => return None,
            }
        }
    }
}

/// Runs a node's bridge until it is stopped.
pub(crate) async fn node(mut n: Node) {
    let client = match redis::Client::open(n.opts.url.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("bridge to {}: {e}", n.opts.url.url);
            return;
        }
    };
    let own = origin();
    let bridge = Arc::clone(&n.bridge);
    let mut skipped = HashSet::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    // The topics subscribed on the broker (kept across connections, to tell which ones the node
    // no longer wants after an outage).
    let mut subscribed: HashSet<Arc<str>> = HashSet::new();
    // Connections in a row whose subscriptions failed.
    let mut refused = 0;
    'connection: loop {
        let Some((mut sink, stream, mut conn)) = connect(&client, &mut n, &bridge).await else {
            return;
        };
        // Topics the clients left during the outage: their last publication went stale.
        let wanted: HashSet<Arc<str>> = bridge.wanted().into_iter().collect();
        for gone in subscribed.difference(&wanted) {
            bridge.forget_last(gone);
        }
        subscribed.clear();
        let ok = if n.opts.all {
            let pattern = format!("{}.*", n.opts.prefix);
            answered(n.opts.ping, "PSUBSCRIBE", sink.psubscribe(pattern)).await
        } else {
            resubscribe(&mut sink, &bridge, &n.opts, &mut subscribed, &mut skipped).await
        };
        if let Err(e) = ok {
            // Connected, but the subscriptions were refused or the connection died at once: wait
            // before the next attempt, as for a failed connect (the server may refuse for good,
            // e.g. an ACL, and must not be hammered).
            n.link.unreachable_at_start(&e);
            tracing::debug!("bridge to {}: subscribing failed: {e}", n.opts.url.url);
            refused += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff(refused, n.opts.max_backoff)) => continue,
                _ = n.stopped.changed() => return,
            }
        }
        refused = 0;
        n.link.up();
        let mut reader = spawn_reader(stream, &bridge, &n.opts.prefix, own);
        let mut keepalive = tokio::time::interval(n.opts.ping);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            tokio::select! {
                () = n.wake.notified() => {}
                _ = n.stopped.changed() => {
                    reader.abort();
                    break 'connection;
                }
                // The reader ends when the subscribing connection does.
                _ = &mut reader => break "connection lost".to_owned(),
                _ = keepalive.tick() => {
                    // A network that drops packets ends no connection: ask for an answer.
                    let ping = sink.ping::<redis::Value>();
                    match answered(n.opts.ping, "PING", ping).await {
                        Ok(_) => continue,
                        Err(e) => {
                            reader.abort();
                            break e;
                        }
                    }
                }
            }
            bridge.poll(&mut events);
            let mut dropped = 0;
            let mut failed = None;
            for event in events.drain(..) {
                match event {
                    BridgeEvent::Interest { topic, wanted } if !n.opts.all && failed.is_none() => {
                        let Some(channel) = subject(&n.opts.prefix, &topic) else {
                            unbridgeable(&topic, &mut skipped);
                            continue;
                        };
                        let within = n.opts.ping;
                        let r = if wanted && subscribed.insert(Arc::clone(&topic)) {
                            answered(within, "SUBSCRIBE", sink.subscribe(channel)).await
                        } else if !wanted && subscribed.remove(&topic) {
                            // What the node last received goes stale from now on.
                            bridge.forget_last(&topic);
                            answered(within, "UNSUBSCRIBE", sink.unsubscribe(channel)).await
                        } else {
                            Ok(())
                        };
                        if let Err(e) = r {
                            failed = Some(e);
                        }
                    }
                    BridgeEvent::Interest { .. } => {}
                    BridgeEvent::Publish(o) => {
                        let Some(channel) = subject(&n.opts.prefix, o.topic()) else {
                            unbridgeable(o.topic(), &mut skipped);
                            continue;
                        };
                        if failed.is_some() {
                            dropped += 1;
                            continue;
                        }
                        out.clear();
                        wrap(
                            &mut out,
                            own,
                            o.payload(),
                            o.is_binary(),
                            Some(o.position()),
                        );
                        if let Err(e) = publish(&mut conn, &channel, &out, n.opts.ping).await {
                            dropped += 1;
                            failed = Some(e);
                        }
                    }
                }
            }
            if dropped > 0 {
                n.link.drop_publications(dropped);
                bridge.count_dropped(dropped);
            }
            if let Some(why) = failed {
                reader.abort();
                break why;
            }
        };
        n.link.down(&lost);
    }
}

/// Subscribes to the channel of every topic the node's clients want now.
async fn resubscribe(
    sink: &mut PubSubSink,
    bridge: &Bridge,
    opts: &BridgeOptions,
    subscribed: &mut HashSet<Arc<str>>,
    skipped: &mut HashSet<Arc<str>>,
) -> Result<(), String> {
    for topic in bridge.wanted() {
        let Some(channel) = subject(&opts.prefix, &topic) else {
            unbridgeable(&topic, skipped);
            continue;
        };
        answered(opts.ping, "SUBSCRIBE", sink.subscribe(channel)).await?;
        subscribed.insert(topic);
    }
    Ok(())
}

/// Reads the subscribing connection and publishes what arrives on the node, in arrival order;
/// ends when the connection does.
fn spawn_reader(
    mut stream: redis::aio::PubSubStream,
    bridge: &Arc<Bridge>,
    prefix: &str,
    own: u64,
) -> tokio::task::JoinHandle<()> {
    let bridge = Arc::clone(bridge);
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let Some(topic) = topic_of(&prefix, m.get_channel_name()) else {
                continue;
            };
            let Some((msg, at)) = unwrap(m.get_payload_bytes(), own) else {
                continue; // our own publication
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_carries_kind_origin_and_position_and_drops_echoes() {
        let mut out = Vec::new();
        wrap(&mut out, 7, b"hi", false, None);
        assert_eq!(out.len(), ENVELOPE + 2);
        assert!(matches!(unwrap(&out, 8), Some((Message::Text("hi"), None))));
        assert!(unwrap(&out, 7).is_none(), "our own");
        out.clear();
        wrap(&mut out, 7, b"hi", true, None);
        assert!(matches!(
            unwrap(&out, 8),
            Some((Message::Binary(b"hi"), None))
        ));
        let at = Position { epoch: 3, seq: 41 };
        for binary in [false, true] {
            out.clear();
            wrap(&mut out, 7, b"hi", binary, Some(at));
            assert_eq!(out.len(), ENVELOPE_AT + 2);
            let (msg, got) = unwrap(&out, 8).unwrap();
            assert_eq!(got, Some(at));
            assert_eq!(matches!(msg, Message::Binary(b"hi")), binary);
            assert!(unwrap(&out, 7).is_none(), "our own");
        }
        // A truncated envelope with a position is not one: taken as it is.
        assert!(matches!(
            unwrap(&out[..20], 8),
            Some((Message::Binary(_), None))
        ));
        // Without the envelope: as it is.
        assert!(matches!(
            unwrap(b"{\"a\":1}", 7),
            Some((Message::Text(_), None))
        ));
        assert!(matches!(
            unwrap(&[0xff, b'R'], 7),
            Some((Message::Binary(_), None))
        ));
    }
}
