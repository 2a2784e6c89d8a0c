//! Mesh identity names.
//!
//! A workload's identity is a DNS-like name,
//! `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>`, carried as a DNS SAN
//! in its certificate. Anchors and issuers are plain DNS-like names
//! (`root.linkerd.cluster.local`). Peers may also present URI SANs (SPIFFE IDs); those are
//! identities too, kept verbatim.

use std::{fmt, str::FromStr, sync::Arc};

use crate::error::{Error, NameError};

const WORKLOAD_MARKER: &str = ".serviceaccount.identity.";

/// A validated identity name. Cheap to clone: the gateway copies it onto every request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<str>);

/// The parts of a workload identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadParts<'a> {
    pub service_account: &'a str,
    pub namespace: &'a str,
    pub control_plane_ns: &'a str,
    pub trust_domain: &'a str,
}

impl Identity {
    /// Parses a DNS-like name (case-folded, trailing dot dropped) or a `scheme://` URI.
    pub fn parse(name: &str) -> Result<Self, Error> {
        Self::parse_inner(name).map_err(|reason| Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    }

    fn parse_inner(name: &str) -> Result<Self, NameError> {
        if name.contains("://") {
            return Self::parse_uri(name);
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        validate_dns(name)?;
        Ok(Self(Arc::from(name.to_ascii_lowercase())))
    }

    fn parse_uri(uri: &str) -> Result<Self, NameError> {
        let ok = uri.len() <= 2048
            && uri.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !rest.is_empty()
            })
            && uri.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(Self(Arc::from(uri)))
        } else {
            Err(NameError::BadUri(uri.to_string()))
        }
    }

    /// Builds `<sa>.<ns>.serviceaccount.identity.<control_plane_ns>.<trust_domain>`.
    pub fn workload(
        service_account: &str,
        namespace: &str,
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Result<Self, Error> {
        let name = format!(
            "{service_account}.{namespace}{WORKLOAD_MARKER}{control_plane_ns}.{trust_domain}"
        );
        let id = Self::parse(&name)?;
        if id.workload_parts().is_none() {
            return Err(Error::InvalidName {
                name,
                reason: NameError::NotWorkload,
            });
        }
        Ok(id)
    }

    /// Parses a name that must be a workload identity.
    pub fn parse_workload(name: &str) -> Result<Self, Error> {
        let id = Self::parse(name)?;
        if id.workload_parts().is_none() {
            return Err(Error::InvalidName {
                name: name.to_string(),
                reason: NameError::NotWorkload,
            });
        }
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_uri(&self) -> bool {
        self.0.contains("://")
    }

    /// The parts of a workload identity, or `None` for other names.
    pub fn workload_parts(&self) -> Option<WorkloadParts<'_>> {
        if self.is_uri() {
            return None;
        }
        let (head, tail) = self.0.split_once(WORKLOAD_MARKER)?;
        // Namespaces are single DNS labels; service-account names may contain dots.
        let (service_account, namespace) = head.rsplit_once('.')?;
        let (control_plane_ns, trust_domain) = tail.split_once('.')?;
        if [service_account, namespace, control_plane_ns, trust_domain]
            .iter()
            .any(|p| p.is_empty())
        {
            return None;
        }
        Some(WorkloadParts {
            service_account,
            namespace,
            control_plane_ns,
            trust_domain,
        })
    }

    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|p| p.service_account)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|p| p.namespace)
    }

    pub fn control_plane_ns(&self) -> Option<&str> {
        self.workload_parts().map(|p| p.control_plane_ns)
    }

    pub fn trust_domain(&self) -> Option<&str> {
        self.workload_parts().map(|p| p.trust_domain)
    }
}

