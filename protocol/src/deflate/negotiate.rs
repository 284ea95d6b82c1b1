//! Negotiating permessage-deflate (RFC 7692 §5, §7.1).
//!
//! Server side, [`negotiate`] walks the client's offers in order and accepts the first
//! `permessage-deflate` offer that is well formed and that the policy can serve; a malformed offer
//! (an unknown parameter, a duplicate, a bad value) is declined and the next one tried, as §5.1
//! requires. The agreed [`Params`] print as the response's `Sec-WebSocket-Extensions` value.
//!
//! Client side, [`DeflateConfig::offer`] writes the offer and [`Params::from_response`] checks the
//! server's answer: anything the offer did not allow fails the connection (§5.1, §7.1).

use super::DeflateConfig;
use super::codec::{Compressor, Decompressor, MIN_WINDOW_BITS};
use crate::error::Error;
use crate::frame::Role;
use crate::handshake::ExtensionOffer;
use std::fmt;

/// The extension's registered name (RFC 7692 §7).
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// What one direction of a connection agreed on: the sender's largest window and whether it resets
/// its window after each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    /// Base-2 logarithm of the largest LZ77 window the sender may use (8..=15).
    pub window_bits: u8,
    /// The sender starts every message with an empty window.
    pub no_context_takeover: bool,
}

impl Direction {
    /// Whether messages in this direction can be compressed here: zlib cannot compress raw DEFLATE
    /// with an 8-bit window, so such a direction sends every message uncompressed (RFC 7692 §6
    /// allows it). Receiving is always possible.
    pub fn can_compress(&self) -> bool {
        self.window_bits >= MIN_WINDOW_BITS
    }
}

/// The parameters of an accepted permessage-deflate offer (RFC 7692 §7.1), as they appear in the
/// server's response. `Display` writes that response element.
///
/// ```
/// use ringws_protocol::deflate::{negotiate, DeflateConfig};
/// use ringws_protocol::handshake::ExtensionOffer;
/// let offers = ExtensionOffer::list("permessage-deflate; client_max_window_bits; server_max_window_bits=10");
/// let params = negotiate(offers, &DeflateConfig::default()).expect("accepted");
/// assert_eq!(
///     params.to_string(),
///     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The server resets its compression window after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression window after each message.
    pub client_no_context_takeover: bool,
    /// The server's largest window in bits (8..=15), if stated (absent: 15).
    pub server_max_window_bits: Option<u8>,
    /// The client's largest window in bits (8..=15), if stated (absent: 15).
    pub client_max_window_bits: Option<u8>,
}

impl Params {
    /// What the server's messages (to the client) use.
    pub fn server(&self) -> Direction {
        Direction {
            window_bits: self.server_max_window_bits.unwrap_or(15),
            no_context_takeover: self.server_no_context_takeover,
        }
    }

    /// What the client's messages (to the server) use.
    pub fn client(&self) -> Direction {
        Direction {
            window_bits: self.client_max_window_bits.unwrap_or(15),
            no_context_takeover: self.client_no_context_takeover,
        }
    }

    /// The direction we send in, for our `role`.
    pub fn sending(&self, role: Role) -> Direction {
        match role {
            Role::Server => self.server(),
            Role::Client => self.client(),
        }
    }

    /// The direction we receive in, for our `role`.
    pub fn receiving(&self, role: Role) -> Direction {
        match role {
            Role::Server => self.client(),
            Role::Client => self.server(),
        }
    }

    /// A compressor of our own for the sending direction, or `None` if that direction cannot be
    /// compressed (an 8-bit window: send uncompressed). Where the sending direction has no context
    /// takeover, a worker's shared compressor does the same job (see [`Compressor::can_serve`]).
    pub fn compressor(&self, role: Role, config: &DeflateConfig) -> Option<Compressor> {
        let d = self.sending(role);
        d.can_compress()
            .then(|| Compressor::new(d.window_bits, config.level, d.no_context_takeover))
    }

    /// The decompressor for the receiving direction, to give to
    /// [`Receiver::with_deflate`](crate::Receiver::with_deflate).
    pub fn decompressor(&self, role: Role, config: &DeflateConfig) -> Decompressor {
        let d = self.receiving(role);
        Decompressor::new(
            d.window_bits,
            d.no_context_takeover,
            config.max_inflate_ratio,
        )
    }

