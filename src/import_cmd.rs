//! `wsplice import nginx|apache FILE`: the library's importers (cargo feature `import`), or,
//! in a build without them (the gateway builds), a message saying where to run it.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImportFrom {
    /// nginx: server, listen, location, proxy_pass, upstream, uwsgi_pass, ssl_certificate ...
    Nginx,
    /// Apache httpd: VirtualHost, ProxyPass, balancer://, RewriteRule [P], SSLCertificateFile ...
    Apache,
}

/// Prints the equivalent TOML on stdout, or the error on stderr.
#[cfg(feature = "import")]
pub fn run(from: ImportFrom, file: &Path) -> ExitCode {
    use wsplice::import::{import, Kind};
    let kind = match from {
        ImportFrom::Nginx => Kind::Nginx,
        ImportFrom::Apache => Kind::Apache,
    };
    match import(kind, file) {
        Ok(toml) => {
            print!("{toml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsplice: import {}: error: {e}", kind.as_str());
            ExitCode::FAILURE
        }
    }
}

/// A build without the importers (the gateway builds) says so, and where to run one.
#[cfg(not(feature = "import"))]
pub fn run(from: ImportFrom, file: &Path) -> ExitCode {
    let name = match from {
        ImportFrom::Nginx => "nginx",
        ImportFrom::Apache => "apache",
    };
    eprintln!(
        "wsplice: import {name}: error: this binary is built without `wsplice import` (cargo feature `import`, left out of the gateway builds); run `wsplice import {name} {}` with a default build on another machine and copy the TOML it prints",
        file.display()
    );
    ExitCode::FAILURE
}
