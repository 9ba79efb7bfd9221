//! One process of the offline-sync server on SQL Server: workers and HTTP
//! endpoints over a staging store and work queue shared with every other
//! process of the deployment. `--help` explains every setting.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = sqlserver_server::Cli::parse();
    let settings = match sqlserver_server::Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sqlserver-server: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.server.print_config {
        let mut shown = settings.server.clone();
        shown.jwt_secret = "<set>".into();
        shown.cursor_secret = "<set>".into();
        match toml::to_string_pretty(&shown) {
            Ok(text) => {
                println!("# [server]\n{text}\n# [sqlserver]\n# {:?}", settings.sqlserver);
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("sqlserver-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match sqlserver_server::run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sqlserver-server stopped with an error");
            eprintln!("sqlserver-server: {e}");
            ExitCode::FAILURE
        }
    }
}
