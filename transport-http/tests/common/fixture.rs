//! A running router over a real store: two orgs (`contoso`, `fabrikam`)
//! with an `account` entity, profiles, rows in both the source and staging,
//! served on a loopback socket.

use std::sync::Arc;

use http::Method;
use serde_json::{Value as Json, json};
use sync_core::memory::{MemoryConnector, MemoryQueue, MemorySource, MemoryStagingStore};
use sync_core::org::{DATASYNC_QUEUE, PROVISIONING_QUEUE};
use sync_core::service::SyncConfig;
use sync_core::*;
use transport_http::{DevToken, HttpConfig, JwtAuthenticator, router};

use super::{Reply, send, serve};

/// The HS256 secret of the test tokens.
pub const SECRET: &[u8] = b"router tests: a shared secret of 32+ bytes";
/// The cursor secret of the test service.
pub const CURSOR_SECRET: &[u8] = b"router tests: cursor secret";

/// Which store and queue back the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryStagingStore` and `MemoryQueue`.
    Memory,
    /// `SqliteStagingStore` and `SqliteQueue` in a temporary directory.
    Sqlite,
}

pub fn col(s: &str) -> ColumnName {
    ColumnName::new(s).unwrap()
}

pub fn ent(s: &str) -> EntityName {
    EntityName::new(s).unwrap()
}

