//! `issuelock list` (`kubectl issuelock list`): the locks of a namespace, printed as
//! `kubectl get` prints objects.

use super::{Output, kube_client};
use crate::crd::{HEARTBEAT_LABEL, IssueLock};
use crate::error::{Error, classify};
use crate::table::{Columns, Heartbeats};
use clap::{Args, ValueEnum};
use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Resource, ResourceExt};
use std::io::Write;
use std::process::ExitCode;

/// The arguments of `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Namespace to list (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', env = "ISSUELOCK_NAMESPACE")]
    pub namespace: Option<String>,
    /// List locks in every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Output format (`json` and `yaml` as `kubectl get -o json|yaml` print several
    /// objects; `kubectl apply -f` takes them back).
    #[arg(long, short = 'o', value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
    /// Only locks whose labels match this selector (e.g.
    /// `issuelock.dev/holder-lease=NAME`; `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Print the table without its header.
    #[arg(long)]
    pub no_headers: bool,
    /// After listing, watch for changes and print each changed or deleted lock as it
    /// happens (until interrupted).
    #[arg(long, short = 'w')]
    pub watch: bool,
}

/// Output formats of `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    /// An aligned table, as `kubectl get` prints.
    Table,
    /// The table with the lock object's name, holder Lease, user and max hold time.
    Wide,
    /// `issuelock.issuelock.dev/NAME`, one per line.
    Name,
    /// A `v1` `List` in JSON.
    Json,
    /// A `v1` `List` in YAML.
    Yaml,
}

/// Lists (and with `--watch`, watches) the locks.
pub(super) async fn list(args: ListArgs) -> Result<ExitCode, Error> {
    let ListArgs {
        namespace,
        all_namespaces,
        output,
        selector,
        no_headers,
        watch,
    } = args;
    let client = kube_client().await?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let (api, leases): (Api<IssueLock>, Api<Lease>) = if all_namespaces {
        (Api::all(client.clone()), Api::all(client))
    } else {
        (
            Api::namespaced(client.clone(), &ns),
            Api::namespaced(client, &ns),
        )
    };
    let mut params = ListParams::default();
    if let Some(selector) = &selector {
        params = params.labels(selector);
    }
    let list = api
        .list(&params)
        .await
        .map_err(|e| classify("list locks", &ns, e))?;
    let columns = Columns {
        namespace: all_namespaces,
        wide: output == ListOutput::Wide,
    };
    let mut widths = vec![];
    // The header goes with the first row (of the list or, when it is empty, of the watch).
    let mut header = (!no_headers).then(|| columns.header());
    let mut out = std::io::stdout().lock();
    match output {
        ListOutput::Table | ListOutput::Wide => {
            // The HEARTBEAT column comes from the holders' Leases (the controller does not
            // rewrite lock status as heartbeats arrive); without the right to list them it
            // reads <unknown>.
            let heartbeats = leases
                .list(&ListParams::default().labels(&format!("{HEARTBEAT_LABEL}=true")))
                .await
                .ok()
                .map(|list| list.items.iter().filter_map(renewed).collect());
            let now = Timestamp::now();
            let mut rows = vec![];
            if !list.items.is_empty() {
                rows.extend(header.take());
            }
            rows.extend(list.items.iter().map(|l| columns.row(l, &heartbeats, now)));
            let _ = write!(out, "{}", crate::table::align(&rows, &mut widths));
        }
        ListOutput::Name if !list.items.is_empty() || watch => {
            for lock in &list.items {
                let _ = writeln!(out, "{}", object_name(lock));
            }
        }
        ListOutput::Json | ListOutput::Yaml if !watch => {
            let list = as_list(&list.items);
            let _ = match output {
                ListOutput::Json => writeln!(out, "{}", to_json(&list)),
                _ => write!(out, "{}", to_yaml(&list)),
            };
        }
        ListOutput::Json | ListOutput::Yaml => {
            for lock in &list.items {
                let _ = write!(out, "{}", watched_object(output, lock));
            }
        }
        ListOutput::Name => {}
    }
    if list.items.is_empty() && !watch && !matches!(output, ListOutput::Json | ListOutput::Yaml) {
        if all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {ns} namespace.");
        }
    }
    let _ = out.flush();
    drop(out);
    if !watch {
        return Ok(ExitCode::SUCCESS);
    }
    let version = list.metadata.resource_version.unwrap_or_default();
    let table = (columns, widths, header);
    watch_locks(api, leases, selector, version, output, table, &ns).await
}

