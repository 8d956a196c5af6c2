//! PostgreSQL databases made for one test each, dropped afterwards.

use sqlx::{Connection, Executor, PgConnection};

/// The backend integration tests run against: `CAIRN_TEST_BACKEND=postgres`
/// gives every `Server` its own database on `CAIRN_TEST_DATABASE_URL`;
/// anything else (the default) the embedded SQLite.
pub fn postgres_backend() -> bool {
    std::env::var("CAIRN_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// `CAIRN_TEST_DATABASE_URL`, which must be set for the PostgreSQL backend.
pub fn admin_url() -> String {
    std::env::var("CAIRN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "CAIRN_TEST_BACKEND=postgres needs CAIRN_TEST_DATABASE_URL \
             (start one with `url=$(scripts/pg-cluster start)`)"
        )
    })
}

/// A PostgreSQL database made for one test; dropped when this is.
pub struct TestDb {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create(admin_url: &str) -> TestDb {
        let name = format!(
            "cairn_test_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let mut url = url::Url::parse(admin_url)
            .unwrap_or_else(|e| panic!("CAIRN_TEST_DATABASE_URL {admin_url:?}: {e}"));
        url.set_path(&format!("/{name}"));
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to CAIRN_TEST_DATABASE_URL {admin_url}: {e}"));
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        TestDb {
            admin_url: admin_url.to_owned(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDb {
    /// Drops the database on a thread of its own with its own runtime: Drop
    /// cannot await, and the test's runtime may be unwinding from a panic.
    /// FORCE ends sessions a store's pool may still hold.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

impl TestDb {
    /// Make the database unreachable for the server (refuse new sessions,
    /// end the open ones) or reachable again.
    pub async fn block_connections(&self, block: bool) {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.admin_url));
        admin
            .execute(
                format!(
                    "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {block_not}",
                    self.name,
                    block_not = !block
                )
                .as_str(),
            )
            .await
            .expect("ALTER DATABASE");
        if block {
            admin
                .execute(
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                        self.name
                    )
                    .as_str(),
                )
                .await
                .expect("terminate sessions");
        }
        let _ = admin.close().await;
    }

    /// `create` from synchronous code (the process-control harness).
    pub fn create_blocking(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(TestDb::create(&admin_url))
        })
        .join()
        .expect("creating a test database panicked")
    }
}

// ------------------------------------------- store contract fixtures ---

/// One backend's database for one test; `open` makes stores on it (one per
/// simulated instance). Stores must be dropped before the fixture, which
/// locals declared after it are.
pub struct Fixture {
    pub url: String,
    _sqlite_dir: Option<tempfile::TempDir>,
    _pg_db: Option<TestDb>,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
        Fixture {
            url,
            _sqlite_dir: Some(dir),
            _pg_db: None,
        }
    }

    /// None when PostgreSQL is skipped on purpose.
    pub async fn postgres() -> Option<Fixture> {
        let Ok(admin_url) = std::env::var("CAIRN_TEST_DATABASE_URL") else {
            if std::env::var("CAIRN_TEST_SKIP_POSTGRES").as_deref() == Ok("1") {
                eprintln!("CAIRN_TEST_SKIP_POSTGRES=1: skipping the PostgreSQL half");
                return None;
            }
            panic!(
                "CAIRN_TEST_DATABASE_URL is not set, so the PostgreSQL store cannot be tested. \
                 Start a server with `url=$(scripts/pg-cluster start)` and run with \
                 CAIRN_TEST_DATABASE_URL=$url (a user that may CREATE DATABASE), or set \
                 CAIRN_TEST_SKIP_POSTGRES=1 to skip these tests deliberately."
            );
        };
        let db = TestDb::create(&admin_url).await;
        Some(Fixture {
            url: db.url.clone(),
            _sqlite_dir: None,
            _pg_db: Some(db),
        })
    }

    /// A store on this fixture's database, as one instance would open it.
    pub async fn open(&self, max_connections: u32) -> cairn::sa::DynStore {
        cairn::sa::open(&self.url, max_connections)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e:#}", self.url))
    }
}

/// Each behaviour `async fn name(f: &Fixture)` of the invoking file becomes
/// `sqlite::<name>` and `postgres::<name>`.
#[allow(unused_macros)]
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::Fixture::sqlite().await;
                    super::$name(&f).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(f) = super::Fixture::postgres().await else { return };
                    super::$name(&f).await;
                }
            )*
        }
    };
}
pub(crate) use contract_tests;
