//! The opaque pull cursor and its codec.
//!
//! A cursor says how far a client has read: the org's schema version it saw
//! and a [`Seq`] position per partition. It is bound to one org and one user
//! and authenticated with an HMAC under the server's secret, so a client can
//! neither forge positions nor use another caller's cursor. Anything that does
//! not decode and verify — garbage, truncation, another org's or user's
//! cursor, an unknown format version — is [`Error::ResyncRequired`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::ids::{OrgId, Seq};
use crate::partition::PartitionKey;

/// The longest encoded cursor accepted, in bytes.
pub const MAX_CURSOR_LEN: usize = 256 * 1024;

const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 16;

/// A client's read position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The org it belongs to.
    pub org: OrgId,
    /// The user it belongs to.
    pub user: String,
    /// The org's incarnation it was issued for (see
    /// [`OrgStaging::incarnation`](crate::staging::OrgStaging::incarnation)).
    #[serde(default)]
    pub incarnation: String,
    /// The org's schema version the client last received.
    pub schema_version: u64,
    /// Position per partition: every change with a seq at or below it has
    /// been delivered.
    pub positions: BTreeMap<PartitionKey, Seq>,
    /// Per partition, the head when the client was last fully caught up on
    /// it (or, for a partition still in its first read, the head of that
    /// read's first page). Every row the client holds through the partition
    /// was read when the head was at least this, so a remove it could need
    /// has a greater seq: the partition is safe while the tombstone floor
    /// has not passed this value. Absent: the position itself.
    #[serde(default)]
    pub since: BTreeMap<PartitionKey, Seq>,
}

impl Cursor {
    /// A cursor at the start of everything for `org` and `user`.
    pub fn start(org: OrgId, user: impl Into<String>) -> Self {
        Cursor {
            org,
            user: user.into(),
            incarnation: String::new(),
            schema_version: 0,
            positions: BTreeMap::new(),
            since: BTreeMap::new(),
        }
    }
}

/// Encodes and verifies cursors under a server secret.
#[derive(Clone)]
pub struct CursorCodec {
    key: Vec<u8>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec { key: <redacted> }")
    }
}

impl CursorCodec {
    /// A codec keyed by `secret`. Every server process of one deployment must
    /// use the same secret, or cursors from one fail on another.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        CursorCodec { key: secret.as_ref().to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> Result<[u8; MAC_LEN]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .map_err(|e| Error::internal(format!("cursor key: {e}")))?;
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        Ok(out)
    }

    /// Encodes a cursor as URL-safe text.
    pub fn encode(&self, cursor: &Cursor) -> Result<String> {
        let mut bytes = vec![FORMAT_VERSION];
        serde_json::to_writer(&mut bytes, cursor)
            .map_err(|e| Error::internal(format!("cursor encode: {e}")))?;
        let mac = self.mac(&bytes)?;
        bytes.extend_from_slice(&mac);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Decodes and verifies a cursor, checking that it belongs to `org` and
    /// `user`. Oversized input is `LimitExceeded`; anything else that fails is
    /// `ResyncRequired` with the reason.
    pub fn decode(&self, text: &str, org: &OrgId, user: &str) -> Result<Cursor> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(Error::limit("cursor_bytes", MAX_CURSOR_LEN as u64, text.len() as u64));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| Error::resync("the cursor is not valid base64url text"))?;
        if bytes.len() < 1 + MAC_LEN {
            return Err(Error::resync("the cursor is truncated"));
        }
        let (body, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        // Constant-time comparison through the hmac crate's verify.
        let mut check = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .map_err(|e| Error::internal(format!("cursor key: {e}")))?;
        check.update(body);
        if check.verify_truncated_left(mac).is_err() {
            return Err(Error::resync("the cursor was not issued by this server or was altered"));
        }
        if body[0] != FORMAT_VERSION {
            return Err(Error::resync(format!("unknown cursor format version {}", body[0])));
        }
        let cursor: Cursor = serde_json::from_slice(&body[1..])
            .map_err(|_| Error::resync("the cursor's contents do not decode"))?;
        if &cursor.org != org {
            return Err(Error::resync("the cursor belongs to another org"));
        }
        if cursor.user != user {
            return Err(Error::resync("the cursor belongs to another user"));
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn org(s: &str) -> OrgId {
        OrgId::new(s).unwrap()
    }

    fn sample() -> Cursor {
        let mut c = Cursor::start(org("contoso"), "alice");
        c.schema_version = 3;
        c.positions.insert(PartitionKey::new("p/a").unwrap(), Seq(42));
        c
    }

    #[test]
    fn round_trips() {
        let codec = CursorCodec::new("secret");
        let text = codec.encode(&sample()).unwrap();
        assert_eq!(codec.decode(&text, &org("contoso"), "alice").unwrap(), sample());
    }

    #[test]
    fn rejects_garbage_truncation_and_tampering() {
        let codec = CursorCodec::new("secret");
        let text = codec.encode(&sample()).unwrap();
        let o = org("contoso");
        for bad in ["", "!!!", "AAAA", &text[..text.len() / 2], &text[..text.len() - 1]] {
            let e = codec.decode(bad, &o, "alice").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ResyncRequired, "{bad:?}");
        }
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[5] ^= 1;
        let e = codec.decode(&URL_SAFE_NO_PAD.encode(raw), &o, "alice").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
    }

    #[test]
    fn rejects_foreign_cursors() {
        let codec = CursorCodec::new("secret");
        let text = codec.encode(&sample()).unwrap();
        let e = codec.decode(&text, &org("fabrikam"), "alice").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
        let e = codec.decode(&text, &org("contoso"), "bob").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
        let other = CursorCodec::new("another deployment");
        let e = other.decode(&text, &org("contoso"), "alice").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResyncRequired);
    }

    #[test]
    fn oversized_is_a_limit() {
        let codec = CursorCodec::new("secret");
        let e = codec.decode(&"A".repeat(MAX_CURSOR_LEN + 1), &org("x"), "u").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    }
}