    /// The same agreement with context takeover off in both directions. A server may always answer
    /// so (§7.1.1.1, §7.1.1.2): it is what [`ContextBudget::admit`](super::ContextBudget::admit)
    /// falls back to when the budget for persistent contexts is spent.
    pub fn without_context_takeover(self) -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..self
        }
    }

    /// Client side: checks the server's `Sec-WebSocket-Extensions` value (from
    /// [`Response::extensions`](crate::handshake::Response::extensions)) against what `config`
    /// offered through [`DeflateConfig::offer`].
    ///
    /// `Ok(None)`: the server declined, messages go uncompressed. Fails the connection
    /// ([`Error::MalformedResponse`]) on more than one `permessage-deflate` element, an unknown or
    /// repeated parameter, a value where none belongs or a bad window size; and
    /// ([`Error::UnofferedSelection`]) on a window larger than the offer allowed, or a missing
    /// `server_no_context_takeover` or `server_max_window_bits` that the offer asked for (§7.1).
    ///
    /// ```
    /// use ringws_protocol::deflate::{DeflateConfig, Params};
    /// let config = DeflateConfig::default();
    /// assert_eq!(
    ///     config.offer(),
    ///     "permessage-deflate; server_no_context_takeover; client_max_window_bits"
    /// );
    /// let answer = "permessage-deflate; server_no_context_takeover; client_max_window_bits=12";
    /// let p = Params::from_response(answer, &config)?.expect("accepted");
    /// assert_eq!((p.client().window_bits, p.server().no_context_takeover), (12, true));
    /// // The offer asked for server_no_context_takeover: an answer without it fails.
    /// assert!(Params::from_response("permessage-deflate", &config).is_err());
    /// # Ok::<(), ringws_protocol::Error>(())
    /// ```
    pub fn from_response(selected: &str, config: &DeflateConfig) -> Result<Option<Self>, Error> {
        let mut found = None;
        for element in ExtensionOffer::list(selected).filter(|e| e.name == EXTENSION_NAME) {
            if found.is_some() {
                return Err(Error::MalformedResponse);
            }
            let p = parse_params(&element).ok_or(Error::MalformedResponse)?;
            let smwb = valued(p.server_max_window_bits)?;
            let cmwb = valued(p.client_max_window_bits)?;
            let asked_server = config.server_window_bits();
            if config.server_no_context_takeover && !p.server_no_context_takeover {
                return Err(Error::UnofferedSelection);
            }
            if asked_server < 15 && smwb.is_none_or(|v| v > asked_server) {
                return Err(Error::UnofferedSelection);
            }
            if cmwb.is_some_and(|v| v > config.client_window_bits()) {
                return Err(Error::UnofferedSelection);
            }
            found = Some(Self {
                server_no_context_takeover: p.server_no_context_takeover,
                // Our own choice counts too: the offer told the server we would not take over.
                client_no_context_takeover: p.client_no_context_takeover
                    || config.client_no_context_takeover,
                server_max_window_bits: smwb,
                client_max_window_bits: cmwb,
            });
        }
        Ok(found)
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXTENSION_NAME)?;
        if self.server_no_context_takeover {
            f.write_str("; server_no_context_takeover")?;
        }
        if self.client_no_context_takeover {
            f.write_str("; client_no_context_takeover")?;
        }
        if let Some(bits) = self.server_max_window_bits {
            write!(f, "; server_max_window_bits={bits}")?;
        }
        if let Some(bits) = self.client_max_window_bits {
            write!(f, "; client_max_window_bits={bits}")?;
        }
        Ok(())
    }
}

impl DeflateConfig {
    /// The largest server window this policy allows, in bits (clamped to 8..=15).
    fn server_window_bits(&self) -> u8 {
        self.server_max_window_bits.clamp(8, 15)
    }

    /// The largest client window this policy allows, in bits (clamped to 8..=15).
    fn client_window_bits(&self) -> u8 {
        self.client_max_window_bits.clamp(8, 15)
    }

