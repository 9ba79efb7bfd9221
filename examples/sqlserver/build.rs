//! Compiles the end-to-end test against a real SQL Server in only when
//! `MSSQL_TEST_URL` names one (cfg `mssql_test_server`); otherwise the test
//! reports itself ignored with the reason.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mssql_test_server)");
    println!("cargo::rerun-if-env-changed=MSSQL_TEST_URL");
    if std::env::var("MSSQL_TEST_URL").is_ok_and(|v| !v.trim().is_empty()) {
        println!("cargo::rustc-cfg=mssql_test_server");
    }
}