pub fn org(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

/// `account(accountid string key, name string, owner string, revenue integer)`.
pub fn account() -> EntityMetadata {
    EntityMetadata::new(
        ent("account"),
        col("accountid"),
        vec![
            Attribute::new(col("accountid"), AttributeType::String),
            Attribute::new(col("name"), AttributeType::String),
            Attribute::new(col("owner"), AttributeType::String),
            Attribute::new(col("revenue"), AttributeType::Integer),
        ],
    )
    .unwrap()
}

/// `sales` (role `rep`): my accounts, uploads allowed (merge).
/// `managers` (role `manager`): every account, download only.
pub fn profiles() -> Vec<Profile> {
    let mut mine = ProfileItem::new(ent("account"), "owner eq @user.id");
    mine.allow_upload = true;
    vec![
        Profile { name: ProfileName::new("sales").unwrap(), roles: ["rep".into()].into(), items: vec![mine] },
        Profile {
            name: ProfileName::new("managers").unwrap(),
            roles: ["manager".into()].into(),
            items: vec![ProfileItem::new(ent("account"), "")],
        },
    ]
}

/// The knobs of a fixture.
#[derive(Clone, Default)]
pub struct Options {
    pub http: HttpConfig,
    pub sync: SyncConfig,
    /// The authenticator; `None`: HS256 with [`SECRET`].
    pub auth: Option<Arc<dyn Authenticator>>,
}

/// A router serving two orgs over a loopback socket.
pub struct Fixture {
    pub url: String,
    pub service: SyncService,
    pub store: Arc<dyn StagingStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub contoso_source: Arc<MemorySource>,
    pub fabrikam_source: Arc<MemorySource>,
    pub backend: Backend,
    /// The SQLite backend's data directory, removed when the fixture drops.
    pub _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    pub async fn start(backend: Backend) -> Fixture {
        Fixture::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Fixture {
        let mut dir = None;
        let (store, queue): (Arc<dyn StagingStore>, Arc<dyn WorkQueue>) = match backend {
            Backend::Memory => (Arc::new(MemoryStagingStore::new()), Arc::new(MemoryQueue::new())),
            Backend::Sqlite => {
                let d = tempfile::tempdir().unwrap();
                let store = storage_sqlite::SqliteStagingStore::open(d.path().join("staging")).await.unwrap();
                let queue = storage_sqlite::SqliteQueue::open_in_dir(
                    d.path(),
                    storage_sqlite::QueueOptions::default(),
                )
                .await
                .unwrap();
                dir = Some(d);
                (Arc::new(store), Arc::new(queue))
            }
        };
        let connector = Arc::new(MemoryConnector::new());
        let contoso_source = Arc::new(MemorySource::with_entities([account()]).unwrap());
        let fabrikam_source = Arc::new(MemorySource::with_entities([account()]).unwrap());
        connector.register("contoso-crm", contoso_source.clone());
        connector.register("fabrikam-crm", fabrikam_source.clone());
        let service = SyncService::builder(store.clone(), queue.clone(), connector, CURSOR_SECRET)
            .config(options.sync.clone())
            .build();
        for (name, source) in [("contoso", "contoso-crm"), ("fabrikam", "fabrikam-crm")] {
            store.create_org(&OrgConfig::new(org(name), MemoryConnector::config(source))).await.unwrap();
            let staging = store.org(&org(name)).await.unwrap();
            staging.apply_schema(&account()).await.unwrap();
            for profile in profiles() {
                staging.put_profile(&profile).await.unwrap();
            }
        }
        let auth = match options.auth.clone() {
            Some(auth) => auth,
            None => Arc::new(JwtAuthenticator::hs256(SECRET.to_vec()).unwrap()),
        };
        let url = serve(router(service.clone(), auth, options.http.clone())).await;
        let fixture =
            Fixture { url, service, store, queue, contoso_source, fabrikam_source, backend, _dir: dir };
        fixture.add_account("contoso", "a1", "Alpha", "alice", 100).await;
        fixture.add_account("contoso", "a2", "Acme", "alice", 200).await;
        fixture.add_account("contoso", "b1", "Beta", "bob", 300).await;
        fixture.add_account("fabrikam", "f1", "Fabrikam One", "alice", 400).await;
        fixture
    }

    /// Writes a row to the org's source and stages it, as a sync run would.
    pub async fn add_account(&self, org_name: &str, id: &str, name: &str, owner: &str, revenue: i64) -> Row {
        let source = if org_name == "contoso" { &self.contoso_source } else { &self.fabrikam_source };
        let row = source
            .upsert_json(
                "account",
                json!({"accountid": id, "name": name, "owner": owner, "revenue": revenue}),
            )
            .unwrap();
        let page = ChangePage { upserts: vec![row.clone()], ..ChangePage::default() };
        self.store.org(&org(org_name)).await.unwrap().apply_changes(&ent("account"), page).await.unwrap();
        row
    }

    /// A signed token for `user` of `org_name` with `roles`.
    pub fn token(&self, user: &str, org_name: &str, roles: &[&str]) -> String {
        let mut token = DevToken::new(user, &org(org_name));
        for role in roles {
            token = token.with_role(*role);
        }
        token.sign_hs256(SECRET).unwrap()
    }

    pub fn alice(&self) -> String {
        self.token("alice", "contoso", &["rep"])
    }

    pub fn bob(&self) -> String {
        self.token("bob", "contoso", &["rep"])
    }

    /// An admin of contoso.
    pub fn admin(&self) -> String {
        self.token("ada", "contoso", &["sync-admin"])
    }

    /// An operator of the deployment.
    pub fn operator(&self) -> String {
        self.token("otto", "contoso", &["sync-operator"])
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Json>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        let bytes = match body {
            Some(body) => {
                headers.push(("content-type", "application/json"));
                serde_json::to_vec(body).unwrap()
            }
            None => Vec::new(),
        };
        send(method, &format!("{}{path}", self.url), &headers, bytes).await
    }

    /// Sends raw bytes with the given headers.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Reply {
        send(method, &format!("{}{path}", self.url), headers, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Json) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Pulls to the end as `token`'s user; returns the last response.
    pub async fn pull_all(&self, token: &str) -> Json {
        let mut body = json!({});
        loop {
            let reply = self.post("/v1/orgs/contoso/sync/pull", token, &body).await;
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
            let json = reply.json();
            if !json["has_more"].as_bool().unwrap() {
                return json;
            }
            body = json!({"cursor": json["cursor"]});
        }
    }

    /// Everything stored, as JSON: orgs, each org's status, profiles and
    /// rows, the directory entries of both orgs, and the queues' depths —
    /// to show that a refused request changed nothing.
    pub async fn snapshot(&self) -> Json {
        let mut out = serde_json::Map::new();
        let orgs = self.store.orgs().await.unwrap();
        out.insert("orgs".into(), serde_json::to_value(&orgs).unwrap());
        for config in &orgs {
            let staging = self.store.org(&config.id).await.unwrap();
            let mut rows = Vec::new();
            for meta in staging.schemas().await.unwrap() {
                for id in staging.row_ids(&meta.name, None, 10_000).await.unwrap() {
                    rows.push(serde_json::to_value(staging.row(&meta.name, &id).await.unwrap()).unwrap());
                }
            }
            out.insert(
                config.id.to_string(),
                json!({
                    "status": serde_json::to_value(staging.status().await.unwrap()).unwrap(),
                    "profiles": serde_json::to_value(staging.profiles().await.unwrap()).unwrap(),
                    "rows": rows,
                    "source_head": if config.id.as_str() == "contoso" { self.contoso_source.head() } else { self.fabrikam_source.head() },
                }),
            );
        }
        for name in ["contoso", "fabrikam", "elsewhere"] {
            out.insert(
                format!("location/{name}"),
                serde_json::to_value(self.store.org_location(&org(name)).await.unwrap()).unwrap(),
            );
        }
        for queue in [PROVISIONING_QUEUE, DATASYNC_QUEUE] {
            let depth = self.queue.depth(&QueueName::new(queue).unwrap()).await.unwrap();
            out.insert(format!("queue/{queue}"), serde_json::to_value(depth).unwrap());
        }
        Json::Object(out)
    }
}

/// Asserts a problem response: status, `type` suffix, content type, and a
/// detail that mentions `needle` (case-insensitive).
#[track_caller]
pub fn assert_problem(reply: &Reply, status: u16, kind: &str, needle: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status.as_u16(), status, "status; body: {body}");
    assert_eq!(reply.header("content-type"), Some("application/problem+json"), "content type; body: {body}");
    let json = reply.json();
    assert_eq!(
        json["type"].as_str().unwrap(),
        format!("https://offline-sync.dev/problems/{kind}"),
        "problem type; body: {body}"
    );
    assert_eq!(json["status"].as_u64(), Some(u64::from(status)), "problem status; body: {body}");
    let detail = json["detail"].as_str().unwrap_or_default().to_lowercase();
    assert!(detail.contains(&needle.to_lowercase()), "detail {detail:?} should mention {needle:?}");
}

/// Runs each listed `async fn(Backend)` test once per backend.
#[macro_export]
macro_rules! across_backends {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::fixture::Backend::Memory).await
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::fixture::Backend::Sqlite).await
                }
            )+
        }
    };
}