    /// Client side: the `Sec-WebSocket-Extensions` offer for this policy (one offer). Windows below
    /// 15 bits are asked for with their value; `client_max_window_bits` is always present, bare at
    /// 15, to let the server ask for a smaller client window (§7.1.2.2).
    ///
    /// ```
    /// use ringws_protocol::deflate::DeflateConfig;
    /// let config = DeflateConfig {
    ///     server_no_context_takeover: true,
    ///     client_no_context_takeover: true,
    ///     server_max_window_bits: 10,
    ///     client_max_window_bits: 12,
    ///     ..DeflateConfig::default()
    /// };
    /// assert_eq!(
    ///     config.offer(),
    ///     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
    ///      server_max_window_bits=10; client_max_window_bits=12"
    /// );
    /// ```
    pub fn offer(&self) -> String {
        let mut offer = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            offer.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            offer.push_str("; client_no_context_takeover");
        }
        if self.server_window_bits() < 15 {
            offer.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits()
            ));
        }
        match self.client_window_bits() {
            15 => offer.push_str("; client_max_window_bits"),
            bits => offer.push_str(&format!("; client_max_window_bits={bits}")),
        }
        offer
    }
}

/// Server side: the agreed parameters for the first acceptable `permessage-deflate` offer among
/// `offers` (in the client's order of preference), or `None` to decline them all.
///
/// An offer is declined (and the next one tried) when it has a parameter RFC 7692 does not define
/// for offers, a repeated parameter, a value on `*_no_context_takeover`, a `server_max_window_bits`
/// without a value, or a window value that is not a plain decimal 8..=15 (§5.1, §7.1). Every other
/// offer is accepted; the answer applies the `config` policy:
/// - `server_no_context_takeover` if the client asked or the policy wants it;
/// - `client_no_context_takeover` if the policy wants it or the client announced it (the hint of
///   §7.1.1.2, stated back so that both ends agree the receiving window can be dropped);
/// - `server_max_window_bits` with the smaller of the client's value and the policy, or the policy
///   alone when it is below 15;
/// - `client_max_window_bits` only if the client offered the parameter (§7.1.2.2): with the smaller
///   of the client's value and the policy, or for a bare parameter the policy when it is below 15.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = ExtensionOffer<'a>>,
    config: &DeflateConfig,
) -> Option<Params> {
    offers
        .into_iter()
        .filter(|offer| offer.name == EXTENSION_NAME)
        .find_map(|offer| accept(&offer, config))
}

/// The answer to one offer, or `None` if it is malformed.
fn accept(offer: &ExtensionOffer<'_>, config: &DeflateConfig) -> Option<Params> {
    let p = parse_params(offer)?;
    let server_policy = config.server_window_bits();
    let client_policy = config.client_window_bits();
    let server_max_window_bits = match p.server_max_window_bits {
        // §7.1.2.1: the parameter has a value in an offer.
        Some(None) => return None,
        Some(Some(asked)) => Some(asked.min(server_policy)),
        None => (server_policy < 15).then_some(server_policy),
    };
    let client_max_window_bits = match p.client_max_window_bits {
        None => None,
        Some(Some(announced)) => Some(announced.min(client_policy)),
        Some(None) => (client_policy < 15).then_some(client_policy),
    };
    Some(Params {
        server_no_context_takeover: p.server_no_context_takeover
            || config.server_no_context_takeover,
        client_no_context_takeover: p.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits,
        client_max_window_bits,
    })
}

/// The parameters of one `permessage-deflate` element, offer or response, checked for the rules
/// common to both: only the four defined names, each at most once, no value on the
/// `*_no_context_takeover` flags, window values plain decimals 8..=15 where present.
#[derive(Debug, Default)]
struct RawParams {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// Present, with its value if it had one.
    server_max_window_bits: Option<Option<u8>>,
    client_max_window_bits: Option<Option<u8>>,
}

fn parse_params(element: &ExtensionOffer<'_>) -> Option<RawParams> {
    let mut p = RawParams::default();
    for (name, value) in element.params() {
        match name {
            "server_no_context_takeover" if !p.server_no_context_takeover && value.is_none() => {
                p.server_no_context_takeover = true;
            }
            "client_no_context_takeover" if !p.client_no_context_takeover && value.is_none() => {
                p.client_no_context_takeover = true;
            }
            "server_max_window_bits" if p.server_max_window_bits.is_none() => {
                p.server_max_window_bits = Some(optional_bits(value)?);
            }
            "client_max_window_bits" if p.client_max_window_bits.is_none() => {
                p.client_max_window_bits = Some(optional_bits(value)?);
            }
            _ => return None,
        }
    }
    Some(p)
}

