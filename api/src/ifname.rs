//! Validated Linux interface names.
//!
//! The kernel's `dev_valid_name()` (net/core/dev.c) is the rule we follow: a name is 1 to 15
//! bytes (`IFNAMSIZ` - 1), is not `.` or `..`, and contains no `/`, `:`, NUL or whitespace.
//! Validating before any syscall means a bad name never reaches an ioctl whose error would be
//! a bare `EINVAL`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest interface name the kernel accepts, in bytes (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// Why a string is not a valid interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("Interface name is empty")]
    Empty,
    #[error("Interface name {0:?} is longer than {MAX_IFNAME_LEN} bytes")]
    TooLong(String),
    #[error("Interface name {0:?} is reserved")]
    Reserved(String),
    #[error("Interface name {name:?} contains {what}, which the kernel refuses")]
    BadChar { name: String, what: &'static str },
}

/// An interface name the kernel will accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    pub fn new(name: &str) -> Result<Self, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(IfNameError::TooLong(name.to_owned()));
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved(name.to_owned()));
        }
        for c in name.chars() {
            let what = match c {
                '/' => "'/'",
                ':' => "':'",
                // The kernel's name template ("tap%d" picks a free number): a name with '%'
                // is not the name the device gets.
                '%' => "'%'",
                '\0' => "a NUL byte",
                c if c.is_whitespace() => "whitespace",
                _ => continue,
            };
            return Err(IfNameError::BadChar { name: name.to_owned(), what });
        }
        Ok(IfName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a NUL-padded `IFNAMSIZ` array, as `struct ifreq` wants it.
    pub fn to_ifr_name(&self) -> [u8; MAX_IFNAME_LEN + 1] {
        let mut out = [0u8; MAX_IFNAME_LEN + 1];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IfName::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for IfName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kernel_valid_names() {
        for n in ["tap0", "vmtap12", "a", "br-lan.10", "123456789012345", "vnet_0", "x@y"] {
            assert_eq!(IfName::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn rejects_what_dev_valid_name_rejects() {
        assert_eq!(IfName::new(""), Err(IfNameError::Empty));
        assert!(matches!(IfName::new("1234567890123456"), Err(IfNameError::TooLong(_))));
        assert!(matches!(IfName::new("."), Err(IfNameError::Reserved(_))));
        assert!(matches!(IfName::new(".."), Err(IfNameError::Reserved(_))));
        for bad in ["a/b", "a:b", "a b", "a\tb", "a\nb", "a\0b"] {
            assert!(matches!(IfName::new(bad), Err(IfNameError::BadChar { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn length_counts_bytes_not_chars() {
        // 8 two-byte characters = 16 bytes.
        assert!(matches!(IfName::new("éééééééé"), Err(IfNameError::TooLong(_))));
    }

    #[test]
    fn ifr_name_is_nul_padded() {
        let n = IfName::new("tap0").unwrap().to_ifr_name();
        assert_eq!(&n[..5], b"tap0\0");
        assert!(n[4..].iter().all(|&b| b == 0));
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<IfName>("\"tap0\"").is_ok());
        assert!(serde_json::from_str::<IfName>("\"bad/name\"").is_err());
    }
}
