//! What the fuzz targets check, as plain functions: they panic on a
//! property violation, which is what libFuzzer reports and what the seed
//! replay test fails on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use sync_core::protocol::{PullRequest, PushRequest};
use sync_core::{Cursor, CursorCodec, ErrorKind, OrgConfig, OrgId, PartitionKey, Profile, Seq};
use transport_http::decode_request_body;

/// Decodes `data` as every request body the router accepts. Decoding never
/// panics; a failure is `InvalidInput` with a message; whatever decodes
/// encodes and decodes back to itself.
pub fn request_decoding(data: &[u8]) {
    check_body::<PullRequest>(data);
    check_body::<PushRequest>(data);
    check_body::<OrgConfig>(data);
    check_body::<Profile>(data);
}

fn check_body<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    match decode_request_body::<T>(data) {
        Ok(value) => {
            let encoded = serde_json::to_vec(&value).expect("a decoded request encodes");
            let again: T = decode_request_body(&encoded)
                .unwrap_or_else(|e| panic!("a re-encoded request does not decode: {e}: {value:?}"));
            assert_eq!(again, value, "the request changed on a round trip");
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
}

const SECRET: &[u8] = b"fuzz: the cursor secret";

/// The cursor codec: arbitrary text never panics and, without the secret,
/// never verifies; a cursor built from the input round-trips; any one
/// character changed in its text is refused (or decodes to the same
/// cursor); it never verifies for another org or user.
pub fn cursor_codec(data: &[u8]) {
    let codec = CursorCodec::new(SECRET);
    let org = OrgId::new("contoso").unwrap();
    let text = String::from_utf8_lossy(data);
    match codec.decode(&text, &org, "alice") {
        Ok(cursor) => panic!("arbitrary input verified as a cursor: {cursor:?}"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ResyncRequired | ErrorKind::LimitExceeded),
            "unexpected error kind: {e}"
        ),
    }

    let Some(cursor) = cursor_from(data, &org) else { return };
    let encoded = codec.encode(&cursor).unwrap();
    assert_eq!(codec.decode(&encoded, &org, "alice").unwrap(), cursor, "round trip");
    assert_eq!(
        codec.decode(&encoded, &OrgId::new("fabrikam").unwrap(), "alice").unwrap_err().kind(),
        ErrorKind::ResyncRequired
    );
    assert_eq!(codec.decode(&encoded, &org, "mallory").unwrap_err().kind(), ErrorKind::ResyncRequired);
    assert_eq!(
        CursorCodec::new(b"another deployment").decode(&encoded, &org, "alice").unwrap_err().kind(),
        ErrorKind::ResyncRequired
    );

    let mut chars: Vec<char> = encoded.chars().collect();
    let at = usize::from(data[0]) * 7 % chars.len();
    chars[at] = if chars[at] == 'x' { 'y' } else { 'x' };
    let tampered: String = chars.into_iter().collect();
    match codec.decode(&tampered, &org, "alice") {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ResyncRequired, "{e}"),
        Ok(decoded) => assert_eq!(decoded, cursor, "a tampered cursor decoded to other positions"),
    }
}

/// A cursor whose schema version and positions come from the input.
fn cursor_from(data: &[u8], org: &OrgId) -> Option<Cursor> {
    if data.len() < 9 {
        return None;
    }
    let word = |chunk: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        u64::from_le_bytes(bytes)
    };
    let mut positions = BTreeMap::new();
    for (i, chunk) in data[9..].chunks(8).take(64).enumerate() {
        let key = PartitionKey::new(format!("sales/account{{\"user.id\":\"u{i}\"}}")).ok()?;
        positions.insert(key, Seq(word(chunk)));
    }
    let mut cursor = Cursor::start(org.clone(), "alice");
    cursor.schema_version = word(&data[1..9]);
    cursor.incarnation = format!("{:02x}", data[0]);
    cursor.positions = positions;
    Some(cursor)
}
