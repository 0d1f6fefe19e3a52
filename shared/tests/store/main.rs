//! The catalog store contract: every test runs against both stores, a
//! SQLite file and a real PostgreSQL server started for the test
//! (`testkit::PostgresServer`), and expects the same behaviour.
//! Each test is a function over a [`Backend`]; `contract!` makes a
//! `sqlite` and a `postgres` test of it.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod contract;
mod helpers;
mod races;
mod tls;

/// Generates `mod name { sqlite(), postgres() }` for each contract test.
#[macro_export]
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )*
    };
}
