//! User and group names, resolved the way `tunctl -u`/`-g` does: a numeric id is taken as is
//! (it need not exist in `/etc/passwd`), anything else must be a known name.

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("Unknown user {0:?}: neither a user name nor a numeric uid")]
    UnknownUser(String),
    #[error("Unknown group {0:?}: neither a group name nor a numeric gid")]
    UnknownGroup(String),
    #[error("Cannot look up {0:?} in the user database: {1}")]
    Lookup(String, nix::Error),
}

/// A resolved owner: the numeric id the kernel takes, and the name it was given by (if any),
/// kept for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn numeric(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub fn resolve_user(spec: &str) -> Result<Principal, Error> {
    if let Some(id) = numeric(spec) {
        return Ok(Principal { id, name: user_name(id) });
    }
    match User::from_name(spec) {
        Ok(Some(u)) => Ok(Principal { id: u.uid.as_raw(), name: Some(u.name) }),
        Ok(None) => Err(Error::UnknownUser(spec.to_owned())),
        Err(e) => Err(Error::Lookup(spec.to_owned(), e)),
    }
}

pub fn resolve_group(spec: &str) -> Result<Principal, Error> {
    if let Some(id) = numeric(spec) {
        return Ok(Principal { id, name: group_name(id) });
    }
    match Group::from_name(spec) {
        Ok(Some(g)) => Ok(Principal { id: g.gid.as_raw(), name: Some(g.name) }),
        Ok(None) => Err(Error::UnknownGroup(spec.to_owned())),
        Err(e) => Err(Error::Lookup(spec.to_owned(), e)),
    }
}

/// The primary group of a user, for `--owner U` without `:G`.
pub fn primary_group(uid: u32) -> Option<Principal> {
    let u = User::from_uid(Uid::from_raw(uid)).ok()??;
    Some(Principal { id: u.gid.as_raw(), name: group_name(u.gid.as_raw()) })
}

pub fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid)).ok()?.map(|u| u.name)
}

pub fn group_name(gid: u32) -> Option<String> {
    Group::from_gid(Gid::from_raw(gid)).ok()?.map(|g| g.name)
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_by_name_and_number() {
        assert_eq!(resolve_user("root").unwrap().id, 0);
        assert_eq!(resolve_user("0").unwrap().name.as_deref(), Some("root"));
        assert_eq!(resolve_group("root").unwrap().id, 0);
    }

    #[test]
    fn numeric_ids_need_no_passwd_entry() {
        let p = resolve_user("4000000").unwrap();
        assert_eq!(p.id, 4_000_000);
        assert_eq!(p.name, None);
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(resolve_user("no-such-user-vmnetd"), Err(Error::UnknownUser("no-such-user-vmnetd".into())));
        assert_eq!(resolve_group("no-such-group-vmnetd"), Err(Error::UnknownGroup("no-such-group-vmnetd".into())));
        // Not a number, not a name.
        assert!(resolve_user("12abc").is_err());
        assert!(resolve_user("").is_err());
    }
}
