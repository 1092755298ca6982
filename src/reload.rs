//! SIGHUP: the configuration file read again and applied, its backend names looked up first.

use std::path::PathBuf;

use crate::names::Names;
use crate::{load, say, Args, Running};
use wsplice::config::Config;
use wsplice::driver;

/// A reload that changes nothing: why, on stderr and to the supervisor.
fn failed(path: &std::path::Path, e: &dyn std::fmt::Display) {
    eprintln!(
        "wsplice: reload of {} failed, still serving the previous configuration: {e}",
        path.display()
    );
    say("reload failed");
}

/// SIGHUP: reads the file again (or, started from flags, the certificate files) and applies it
/// to new connections. A bad file changes nothing.
pub(crate) fn reload(
    running: &mut dyn Running,
    args: &Args,
    cfg: &mut Config,
    text: &mut Option<String>,
    names: &mut Names,
) {
    let path = match &args.config {
        Some(path) => path.clone(),
        None if !args.tls_listen.is_empty() => PathBuf::from("the command line's certificates"),
        None => {
            eprintln!("wsplice: SIGHUP: started without --config, nothing to reload");
            return;
        }
    };
    let (mut new, new_text) = match load(args) {
        Ok(x) => x,
        Err(e) => return failed(&path, &e),
    };
    if new.workers.is_some() && new.workers != cfg.workers {
        eprintln!(
            "wsplice: reload: `workers` changes need a restart; keeping {}",
            running.workers()
        );
    }
    if new.admin != cfg.admin {
        eprintln!("wsplice: reload: `admin` changes need a restart");
    }
    if new.worker_model != cfg.worker_model {
        eprintln!("wsplice: reload: `worker_model` changes need a restart");
    }
    if new.dns != cfg.dns && names.running() {
        eprintln!("wsplice: reload: [dns] changes need a restart; the resolver keeps the previous settings");
    }
    new.workers = Some(running.workers());
    new.worker_model = cfg.worker_model;
    let table = match names.update(&new) {
        Ok(t) => t,
        Err(e) => return failed(&path, &e),
    };
    match running.reload(&new, new_text.clone(), &table) {
        Ok(listen) => {
            for (want, bound) in listen {
                let tls = if new.tls.listen.contains(&want) {
                    " tls"
                } else {
                    ""
                };
                say(&format!(
                    "listen {bound} workers={}{tls}",
                    running.workers()
                ));
            }
            match running.tls_summary(&new) {
                Ok(lines) => lines.iter().for_each(|l| say(l)),
                Err(e) => eprintln!("wsplice: reload: {e}"),
            }
            eprintln!(
                "wsplice: reloaded {}: {} routes",
                path.display(),
                new.routes.len()
            );
            driver::status::name_routes(&new.routes);
            say("reloaded");
            names.table = table;
            *cfg = new;
            *text = new_text;
        }
        Err(e) => failed(&path, &e),
    }
}