/// Prints each change of the locks after `version`, as `kubectl get --watch` does: a row
/// (or a name, or an object) per added, modified or deleted lock. `table`: the columns,
/// the widths printed so far, and the header if not printed yet.
async fn watch_locks(
    api: Api<IssueLock>,
    leases: Api<Lease>,
    selector: Option<String>,
    mut version: String,
    output: ListOutput,
    table: (Columns, Vec<usize>, Option<Vec<String>>),
    ns: &str,
) -> Result<ExitCode, Error> {
    let (columns, mut widths, mut header) = table;
    let mut params = WatchParams::default().timeout(290).disable_bookmarks();
    if let Some(selector) = &selector {
        params = params.labels(selector);
    }
    loop {
        let events = api
            .watch(&params, &version)
            .await
            .map_err(|e| classify("watch locks", ns, e))?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events
            .try_next()
            .await
            .map_err(|e| classify("watch locks", ns, e))?
        {
            let lock = match event {
                WatchEvent::Added(lock)
                | WatchEvent::Modified(lock)
                | WatchEvent::Deleted(lock) => lock,
                WatchEvent::Bookmark(b) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(status) => {
                    return Err(classify("watch locks", ns, kube::Error::Api(status)));
                }
            };
            version = lock.resource_version().unwrap_or(version);
            let text = match output {
                ListOutput::Table | ListOutput::Wide => {
                    let heartbeats = lease_heartbeat(&leases, &lock).await;
                    let mut rows: Vec<_> = header.take().into_iter().collect();
                    rows.push(columns.row(&lock, &heartbeats, Timestamp::now()));
                    crate::table::align(&rows, &mut widths)
                }
                ListOutput::Name => format!("{}\n", object_name(&lock)),
                ListOutput::Json | ListOutput::Yaml => watched_object(output, &lock),
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}

/// When the holder Lease of `lock` was last renewed (read now; `None` when it cannot be read).
async fn lease_heartbeat(leases: &Api<Lease>, lock: &IssueLock) -> Heartbeats {
    let ns = lock.namespace().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(leases.clone().into_client(), &ns);
    let lease = api.get_opt(&lock.spec.holder.lease).await.ok()?;
    Some(lease.iter().filter_map(renewed).collect())
}

/// A heartbeat Lease's key and last renewal.
fn renewed(lease: &Lease) -> Option<((String, String), Timestamp)> {
    let renewed = lease.spec.as_ref()?.renew_time.as_ref()?.0;
    Some(((lease.namespace()?, lease.metadata.name.clone()?), renewed))
}

/// `issuelock.issuelock.dev/NAME`, as `kubectl get -o name` prints it.
fn object_name(lock: &IssueLock) -> String {
    format!(
        "{}.{}/{}",
        IssueLock::kind(&()).to_lowercase(),
        IssueLock::group(&()),
        lock.name_any()
    )
}

/// A lock as `kubectl get -o json|yaml` prints it: without `managedFields`.
fn shown(lock: &IssueLock) -> IssueLock {
    let mut lock = lock.clone();
    lock.metadata.managed_fields = None;
    lock
}

/// The locks as a `List`, as `kubectl get -o json|yaml` prints several objects.
fn as_list(locks: &[IssueLock]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": locks.iter().map(shown).collect::<Vec<_>>(),
    })
}

/// One object of a watch in JSON (one document per object) or YAML (`---` separated).
fn watched_object(output: ListOutput, lock: &IssueLock) -> String {
    match output {
        ListOutput::Json => format!("{}\n", to_json(&shown(lock))),
        _ => format!("---\n{}", to_yaml(&shown(lock))),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("serializes")
}

fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("serializes")
}

/// Prints `value` as JSON or YAML, or `table()` for humans.
pub(super) fn print_as<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce() -> String,
) {
    match output {
        Output::Json => println!("{}", to_json(value)),
        Output::Yaml => print!("{}", to_yaml(value)),
        Output::Table => print!("{}", table()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Holder, IssueLockSpec};

    fn lock(name: &str) -> IssueLock {
        let mut lock = IssueLock::new(
            name,
            IssueLockSpec {
                issue: "org/repo#1".into(),
                holder: Holder {
                    identity: "me".into(),
                    pod: None,
                    lease: "lease".into(),
                    user: None,
                },
                max_hold_seconds: None,
                signature: None,
            },
        );
        lock.metadata.managed_fields = Some(vec![Default::default()]);
        lock
    }

    #[test]
    fn names_and_lists_as_kubectl_does() {
        assert_eq!(object_name(&lock("a-1")), "issuelock.issuelock.dev/a-1");
        let list = as_list(&[lock("a-1")]);
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"][0]["kind"], "IssueLock");
        assert_eq!(list["items"][0]["apiVersion"], "issuelock.dev/v1alpha1");
        assert!(list["items"][0]["metadata"].get("managedFields").is_none());
        let yaml = to_yaml(&list);
        assert!(yaml.starts_with("apiVersion: v1\n"), "{yaml}");
    }
}
