//! The origin allowlist (RFC 6454 origins): exact origins, and `scheme://*.domain[:port]` for any
//! subdomain of a domain (same scheme and port; never the apex, never a look-alike domain).

use ringws_protocol::handshake::is_uri_scheme;

/// One rule of the origin allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginRule {
    /// `scheme://host[:port]`, compared whole (ASCII case-insensitively).
    Exact(String),
    /// `scheme://*.domain[:port]`: any subdomain of `domain` (not `domain` itself), same scheme and
    /// port.
    Subdomains {
        scheme: String,
        domain: String,
        port: Option<String>,
    },
}

/// An origin split into its parts (RFC 6454 §6.1 serialization: `scheme "://" host [ ":" port ]`).
struct OriginParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
}

/// Splits `origin` into scheme, host and port; `None` if it is not `scheme://host[:port]` (a path,
/// user info, an empty host or a non-numeric port).
fn split_origin(origin: &str) -> Option<OriginParts<'_>> {
    let (scheme, authority) = origin.split_once("://")?;
    if !is_uri_scheme(scheme)
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[...]` then an optional `:port`.
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let host = &authority[..inside.len() + 2];
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.contains(':') {
                return None;
            }
            (host, port)
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (host.len() > 2 * usize::from(host.starts_with('[')) && port_ok).then_some(OriginParts {
        scheme,
        host,
        port,
    })
}

/// Whether `s` is one or more DNS labels separated by dots (letters, digits, hyphens).
fn is_labels(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

impl OriginRule {
    /// Parses an allowlist entry: `scheme://host[:port]` or `scheme://*.domain[:port]`.
    pub fn parse(pattern: &str) -> Option<Self> {
        let lower = pattern.to_ascii_lowercase();
        let parts = split_origin(&lower)?;
        match parts.host.strip_prefix("*.") {
            Some(domain) if is_labels(domain) => Some(Self::Subdomains {
                scheme: parts.scheme.to_owned(),
                domain: domain.to_owned(),
                port: parts.port.map(str::to_owned),
            }),
            Some(_) => None,
            None if parts.host.contains('*') => None,
            None => Some(Self::Exact(lower)),
        }
    }

    pub fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Exact(allowed) => origin.eq_ignore_ascii_case(allowed),
            Self::Subdomains {
                scheme,
                domain,
                port,
            } => {
                let Some(o) = split_origin(origin) else {
                    return false;
                };
                // `sub.` + domain: the byte before the domain must be a dot that ends a non-empty
                // run of labels, so `evil-example.com` and `example.com.evil.net` never match.
                let host = o.host.as_bytes();
                let cut = host.len().checked_sub(domain.len() + 1);
                o.scheme.eq_ignore_ascii_case(scheme)
                    && o.port == port.as_deref()
                    && cut.is_some_and(|cut| {
                        cut > 0
                            && host[cut] == b'.'
                            && o.host[cut + 1..].eq_ignore_ascii_case(domain)
                            && is_labels(&o.host[..cut])
                    })
            }
        }
    }
}

/// Whether `pattern` is a valid `allowed_origins` entry (for [`Config::validate`]).
pub(crate) fn is_origin_pattern(pattern: &str) -> bool {
    OriginRule::parse(pattern).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        OriginRule::parse(pattern)
            .unwrap_or_else(|| panic!("{pattern} parses"))
            .matches(origin)
    }

    #[test]
    fn exact_origins_match_whole_and_case_insensitively() {
        assert!(allows("https://example.com", "https://example.com"));
        assert!(allows("https://example.com", "HTTPS://Example.COM"));
        assert!(!allows("https://example.com", "http://example.com"));
        assert!(!allows("https://example.com", "https://example.com:8443"));
        assert!(!allows(
            "https://example.com",
            "https://example.com.evil.net"
        ));
        assert!(allows("http://localhost:3000", "http://localhost:3000"));
        assert!(allows("http://[::1]:8080", "http://[::1]:8080"));
    }

    #[test]
    fn wildcards_match_subdomains_only_with_scheme_and_port() {
        let p = "https://*.example.com";
        assert!(allows(p, "https://app.example.com"));
        assert!(allows(p, "https://a.b.example.com"));
        assert!(allows(p, "https://APP.Example.com"));
        assert!(
            !allows(p, "https://example.com"),
            "the apex is not a subdomain"
        );
        assert!(!allows(p, "https://evil-example.com"));
        assert!(!allows(p, "https://example.com.evil.net"));
        assert!(!allows(p, "https://app.example.com.evil.net"));
        assert!(!allows(p, "http://app.example.com"), "scheme");
        assert!(!allows(p, "https://app.example.com:8443"), "port");
        assert!(!allows(p, "https://.example.com"), "empty label");
        assert!(!allows(p, "https://a..example.com"));
        assert!(!allows(p, "https://app.example.com/path"));
        assert!(!allows(p, "https://user@app.example.com"));
        assert!(!allows(p, "null"));
        assert!(allows(
            "https://*.example.com:8443",
            "https://app.example.com:8443"
        ));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "example.com",
            "*.example.com",
            "https://",
            "https://example.com/",
            "https://*.",
            "https://a.*.example.com",
            "https://*example.com",
            "https://example.com:port",
            "*",
            "null",
        ] {
            assert!(!is_origin_pattern(bad), "{bad}");
        }
        for good in [
            "https://example.com",
            "https://*.example.com:443",
            "http://127.0.0.1:9001",
        ] {
            assert!(is_origin_pattern(good), "{good}");
        }
    }
}