/// A window parameter's value, which may be absent (`Some(None)`); `None` if it is not valid.
fn optional_bits(value: Option<&str>) -> Option<Option<u8>> {
    match value {
        None => Some(None),
        Some(v) => window_bits(v).map(Some),
    }
}

/// A window parameter of a response, which must carry its value when present (§7.1.2.1, §7.1.2.2).
fn valued(param: Option<Option<u8>>) -> Result<Option<u8>, Error> {
    match param {
        Some(None) => Err(Error::MalformedResponse),
        param => Ok(param.flatten()),
    }
}

/// A window-bits value: a decimal integer 8..=15 without leading zeros (§7.1.2.1, §7.1.2.2).
fn window_bits(value: &str) -> Option<u8> {
    match value {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(header: &str, config: &DeflateConfig) -> Option<String> {
        negotiate(ExtensionOffer::list(header), config).map(|p| p.to_string())
    }

    fn open() -> DeflateConfig {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            ..DeflateConfig::default()
        }
    }

    #[test]
    fn browsers_and_python_offers() {
        // Chromium and Firefox.
        assert_eq!(
            server("permessage-deflate; client_max_window_bits", &open()).as_deref(),
            Some("permessage-deflate")
        );
        // An offer that caps both windows.
        assert_eq!(
            server(
                "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
                &open()
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
        );
        // The default policy keeps no server context between messages.
        assert_eq!(
            server(
                "permessage-deflate; client_max_window_bits",
                &DeflateConfig::default()
            )
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn every_offer_parameter_combination_against_every_policy() {
        let flags = [false, true];
        let server_windows = [None, Some(8u8), Some(10), Some(15)];
        let client_windows = [None, Some(None), Some(Some(9u8)), Some(Some(15))];
        let policies = [(15u8, 15u8), (12, 9), (8, 15)];
        let (mut checked, mut round_trips) = (0, 0);
        for snct in flags {
            for cnct in flags {
                for smwb in server_windows {
                    for cmwb in client_windows {
                        let mut offer = String::from("permessage-deflate");
                        if snct {
                            offer += "; server_no_context_takeover";
                        }
                        if cnct {
                            offer += "; client_no_context_takeover";
                        }
                        if let Some(b) = smwb {
                            offer += &format!("; server_max_window_bits={b}");
                        }
                        match cmwb {
                            Some(Some(b)) => offer += &format!("; client_max_window_bits={b}"),
                            Some(None) => offer += "; client_max_window_bits",
                            None => {}
                        }
                        for (pol_s, pol_c) in policies {
                            for pol_snct in flags {
                                for pol_cnct in flags {
                                    let config = DeflateConfig {
                                        server_no_context_takeover: pol_snct,
                                        client_no_context_takeover: pol_cnct,
                                        server_max_window_bits: pol_s,
                                        client_max_window_bits: pol_c,
                                        ..DeflateConfig::default()
                                    };
                                    let p = negotiate(ExtensionOffer::list(&offer), &config)
                                        .expect("every well-formed offer is accepted");
                                    // Context takeover: off where the client asked or the policy says.
                                    assert_eq!(p.server_no_context_takeover, snct || pol_snct);
                                    assert_eq!(p.client_no_context_takeover, cnct || pol_cnct);
                                    // The server window never exceeds the client's cap or the policy.
                                    let sw = p.server().window_bits;
                                    assert!(sw <= smwb.unwrap_or(15) && sw <= pol_s, "{offer}");
                                    assert_eq!(sw, smwb.unwrap_or(15).min(pol_s));
                                    // A capped offer is always answered with the parameter.
                                    if smwb.is_some() {
                                        assert!(p.server_max_window_bits.is_some());
                                    }
                                    // client_max_window_bits only answers an offer that has it.
                                    match cmwb {
                                        None => assert_eq!(p.client_max_window_bits, None),
                                        Some(v) => {
                                            let cap = v.unwrap_or(15);
                                            assert_eq!(p.client().window_bits, cap.min(pol_c));
                                        }
                                    }
                                    // The client, having offered this, accepts the answer.
                                    let client_cfg = DeflateConfig {
                                        server_no_context_takeover: snct,
                                        client_no_context_takeover: cnct,
                                        server_max_window_bits: smwb.unwrap_or(15),
                                        client_max_window_bits: match cmwb {
                                            Some(Some(b)) => b,
                                            _ => 15,
                                        },
                                        ..DeflateConfig::default()
                                    };
                                    if client_cfg.offer() == offer {
                                        round_trips += 1;
                                        let back =
                                            Params::from_response(&p.to_string(), &client_cfg)
                                                .unwrap()
                                                .unwrap();
                                        assert_eq!(back.server(), p.server());
                                        assert_eq!(back.client(), p.client());
                                    }
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 2 * 4 * 4 * 3 * 2 * 2);
        // Offers `offer()` writes: both flags, 3 server windows, bare or 9-bit client window.
        assert_eq!(round_trips, 2 * 2 * 3 * 2 * 3 * 2 * 2);
    }

    #[test]
    fn malformed_offers_are_declined_and_the_next_offer_is_taken() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=true",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; Server_No_Context_Takeover",
        ] {
            assert_eq!(server(bad, &open()), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=11");
            assert_eq!(
                server(&two, &open()).as_deref(),
                Some("permessage-deflate; server_max_window_bits=11"),
                "{bad}"
            );
        }
        // Quoted values are the same values (RFC 6455 §9.1).
        assert_eq!(
            server("permessage-deflate; server_max_window_bits=\"9\"", &open()).as_deref(),
            Some("permessage-deflate; server_max_window_bits=9")
        );
    }

    #[test]
    fn other_extensions_are_skipped_and_the_first_acceptable_offer_wins() {
        assert_eq!(
            server(
                "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9, \
                 permessage-deflate",
                &open()
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=9")
        );
        assert_eq!(server("x-foo, x-bar; a=1", &open()), None);
        assert_eq!(server("", &open()), None);
    }

    #[test]
    fn directions_follow_the_role() {
        let p = Params {
            server_no_context_takeover: true,
            client_no_context_takeover: false,
            server_max_window_bits: Some(8),
            client_max_window_bits: Some(11),
        };
        assert_eq!(
            p.sending(Role::Server),
            Direction {
                window_bits: 8,
                no_context_takeover: true
            }
        );
        assert_eq!(p.receiving(Role::Client), p.sending(Role::Server));
        assert_eq!(p.sending(Role::Client).window_bits, 11);
        let config = DeflateConfig::default();
        assert!(
            p.compressor(Role::Server, &config).is_none(),
            "8-bit windows send uncompressed"
        );
        let c = p.compressor(Role::Client, &config).unwrap();
        assert_eq!((c.window_bits(), c.no_context_takeover()), (11, false));
        // The server side receives with 11 bits and keeps the window.
        let d = p.decompressor(Role::Server, &config);
        assert!(format!("{d:?}").contains("window_bits: 11"));
        assert!(format!("{d:?}").contains("no_context_takeover: false"));
    }

    #[test]
    fn client_rejects_responses_its_offer_did_not_allow() {
        let config = DeflateConfig {
            server_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let ok = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10";
        assert_eq!(
            Params::from_response(ok, &config)
                .unwrap()
                .map(|p| p.server()),
            Some(Direction {
                window_bits: 10,
                no_context_takeover: true
            })
        );
        assert_eq!(Params::from_response("x-other", &config), Ok(None));
        for (bad, err) in [
            (
                "permessage-deflate; server_max_window_bits=10",
                Error::UnofferedSelection,
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                Error::UnofferedSelection,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
                Error::UnofferedSelection,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
                 client_max_window_bits=13",
                Error::UnofferedSelection,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; \
                 client_max_window_bits",
                Error::MalformedResponse,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits",
                Error::MalformedResponse,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; x=1",
                Error::MalformedResponse,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover; \
                 server_max_window_bits=10",
                Error::MalformedResponse,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10, \
                 permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
                Error::MalformedResponse,
            ),
        ] {
            assert_eq!(Params::from_response(bad, &config), Err(err), "{bad}");
            assert_eq!(err.reply(), crate::Reply::Drop);
        }
        // A server may add either no_context_takeover, and a smaller client window.
        let open_client = DeflateConfig {
            server_no_context_takeover: false,
            ..DeflateConfig::default()
        };
        let p = Params::from_response(
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; \
             client_max_window_bits=9; server_max_window_bits=12",
            &open_client,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (p.client(), p.server()),
            (
                Direction {
                    window_bits: 9,
                    no_context_takeover: true
                },
                Direction {
                    window_bits: 12,
                    no_context_takeover: true
                }
            )
        );
    }
}
