//! The producer binary: parse, validate, then hand over to the library. Nothing touches AWS
//! before the configuration is known to be good.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::process::ExitCode;

use clap::Parser;
use fleet_shared::config::{EXIT_USAGE, Environment};
use producer::cli::{Cli, usage_error_exit_code};
use producer::settings::Settings;

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit(usage_error_exit_code(&e));
        }
    };
    let settings = match Settings::from_cli(&cli, &Environment) {
        Ok(s) => s,
        Err(e) => {
            eprint!("producer: {e}");
            return exit(EXIT_USAGE);
        }
    };
    fleet_shared::telemetry::init(settings.log_format, &settings.log_filter);
    exit(producer::run(settings, &mut std::io::stdout()).await)
}
