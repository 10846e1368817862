//! From the file as written to a validated [`Policy`]; every error names the place in the file.

use std::{collections::HashSet, net::IpAddr};

use super::{
    model::{PolicyFile, PortSpec},
    AuthorizationPolicy, Error, Pattern, PeerAuth, Policy, Rule, Scope,
};
use crate::identity::{SpiffeId, TrustDomain};

type Invalid = (String, String);

fn at(location: impl Into<String>, message: impl Into<String>) -> Invalid {
    (location.into(), message.into())
}

impl Policy {
    /// Parses and validates a policy file; `path` names it in errors.
    pub fn parse(path: &str, text: &str, trust_domain: &TrustDomain) -> Result<Self, Error> {
        if text.len() > super::MAX_POLICY_BYTES {
            return Err(Error::TooLarge { path: path.into(), size: text.len() });
        }
        let file: PolicyFile =
            serde_yaml::from_str(text).map_err(|e| Error::Parse { path: path.into(), message: e.to_string() })?;
        validate(&file, trust_domain).map_err(|(location, message)| Error::Invalid {
            path: path.into(),
            location,
            message,
        })
    }
}

fn spiffe(td: &TrustDomain, text: &str, location: &str) -> Result<SpiffeId, Invalid> {
    let id = SpiffeId::new(text).map_err(|e| at(location, e.to_string()))?;
    if !id.is_member_of(td) {
        return Err(at(location, format!("{text:?} is not in trust domain {}", td.as_str())));
    }
    Ok(id)
}

fn namespace(text: &str, location: &str) -> Result<String, Invalid> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then(|| text.to_string()).ok_or_else(|| at(location, format!("{text:?} is not a Kubernetes namespace name")))
}

/// The fixed part of a principal pattern: a prefix starts with `spiffe://`; both use the
/// characters of SPIFFE IDs.
fn principal_part(part: &str, prefix: bool) -> Result<(), String> {
    let chars_ok = part.chars().all(|c| c.is_ascii_alphanumeric() || "-._/:".contains(c));
    if !chars_ok || part.is_empty() || (prefix && !part.starts_with("spiffe://")) {
        return Err(format!(
            "{part:?} is not a SPIFFE ID pattern: use \"*\", \"spiffe://<td>/<path prefix>*\" or \"*<path suffix>\""
        ));
    }
    Ok(())
}

/// The fixed part of a namespace pattern: namespace-name characters.
fn namespace_part(part: &str, _prefix: bool) -> Result<(), String> {
    let ok = !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(()).ok_or_else(|| format!("{part:?} is not part of a Kubernetes namespace name"))
}

fn scope(td: &TrustDomain, ns: &Option<String>, workload: &Option<String>, loc: &str) -> Result<Scope, Invalid> {
    match (ns, workload) {
        (Some(n), None) => Ok(Scope::Namespace(namespace(n, &format!("{loc}.namespace"))?)),
        (None, Some(w)) => Ok(Scope::Workload(spiffe(td, w, &format!("{loc}.workload"))?)),
        _ => Err(at(loc, "set exactly one of namespace or workload")),
    }
}

fn cidr(text: &str, location: &str) -> Result<(IpAddr, u8), Invalid> {
    let dest = crate::config::Destination { cidr: text.into(), ports: None };
    dest.parse().map(|d| (d.addr, d.len)).map_err(|m| at(location, m))
}

fn ports(specs: &[PortSpec], location: &str) -> Result<Vec<(u16, u16)>, Invalid> {
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let loc = format!("{location}[{i}]");
        let bad = || at(&loc, "a port is 1-65535, a range is \"LOW-HIGH\" with LOW ≤ HIGH");
        let (lo, hi) = match spec {
            PortSpec::Port(p) => (*p, *p),
            PortSpec::Text(t) => match t.split_once('-') {
                Some((a, b)) => (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?),
                None => {
                    let p = t.trim().parse().map_err(|_| bad())?;
                    (p, p)
                }
            },
        };
        if lo == 0 || hi > 65535 || lo > hi {
            return Err(bad());
        }
        out.push((lo as u16, hi as u16));
    }
    Ok(out)
}

