//! The host's own authentication scheme: opaque API keys mapped to users.

use std::collections::HashMap;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sync_core::{Authenticator, Error, Principal, Result};

/// The shortest key accepted: shorter keys could be guessed.
pub const MIN_KEY_LEN: usize = 24;

/// The prefix of the keys [`ApiKeyAuthenticator::generate_key`] makes, so a
/// leaked key is recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "hk_";

/// Opaque bearer API keys, each granting one [`Principal`].
///
/// Only the SHA-256 digest of each key is kept, as a host keeps them in its
/// database: a dump of the table does not reveal usable keys. Keys are high
/// entropy, so a plain digest (no salt, no slow hash) is enough.
#[derive(Clone, Debug, Default)]
pub struct ApiKeyAuthenticator {
    keys: HashMap<[u8; 32], Principal>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeyAuthenticator {
    /// An authenticator that accepts no key yet.
    pub fn new() -> Self {
        ApiKeyAuthenticator::default()
    }

    /// A fresh random key (122 random bits, URL-safe), e.g. for a new device.
    pub fn generate_key() -> String {
        format!("{KEY_PREFIX}{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
    }

    /// Grants `principal` to whoever presents `key`; replaces an earlier
    /// grant of the same key.
    ///
    /// Errors: `InvalidInput` for a key shorter than [`MIN_KEY_LEN`] or one
    /// with characters that cannot travel in an `Authorization` header.
    pub fn grant(&mut self, key: &str, principal: Principal) -> Result<()> {
        if key.len() < MIN_KEY_LEN {
            return Err(Error::invalid(format!("an API key needs at least {MIN_KEY_LEN} characters")));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid("an API key must be visible ASCII without spaces"));
        }
        self.keys.insert(digest(key), principal);
        Ok(())
    }

    /// Withdraws `key`; whether it was granted.
    pub fn revoke(&mut self, key: &str) -> bool {
        self.keys.remove(&digest(key)).is_some()
    }

    /// How many keys are granted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is granted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[async_trait]
impl Authenticator for ApiKeyAuthenticator {
    async fn authenticate(&self, credential: &str) -> Result<Principal> {
        // The lookup is by digest, so the time it takes says nothing about
        // how much of a guessed key was right.
        self.keys.get(&digest(credential)).cloned().ok_or_else(|| {
            Error::unauthenticated("the API key is not known (revoked, mistyped or from another deployment)")
        })
    }
}

#[cfg(test)]
mod tests {
    use sync_core::{ErrorKind, OrgId};

    use super::*;

    #[tokio::test]
    async fn grants_revokes_and_refuses() {
        let org = OrgId::new("helpdesk").unwrap();
        let mut auth = ApiKeyAuthenticator::new();
        let key = ApiKeyAuthenticator::generate_key();
        assert!(key.starts_with(KEY_PREFIX) && key.len() >= MIN_KEY_LEN);
        auth.grant(&key, Principal::new("alice", org.clone()).with_role("agent")).unwrap();
        let principal = auth.authenticate(&key).await.unwrap();
        assert_eq!(principal.user_id, "alice");
        assert!(principal.has_role("agent"));

        let other = ApiKeyAuthenticator::generate_key();
        assert_eq!(auth.authenticate(&other).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
        assert!(auth.revoke(&key));
        assert_eq!(auth.authenticate(&key).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
        assert!(auth.is_empty());

        let short = auth.grant("short", Principal::new("bob", org.clone())).unwrap_err();
        assert_eq!(short.kind(), ErrorKind::InvalidInput);
        let spaced = auth.grant("hk_with a space in the middle of it", Principal::new("bob", org));
        assert_eq!(spaced.unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
