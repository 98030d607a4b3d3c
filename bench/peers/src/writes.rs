//! API writes counted by the API server itself: `apiserver_request_total` of its
//! `/metrics`, write verbs only, by resource.

use std::collections::BTreeMap;

const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Write requests so far, by `resource[/subresource]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Writes(pub BTreeMap<String, f64>);

impl Writes {
    /// Reads the API server's counters.
    pub async fn scrape(client: &kube::Client) -> anyhow::Result<Self> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        Ok(Self::parse(&client.request_text(request).await?))
    }

    fn parse(text: &str) -> Self {
        let mut by_resource = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                    .map(|v| v.trim_end_matches('"'))
                    .unwrap_or("")
            };
            if !WRITE_VERBS.contains(&label("verb")) {
                continue;
            }
            let key = match label("subresource") {
                "" => label("resource").to_owned(),
                sub => format!("{}/{sub}", label("resource")),
            };
            *by_resource.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
        }
        Self(by_resource)
    }

    /// What was written between `earlier` and `self`.
    pub fn since(&self, earlier: &Writes) -> Writes {
        Writes(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    pub fn get(&self, resource: &str) -> f64 {
        self.0.get(resource).copied().unwrap_or(0.0)
    }

    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_write_verbs_by_resource() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="GET",version="v1"} 100
apiserver_request_total{code="200",component="apiserver",dry_run="",group="issuelock.dev",resource="issuelocks",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 3
"#;
        let w = Writes::parse(text);
        assert_eq!(w.get("leases"), 9.0);
        assert_eq!(w.get("issuelocks/status"), 3.0);
        assert_eq!(w.total(), 12.0);
        assert_eq!(w.since(&Writes::default()), w);
    }
}
