//! Pure: whether a Secret is the operator's to write or delete. The operator writes, patches and
//! deletes only the Secrets it labelled as its own for one connection —
//! [`MANAGED_BY_LABEL`]`=`[`MANAGER`] and [`CONNECTION_UID_LABEL`]`=<the connection's uid>` — and
//! leaves any other Secret that sits on a name it would use untouched ([`NotOwned`]).
//!
//! Upgrade path: versions before these labels marked their Secrets with [`MANAGED_BY_LABEL`]
//! alone and a controller owner reference to the connection. Both together prove the Secret is
//! this connection's ([`Ownership::Legacy`]); the reconcile then adds [`CONNECTION_UID_LABEL`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label naming the tool that manages a Secret.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on the operator's Secrets.
pub const MANAGER: &str = "servicenow-operator";
/// The label holding the uid of the connection a Secret belongs to.
pub const CONNECTION_UID_LABEL: &str = "neoagent.io/connection-uid";

/// Whose a Secret is, as seen by the connection with a given uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Labelled as this connection's.
    Owned,
    /// Written by an older version for this connection (managed-by label and a controller
    /// reference to it, no uid label yet): the connection's, to be labelled.
    Legacy,
    /// Not the operator's, or another connection's: what is missing.
    Foreign(&'static str),
}

/// Which of a connection's Secrets was found not to be its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnedSecret {
    /// The token Secret (`spec.tokenSecretRef`, default `<name>-token`).
    Token,
    /// The webhook signing key Secret (`<name>-webhook`).
    Webhook,
}

/// A Secret the operator would write or delete exists but is not this connection's: it is left
/// untouched. Names the Secret and the missing label, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Secret {secret:?} exists but is not this connection's: {problem}; the operator leaves it untouched and writes only Secrets labelled {MANAGED_BY_LABEL}={MANAGER} and {CONNECTION_UID_LABEL}=<the connection's uid>"
)]
pub struct NotOwned {
    /// Which Secret of the connection.
    pub role: OwnedSecret,
    /// The Secret's name.
    pub secret: String,
    /// What is missing.
    pub problem: &'static str,
}

/// Whose the Secret with `meta` is, for the connection whose uid is `uid`.
pub fn ownership(meta: &ObjectMeta, uid: &str) -> Ownership {
    let label = |key: &str| {
        meta.labels
            .as_ref()
            .and_then(|labels| labels.get(key))
            .map(String::as_str)
    };
    if label(MANAGED_BY_LABEL) != Some(MANAGER) {
        return Ownership::Foreign("it lacks the label app.kubernetes.io/managed-by=servicenow-operator");
    }
    match label(CONNECTION_UID_LABEL) {
        Some(labelled) if labelled == uid => Ownership::Owned,
        Some(_) => Ownership::Foreign("its label neoagent.io/connection-uid names another connection"),
        None if controlled_by(meta, uid) => Ownership::Legacy,
        None => Ownership::Foreign(
            "it lacks the label neoagent.io/connection-uid and no controller reference names this connection",
        ),
    }
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|reference| reference.controller == Some(true) && reference.uid == uid)
}

/// The labels that mark a Secret as the connection `uid`'s.
pub fn labels(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
        (CONNECTION_UID_LABEL.to_owned(), uid.to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(labels: &[(&str, &str)], controller_uid: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            owner_references: controller_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "neoagent.io/v1alpha1".into(),
                    kind: "ServiceNowConnection".into(),
                    name: "acme".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    const MANAGED: (&str, &str) = (MANAGED_BY_LABEL, MANAGER);

    #[test]
    fn only_both_labels_make_a_secret_the_connections() {
        assert_eq!(
            ownership(&meta(&[MANAGED, (CONNECTION_UID_LABEL, "u1")], None), "u1"),
            Ownership::Owned
        );
        let labelled = ObjectMeta {
            labels: Some(labels("u1")),
            ..ObjectMeta::default()
        };
        assert_eq!(ownership(&labelled, "u1"), Ownership::Owned);
        assert!(matches!(
            ownership(&meta(&[MANAGED, (CONNECTION_UID_LABEL, "u2")], Some("u1")), "u1"),
            Ownership::Foreign(problem) if problem.contains("another connection")
        ));
        assert!(matches!(
            ownership(&meta(&[(CONNECTION_UID_LABEL, "u1")], Some("u1")), "u1"),
            Ownership::Foreign(problem) if problem.contains(MANAGED_BY_LABEL)
        ));
        assert!(matches!(
            ownership(&meta(&[(MANAGED_BY_LABEL, "helm")], None), "u1"),
            Ownership::Foreign(_)
        ));
        assert!(matches!(ownership(&ObjectMeta::default(), "u1"), Ownership::Foreign(_)));
    }

    #[test]
    fn an_older_versions_secret_is_the_connections_only_with_its_controller_reference() {
        assert_eq!(ownership(&meta(&[MANAGED], Some("u1")), "u1"), Ownership::Legacy);
        assert!(matches!(
            ownership(&meta(&[MANAGED], Some("u2")), "u1"),
            Ownership::Foreign(_)
        ));
        assert!(matches!(
            ownership(&meta(&[MANAGED], None), "u1"),
            Ownership::Foreign(_)
        ));
        let mut not_controller = meta(&[MANAGED], Some("u1"));
        if let Some(reference) = not_controller.owner_references.as_mut().and_then(|r| r.first_mut()) {
            reference.controller = Some(false);
        }
        assert!(matches!(ownership(&not_controller, "u1"), Ownership::Foreign(_)));
    }

    #[test]
    fn the_refusal_names_the_secret_and_the_labels() {
        let error = NotOwned {
            role: OwnedSecret::Token,
            secret: "acme-token".into(),
            problem: "it lacks the label app.kubernetes.io/managed-by=servicenow-operator",
        };
        let message = error.to_string();
        assert!(message.contains("\"acme-token\""), "{message}");
        assert!(
            message.contains("neoagent.io/connection-uid=<the connection's uid>"),
            "{message}"
        );
    }
}