fn validate_dns(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(label.to_string()));
        }
        if label.len() > 63 {
            return Err(NameError::LabelTooLong(label.to_string()));
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NameError::BadChar {
                label: label.to_string(),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::Hyphen(label.to_string()));
        }
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str =
        "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local";

    #[test]
    fn workload_round_trip() {
        let id = Identity::workload("vote-bot", "emojivoto", "linkerd", "cluster.local").unwrap();
        assert_eq!(
            id.as_str(),
            "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local"
        );
        let parts = id.workload_parts().unwrap();
        assert_eq!(parts.service_account, "vote-bot");
        assert_eq!(parts.namespace, "emojivoto");
        assert_eq!(parts.control_plane_ns, "linkerd");
        assert_eq!(parts.trust_domain, "cluster.local");
        assert_eq!(Identity::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn gateway_identity_is_longer_than_a_cn() {
        let id = Identity::parse_workload(GW).unwrap();
        assert!(id.as_str().len() > 64);
        assert_eq!(id.service_account(), Some("linkerd-gateway"));
        assert_eq!(id.namespace(), Some("linkerd-multicluster"));
    }

    #[test]
    fn dotted_service_account() {
        let id =
            Identity::parse_workload("a.b.ns.serviceaccount.identity.linkerd.example.org").unwrap();
        assert_eq!(id.service_account(), Some("a.b"));
        assert_eq!(id.namespace(), Some("ns"));
        assert_eq!(id.trust_domain(), Some("example.org"));
    }

    #[test]
    fn normalises_case_and_trailing_dot() {
        let id = Identity::parse("Root.Linkerd.Cluster.Local.").unwrap();
        assert_eq!(id.as_str(), "root.linkerd.cluster.local");
        assert!(id.workload_parts().is_none());
    }

    #[test]
    fn precise_errors() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            ("a..b", NameError::EmptyLabel(String::new())),
            (
                "a_b.c",
                NameError::BadChar {
                    label: "a_b".into(),
                    ch: '_',
                },
            ),
            ("-a.b", NameError::Hyphen("-a".into())),
            (
                "a b",
                NameError::BadChar {
                    label: "a b".into(),
                    ch: ' ',
                },
            ),
        ];
        for (input, want) in cases {
            match Identity::parse(input) {
                Err(Error::InvalidName { reason, .. }) => assert_eq!(&reason, want, "{input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let long_label = "a".repeat(64);
        assert!(matches!(
            Identity::parse(&long_label),
            Err(Error::InvalidName {
                reason: NameError::LabelTooLong(_),
                ..
            })
        ));
        let long = vec!["abcdefghi"; 30].join(".");
        assert!(matches!(
            Identity::parse(&long),
            Err(Error::InvalidName {
                reason: NameError::TooLong(_),
                ..
            })
        ));
        assert!(matches!(
            Identity::parse_workload("root.linkerd.cluster.local"),
            Err(Error::InvalidName {
                reason: NameError::NotWorkload,
                ..
            })
        ));
        assert!(matches!(
            Identity::parse_workload("ns.serviceaccount.identity.linkerd.cluster.local"),
            Err(Error::InvalidName {
                reason: NameError::NotWorkload,
                ..
            })
        ));
    }

    #[test]
    fn uri_identities() {
        let id = Identity::parse("spiffe://cluster.local/ns/emojivoto/sa/web").unwrap();
        assert!(id.is_uri());
        assert!(id.workload_parts().is_none());
        assert!(Identity::parse("spiffe://").is_err());
        assert!(Identity::parse("://x").is_err());
        assert!(Identity::parse("spiffe://a b").is_err());
    }

    /// Property: every well-formed workload built from generated parts parses back to the same parts.
    #[test]
    fn generated_workloads_round_trip() {
        let labels = ["a", "x1", "web-svc", "z9-8", &"q".repeat(63)];
        for sa in labels {
            for ns in labels {
                for cp in ["linkerd", "l5d"] {
                    for td in ["cluster.local", "example.org", "td"] {
                        let id = match Identity::workload(sa, ns, cp, td) {
                            Ok(id) => id,
                            // Only the length limit may refuse these.
                            Err(Error::InvalidName {
                                reason: NameError::TooLong(_),
                                ..
                            }) => continue,
                            Err(e) => panic!("{sa} {ns} {cp} {td}: {e}"),
                        };
                        let back = Identity::parse(id.as_str()).unwrap();
                        let p = back.workload_parts().unwrap();
                        assert_eq!(
                            (
                                p.service_account,
                                p.namespace,
                                p.control_plane_ns,
                                p.trust_domain
                            ),
                            (sa, ns, cp, td)
                        );
                    }
                }
            }
        }
    }
}
