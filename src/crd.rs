//! The `crd` subcommand: the CustomResourceDefinition as YAML.

use kube::CustomResourceExt;

use crate::api::ServiceNowConnection;

/// The CRD of `ServiceNowConnection` as a YAML document (what `crds/` holds).
pub fn yaml() -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&ServiceNowConnection::crd())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_crd_is_what_the_binary_prints() {
        let committed = include_str!("../crds/servicenowconnection.yaml");
        assert!(
            committed == super::yaml().unwrap(),
            "crds/servicenowconnection.yaml is stale: run `make crds` and commit the result"
        );
    }
}
