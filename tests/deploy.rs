//! The deployment files in deploy/: the wsplice configuration embedded in the Kubernetes
//! ConfigMap passes `wsplice --check`, and the Deployment agrees with it (readiness on the
//! admin listener's /healthz, a termination grace that covers preStop plus the drain timeout).

#[allow(unused_macros)]
#[macro_use]
mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The block scalar under `key: |` (the lines indented deeper than the key), de-indented.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let start = lines
        .by_ref()
        .find(|l| l.trim_start() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let key_indent = indent_of(start);
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent_of(l) > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent_of(l))
        .min()
        .expect("an empty block");
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The first `key: value` at any depth, as written.
fn scalar<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .map(|v| v.split('#').next().unwrap_or("").trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no `{key}:`"))
}

fn check(toml: &str) -> (bool, String) {
    let file = TempFile::new("toml", toml);
    let out = wsplice_command()
        .arg("--check")
        .arg("--config")
        .arg(file.path())
        .output()
        .expect("run wsplice --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn configmap_config_passes_check() {
    let toml = block(&read("deploy/k8s/configmap.yaml"), "wsplice.toml");
    assert!(toml.contains("[[route]]"), "extracted:\n{toml}");
    let (ok, out) = check(&toml);
    assert!(
        ok && out.contains("is ok"),
        "wsplice --check failed:\n{out}\n---\n{toml}"
    );
    // The extraction is what --check saw: a broken line in it fails the check.
    let (ok, out) = check(&toml.replace("drain = \"25s\"", "drain = \"25 parsecs\""));
    assert!(!ok && out.contains("timeouts.drain"), "{out}");
}

#[test]
fn deployment_matches_the_config() {
    let toml = block(&read("deploy/k8s/configmap.yaml"), "wsplice.toml");
    let cfg = wsplice::config::Config::from_toml_str(&toml, "configmap.yaml").expect("valid");
    let deploy = read("deploy/k8s/deployment.yaml");
    // Readiness and liveness ask the admin listener's /healthz, on the port the config names.
    let admin = cfg.admin.expect("the config has an admin listener");
    assert_eq!(scalar(&deploy, "path"), "/healthz");
    assert!(
        deploy.contains(&format!(
            "name: admin\n              containerPort: {}",
            admin.port()
        )),
        "the admin containerPort is not {}",
        admin.port()
    );
    let listen = cfg.listen[0].port();
    assert!(deploy.contains(&format!("containerPort: {listen}")));
    // The grace period covers preStop and the whole drain.
    let grace: u64 = scalar(&deploy, "terminationGracePeriodSeconds")
        .parse()
        .expect("a number");
    let pre_stop: u64 = scalar(&deploy, "seconds").parse().expect("a number");
    let drain = cfg.timeouts.drain;
    assert!(
        Duration::from_secs(grace) > Duration::from_secs(pre_stop) + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + drain {drain:?}"
    );
    // The ConfigMap the pods mount is the one checked above.
    assert!(deploy.contains("name: wsplice-config"));
    assert_eq!(
        scalar(&read("deploy/k8s/configmap.yaml"), "name"),
        "wsplice-config"
    );
    // The route's backend name is the headless Service's.
    let headless = read("deploy/k8s/headless-service.yaml");
    assert_eq!(scalar(&headless, "clusterIP"), "None");
    let svc = scalar(&headless, "name");
    let names = cfg.backend_names();
    assert!(
        names
            .iter()
            .any(|n| n.to_string().starts_with(&format!("{svc}."))),
        "no backend of the config names the headless Service {svc}: {names:?}"
    );
}
