//! Authentication tokens with roles, and the switch that turns authentication on
//! (`flowctl server --auth`).
//!
//! Only what every node must agree on is replicated: whether authentication is enabled and the
//! token records. A record holds the SHA-256 of its secret, never the secret itself; the
//! proposer generates the secret, hashes it and stamps the times, so that apply stays
//! deterministic. Checking a presented secret against these records is the server's job.

use crate::{Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The most tokens the state holds. Every node keeps them all in memory and the server scans
/// them, so the number is bounded like every other replicated collection.
pub const MAX_TOKENS: usize = 10_000;

/// Length of a lowercase hex SHA-256 digest.
const HASH_LEN: usize = 64;

/// What a token may do. The server maps each role to the requests it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Agent,
    Reader,
}

impl Role {
    /// Every role, most privileged first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Agent, Role::Reader];

    /// The role's name, as written in commands, flags and the persisted records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Reader => "reader",
        }
    }

    /// Parses a role name as [`Role::as_str`] writes it.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?}, expected one of: {}", valid.join(", "))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A DNS label, unique among tokens.
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the secret: exactly 64 characters of `[0-9a-f]`, unique among
    /// tokens.
    pub hash: String,
    /// The proposer's clock when the token was created.
    pub created_ms: u64,
    /// When the token stops being accepted; `None` means never. Later than `created_ms`.
    pub expires_ms: Option<u64>,
}

/// The replicated authentication state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// By name.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Log index of the last change to anything here (0: never changed); readers cache on it.
    pub revision: u64,
}

impl AuthState {
    pub fn is_empty(&self) -> bool {
        !self.enabled && self.tokens.is_empty() && self.revision == 0
    }
}

/// Turns authentication on or off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAuth {
    pub enabled: bool,
}

/// Stores a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    pub token: TokenRecord,
}

/// Removes a token by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeToken {
    pub name: String,
}