fn validate(file: &PolicyFile, td: &TrustDomain) -> Result<Policy, Invalid> {
    let mut policy = Policy::default();
    let mut addresses = HashSet::new();
    for (i, e) in file.endpoints.iter().enumerate() {
        let loc = format!("endpoints[{i}]");
        let addr: IpAddr = e
            .address
            .parse()
            .map_err(|_| at(format!("{loc}.address"), format!("{:?} is not an IP address", e.address)))?;
        if !addresses.insert(addr) {
            return Err(at(format!("{loc}.address"), format!("{addr} is listed twice")));
        }
        policy.endpoints.push((addr, spiffe(td, &e.spiffe_id, &format!("{loc}.spiffe_id"))?, e.labels.clone()));
    }
    for (i, d) in file.defaults.iter().enumerate() {
        let s = scope(td, &d.namespace, &d.workload, &format!("defaults[{i}]"))?;
        if policy.defaults.iter().any(|(other, _)| *other == s) {
            return Err(at(format!("defaults[{i}]"), "a default for this scope is already set"));
        }
        policy.defaults.push((s, d.action));
    }
    for (i, p) in file.peer_authentication.iter().enumerate() {
        let loc = format!("peer_authentication[{i}]");
        let s = scope(td, &p.namespace, &p.workload, &loc)?;
        if policy.peer_auth.iter().any(|other| other.scope == s) {
            return Err(at(loc, "peer authentication for this scope is already set"));
        }
        for (j, c) in p.allow_plaintext_from.iter().enumerate() {
            policy.plaintext_allow.push(cidr(c, &format!("{loc}.allow_plaintext_from[{j}]"))?);
        }
        policy.peer_auth.push(PeerAuth { scope: s, mode: p.mode });
    }
    let mut names = HashSet::new();
    for (i, p) in file.policies.iter().enumerate() {
        let loc = format!("policies[{i}] ({})", p.name);
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            return Err(at(format!("{loc}.name"), "names must be present and unique"));
        }
        let ns = namespace(&p.namespace, &format!("{loc}.namespace"))?;
        let sel = p.selector.clone().unwrap_or_default();
        let mut identities = Vec::new();
        for (j, id) in sel.identities.iter().enumerate() {
            identities.push(spiffe(td, id, &format!("{loc}.selector.identities[{j}]"))?);
        }
        if p.rules.is_empty() {
            return Err(at(
                format!("{loc}.rules"),
                "a policy needs at least one rule (an empty `from` and `to` matches everything)",
            ));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (j, r) in p.rules.iter().enumerate() {
            let rloc = format!("{loc}.rules[{j}]");
            let from = r.from.clone().unwrap_or_default();
            let mut principals = Vec::new();
            for (k, text) in from.principals.iter().enumerate() {
                let ploc = format!("{rloc}.from.principals[{k}]");
                principals.push(
                    Pattern::parse(
                        text,
                        |exact| spiffe(td, exact, &ploc).map(|_| ()).map_err(|(_, m)| m),
                        principal_part,
                    )
                    .map_err(|m| at(&ploc, m))?,
                );
            }
            let mut namespaces = Vec::new();
            for (k, text) in from.namespaces.iter().enumerate() {
                let nloc = format!("{rloc}.from.namespaces[{k}]");
                namespaces.push(
                    Pattern::parse(
                        text,
                        |exact| namespace(exact, &nloc).map(|_| ()).map_err(|(_, m)| m),
                        namespace_part,
                    )
                    .map_err(|m| at(&nloc, m))?,
                );
            }
            let rule = Rule {
                principals,
                namespaces,
                ports: ports(&r.to.clone().unwrap_or_default().ports, &format!("{rloc}.to.ports"))?,
            };
            if let Some(k) = rules.iter().position(|other| *other == rule) {
                return Err(at(rloc, format!("duplicates rules[{k}]")));
            }
            rules.push(rule);
        }
        policy.policies.push(AuthorizationPolicy {
            name: p.name.clone(),
            namespace: ns,
            identities,
            labels: sel.labels,
            action: p.action,
            rules,
        });
    }
    Ok(policy)
}