fn rejected(r: Rejection) -> (Outcome, Vec<Touched>) {
    (Outcome::Rejected(r), vec![])
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == HASH_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn set_auth(state: &mut State, index: u64, c: &SetAuth) -> (Outcome, Vec<Touched>) {
    let outcome = Outcome::AuthSet { enabled: c.enabled };
    // Setting the flag it already has changes nothing, so the revision that readers cache on
    // stays where it is and a retried proposal writes nothing.
    if state.auth.enabled == c.enabled {
        return (outcome, vec![]);
    }
    state.auth.enabled = c.enabled;
    state.auth.revision = index;
    (outcome, vec![Touched::AuthMeta])
}

pub(crate) fn create_token(
    state: &mut State,
    index: u64,
    c: &CreateToken,
) -> (Outcome, Vec<Touched>) {
    let t = &c.token;
    // The proposer validates too, but a command may come from anywhere that can propose, and
    // the name becomes a state key on every node.
    if let Err(m) = flowctl_spec::check_name(&t.name) {
        return rejected(Rejection::Invalid(format!("token name: {m}")));
    }
    if !is_sha256_hex(&t.hash) {
        return rejected(Rejection::Invalid(format!(
            "token {:?}: the hash must be {HASH_LEN} lowercase hex characters (a SHA-256)",
            t.name
        )));
    }
    if let Some(expires) = t.expires_ms {
        if expires <= t.created_ms {
            return rejected(Rejection::Invalid(format!(
                "token {:?}: expires_ms {expires} is not after created_ms {}",
                t.name, t.created_ms
            )));
        }
    }
    let outcome = Outcome::TokenCreated {
        name: t.name.clone(),
    };
    let auth = &mut state.auth;
    match auth.tokens.get(&t.name) {
        // A retried proposal of a token that was stored already: the same success again.
        Some(existing) if existing == t => return (outcome, vec![]),
        Some(_) => return rejected(Rejection::Conflict(format!("token {:?} exists", t.name))),
        None => {}
    }
    // A scan, not an index: at most MAX_TOKENS records, and tokens are created rarely.
    if let Some(other) = auth.tokens.values().find(|o| o.hash == t.hash) {
        return rejected(Rejection::Conflict(format!(
            "token {:?} has the same hash as token {:?}",
            t.name, other.name
        )));
    }
    if auth.tokens.len() >= MAX_TOKENS {
        return rejected(Rejection::Invalid(format!(
            "there are already {MAX_TOKENS} tokens, the most allowed; revoke some first"
        )));
    }
    auth.tokens.insert(t.name.clone(), t.clone());
    auth.revision = index;
    (
        outcome,
        vec![Touched::AuthMeta, Touched::Token(t.name.clone())],
    )
}

pub(crate) fn revoke_token(
    state: &mut State,
    index: u64,
    c: &RevokeToken,
) -> (Outcome, Vec<Touched>) {
    if state.auth.tokens.remove(&c.name).is_none() {
        return rejected(Rejection::NotFound {
            kind: "token".into(),
            name: c.name.clone(),
        });
    }
    state.auth.revision = index;
    (
        Outcome::TokenRevoked {
            name: c.name.clone(),
        },
        vec![Touched::AuthMeta, Touched::Token(c.name.clone())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply, codec, Command};

    /// A distinct valid hash per `n`. Multiplying by an odd constant is a bijection on u64, and
    /// it makes the hashes differ in their first characters, which keeps the duplicate scan of
    /// the MAX_TOKENS test quick.
    fn hash(n: u64) -> String {
        format!("{:016x}{:048x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15), 0)
    }

    const GOLDEN_HASH: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    fn token(name: &str, n: u64) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role: Role::Operator,
            hash: hash(n),
            created_ms: 1_000,
            expires_ms: None,
        }
    }

    fn create(t: TokenRecord) -> Command {
        Command::CreateToken(CreateToken { token: t })
    }

    fn revoke(name: &str) -> Command {
        Command::RevokeToken(RevokeToken { name: name.into() })
    }

    fn set(enabled: bool) -> Command {
        Command::SetAuth(SetAuth { enabled })
    }

    fn is_invalid(o: &Outcome) -> bool {
        matches!(o, Outcome::Rejected(Rejection::Invalid(_)))
    }

    fn is_conflict(o: &Outcome) -> bool {
        matches!(o, Outcome::Rejected(Rejection::Conflict(_)))
    }

    #[test]
    fn role_names_round_trip_and_an_unknown_one_lists_the_valid_roles() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            // The serde name is the same as the one users type.
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        for bad in ["", "Admin", "root", " admin"] {
            let e = Role::parse(bad).unwrap_err();
            for r in Role::ALL {
                assert!(e.contains(r.as_str()), "{e}");
            }
        }
    }

    #[test]
    fn set_auth_sets_the_flag_and_the_revision_and_a_repeat_changes_nothing() {
        let mut s = State::default();
        let (o, t) = apply(&mut s, 4, &set(true));
        assert_eq!(o, Outcome::AuthSet { enabled: true });
        assert_eq!(t, vec![Touched::AuthMeta]);
        assert!(s.auth.enabled);
        assert_eq!(s.auth.revision, 4);

        let before = s.clone();
        let (o, t) = apply(&mut s, 5, &set(true));
        assert_eq!(o, Outcome::AuthSet { enabled: true });
        assert!(t.is_empty());
        assert_eq!(s, before);

        let (o, t) = apply(&mut s, 6, &set(false));
        assert_eq!(o, Outcome::AuthSet { enabled: false });
        assert_eq!(t, vec![Touched::AuthMeta]);
        assert!(!s.auth.enabled);
        assert_eq!(s.auth.revision, 6);
    }

    #[test]
    fn create_stores_the_record_as_given_and_touches_it() {
        let mut s = State::default();
        let mut t = token("ci", 1);
        t.role = Role::Agent;
        t.expires_ms = Some(2_000);
        let (o, touched) = apply(&mut s, 7, &create(t.clone()));
        assert_eq!(o, Outcome::TokenCreated { name: "ci".into() });
        assert_eq!(
            touched,
            vec![Touched::AuthMeta, Touched::Token("ci".into())]
        );
        assert_eq!(s.auth.tokens["ci"], t);
        assert_eq!(s.auth.revision, 7);
        assert!(!s.auth.enabled, "creating a token does not enable auth");
    }

    #[test]
    fn a_token_name_that_is_not_a_dns_label_is_invalid() {
        let mut s = State::default();
        let too_long = "a".repeat(flowctl_spec::MAX_NAME_LEN + 1);
        for name in ["", "../etc", "a/b", "A", "-a", "a.b", too_long.as_str()] {
            let (o, touched) = apply(&mut s, 1, &create(token(name, 1)));
            assert!(is_invalid(&o), "{name:?}: {o:?}");
            assert!(touched.is_empty(), "{name:?}");
        }
        assert_eq!(s, State::default());
    }

    #[test]
    fn a_hash_that_is_not_64_lowercase_hex_chars_is_invalid() {
        let mut s = State::default();
        let upper = "AB".repeat(32);
        let short = hash(1)[1..].to_owned();
        let long = format!("{}0", hash(1));
        let not_hex = format!("{}g", &hash(1)[1..]);
        let multibyte = format!("{}é", &hash(1)[2..]);
        for h in ["", upper.as_str(), &short, &long, &not_hex, &multibyte] {
            let mut t = token("a", 0);
            t.hash = h.to_owned();
            let (o, touched) = apply(&mut s, 1, &create(t));
            assert!(is_invalid(&o), "{h:?}: {o:?}");
            assert!(touched.is_empty());
        }
        assert_eq!(s, State::default());
    }

    #[test]
    fn an_expiry_not_after_creation_is_invalid() {
        let mut s = State::default();
        for expires in [0, 999, 1_000] {
            let mut t = token("a", 1);
            t.expires_ms = Some(expires);
            let (o, _) = apply(&mut s, 1, &create(t));
            assert!(is_invalid(&o), "{expires}: {o:?}");
        }
        let mut t = token("a", 1);
        t.expires_ms = Some(1_001);
        let (o, _) = apply(&mut s, 2, &create(t));
        assert_eq!(o, Outcome::TokenCreated { name: "a".into() });
    }

    #[test]
    fn a_retried_identical_create_succeeds_again_and_changes_nothing() {
        let mut s = State::default();
        apply(&mut s, 3, &create(token("a", 1)));
        let before = s.clone();
        let (o, touched) = apply(&mut s, 9, &create(token("a", 1)));
        assert_eq!(o, Outcome::TokenCreated { name: "a".into() });
        assert!(touched.is_empty());
        assert_eq!(s, before);
        assert_eq!(s.auth.revision, 3);
    }

    #[test]
    fn a_second_token_with_the_same_name_is_a_conflict() {
        let mut s = State::default();
        apply(&mut s, 1, &create(token("a", 1)));
        let before = s.clone();
        let mut other_role = token("a", 1);
        other_role.role = Role::Admin;
        for t in [token("a", 2), other_role] {
            let (o, touched) = apply(&mut s, 2, &create(t));
            assert!(is_conflict(&o), "{o:?}");
            assert!(touched.is_empty());
        }
        assert_eq!(s, before);
    }

    #[test]
    fn a_different_name_with_the_same_hash_is_a_conflict() {
        let mut s = State::default();
        apply(&mut s, 1, &create(token("a", 1)));
        let before = s.clone();
        let (o, touched) = apply(&mut s, 2, &create(token("b", 1)));
        assert!(is_conflict(&o), "{o:?}");
        assert!(touched.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn no_more_than_max_tokens_are_stored() {
        let mut s = State::default();
        for i in 0..MAX_TOKENS as u64 {
            let (o, _) = apply(&mut s, i + 1, &create(token(&format!("t{i}"), i)));
            assert!(matches!(o, Outcome::TokenCreated { .. }), "{i}: {o:?}");
        }
        assert_eq!(s.auth.tokens.len(), MAX_TOKENS);
        let full = s.clone();
        let n = MAX_TOKENS as u64;
        let (o, touched) = apply(&mut s, n + 1, &create(token("one-more", n)));
        assert!(is_invalid(&o), "{o:?}");
        assert!(touched.is_empty());
        assert_eq!(s, full);
        // A retry of a stored token is still the same success when the table is full.
        let (o, _) = apply(&mut s, n + 2, &create(token("t0", 0)));
        assert_eq!(o, Outcome::TokenCreated { name: "t0".into() });
        // Revoking one makes room again.
        apply(&mut s, n + 3, &revoke("t0"));
        let (o, _) = apply(&mut s, n + 4, &create(token("one-more", n)));
        assert_eq!(
            o,
            Outcome::TokenCreated {
                name: "one-more".into()
            }
        );
    }

    #[test]
    fn revoke_removes_the_token_and_an_unknown_name_is_not_found() {
        let mut s = State::default();
        apply(&mut s, 1, &create(token("a", 1)));
        let (o, touched) = apply(&mut s, 2, &revoke("a"));
        assert_eq!(o, Outcome::TokenRevoked { name: "a".into() });
        assert_eq!(touched, vec![Touched::AuthMeta, Touched::Token("a".into())]);
        assert!(s.auth.tokens.is_empty());
        assert_eq!(s.auth.revision, 2);

        let before = s.clone();
        for name in ["a", "never"] {
            let (o, touched) = apply(&mut s, 3, &revoke(name));
            assert_eq!(
                o,
                Outcome::Rejected(Rejection::NotFound {
                    kind: "token".into(),
                    name: name.into()
                })
            );
            assert!(touched.is_empty());
        }
        assert_eq!(s, before);
        // The hash of a revoked token is free again.
        let (o, _) = apply(&mut s, 4, &create(token("b", 1)));
        assert_eq!(o, Outcome::TokenCreated { name: "b".into() });
    }

    #[test]
    fn the_revision_is_the_index_of_the_last_change_only() {
        let mut s = State::default();
        assert_eq!(s.auth.revision, 0);
        let log = [
            (2, set(true), 2),
            (3, create(token("a", 1)), 3),
            (4, create(token("a", 1)), 3), // identical retry
            (5, create(token("b", 1)), 3), // same hash
            (6, create(token("a", 2)), 3), // same name
            (7, revoke("zz"), 3),          // unknown
            (8, set(true), 3),             // already enabled
            (9, create(token("b", 2)), 9),
            (10, revoke("a"), 10),
            (11, set(false), 11),
        ];
        for (index, cmd, revision) in log {
            apply(&mut s, index, &cmd);
            assert_eq!(s.auth.revision, revision, "after index {index}: {cmd:?}");
        }
    }

    #[test]
    fn auth_commands_apply_inside_a_batch() {
        let mut s = State::default();
        let (o, touched) = apply(
            &mut s,
            5,
            &Command::Batch(vec![set(true), create(token("a", 1)), revoke("b")]),
        );
        let Outcome::Batch(outs) = o else {
            panic!("{o:?}")
        };
        assert_eq!(outs[0], Outcome::AuthSet { enabled: true });
        assert_eq!(outs[1], Outcome::TokenCreated { name: "a".into() });
        assert!(matches!(
            outs[2],
            Outcome::Rejected(Rejection::NotFound { .. })
        ));
        assert!(touched.contains(&Touched::Token("a".into())));
        assert_eq!(s.auth.revision, 5);
    }

    // Golden bytes: the encodings of the auth commands and of the auth part of the state are
    // persisted in logs and snapshots. Add a new version instead of editing them.
    const GOLDEN_CREATE: &str = "\u{1}{\"CreateToken\":{\"token\":{\"name\":\"ci\",\"role\":\"agent\",\"hash\":\"00000000000000000000000000000000000000000000000000000000000000ff\",\"created_ms\":1000,\"expires_ms\":2000}}}";
    const GOLDEN_SET: &str = "\u{1}{\"SetAuth\":{\"enabled\":true}}";
    const GOLDEN_REVOKE: &str = "\u{1}{\"RevokeToken\":{\"name\":\"ci\"}}";

    fn golden_token() -> TokenRecord {
        TokenRecord {
            name: "ci".into(),
            role: Role::Agent,
            hash: GOLDEN_HASH.into(),
            created_ms: 1_000,
            expires_ms: Some(2_000),
        }
    }

    #[test]
    fn auth_command_golden_bytes() {
        for (cmd, golden) in [
            (create(golden_token()), GOLDEN_CREATE),
            (set(true), GOLDEN_SET),
            (revoke("ci"), GOLDEN_REVOKE),
        ] {
            assert_eq!(
                codec::encode_v1("command", &cmd).unwrap(),
                golden.as_bytes()
            );
            assert_eq!(
                codec::decode_command(&codec::encode_command(&cmd).unwrap()).unwrap(),
                cmd
            );
            assert_eq!(codec::decode_command(golden.as_bytes()).unwrap(), cmd);
        }
    }

    #[test]
    fn auth_state_round_trips_and_an_empty_one_is_not_written() {
        let mut s = State::default();
        let empty = String::from_utf8(codec::encode_v1("state", &s).unwrap()).unwrap();
        assert!(!empty.contains("auth"), "{empty}");

        apply(&mut s, 3, &set(true));
        apply(&mut s, 4, &create(golden_token()));
        let bytes = codec::encode_v1("state", &s).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.ends_with("\"auth\":{\"enabled\":true,\"tokens\":{\"ci\":{\"name\":\"ci\",\"role\":\"agent\",\"hash\":\"00000000000000000000000000000000000000000000000000000000000000ff\",\"created_ms\":1000,\"expires_ms\":2000}},\"revision\":4}}"),
            "{text}"
        );
        let back = codec::decode_state(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            codec::decode_state(&codec::encode_state(&s).unwrap()).unwrap(),
            s
        );
        assert_eq!(back.auth, s.auth);

        // States differing only in auth are not equal.
        let mut other = s.clone();
        other.auth.enabled = false;
        assert_ne!(other, s);
    }
}
