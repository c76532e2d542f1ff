//! Imports of the provisioned document (`config import`, `PUT
//! /api/v1/config`), made safe for a careless hand: a document cut short
//! or empty is refused, every import can be shown before it is made
//! (added, changed and removed, line by line), and one that would remove
//! every endpoint or every federation entry needs the admin to say so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, Provisioned};

/// How an import may go.
#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ImportOptions {
    /// Only say what would change; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Allow an import that removes every endpoint, or every allowed and
    /// blocked domain and provider.
    #[serde(default)]
    pub remove_all: bool,
}

/// What an import changes, for people to read before it is in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportPlan {
    /// What the document brings that is not in force.
    pub added: Vec<String>,
    /// What it changes, as `what: old -> new`.
    pub changed: Vec<String>,
    /// What in force it leaves out.
    pub removed: Vec<String>,
}

/// Why an import was refused before anything was changed.
#[derive(Debug, thiserror::Error)]
pub enum ImportRefusal {
    /// The document fails the checks a configuration file must pass.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The document is empty or cut short.
    #[error("{origin}: the document has no [policy] section, which every export has: it is empty or cut short; nothing was changed. Take the node's document with `porchlight config export`, edit it, and import that")]
    Incomplete {
        /// Where the document came from.
        origin: String,
    },
    /// The import would leave the node with nothing of a kind it has.
    #[error("the import removes {what}; nothing was changed. If that is what you want, import again with --remove-all (API: ?remove_all=true); --dry-run shows every change")]
    RemovesEverything {
        /// What would be gone.
        what: String,
    },
}

impl ImportPlan {
    /// Whether the import changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }

    /// The differences between the document in force and the next one.
    pub fn between(current: &Provisioned, next: &Provisioned) -> ImportPlan {
        let (before, after) = (entries(current), entries(next));
        let mut plan = ImportPlan::default();
        for (key, value) in &after {
            match before.get(key) {
                None => plan.added.push(key.clone()),
                Some(old) if old != value => {
                    plan.changed.push(match (scalar(old), scalar(value)) {
                        (true, true) => format!("{key}: {old} -> {value}"),
                        _ => key.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        plan.removed = before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect();
        plan
    }

    /// One line per change, each prefixed with how it changes.
    pub fn lines(&self, added: &str, changed: &str, removed: &str) -> Vec<String> {
        let each = |prefix: &str, list: &[String]| {
            list.iter()
                .map(|l| format!("{prefix} {l}"))
                .collect::<Vec<_>>()
        };
        [
            each(added, &self.added),
            each(changed, &self.changed),
            each(removed, &self.removed),
        ]
        .concat()
    }
}

fn scalar(value: &str) -> bool {
    !value.contains('\n') && value.len() <= 80
}

/// The document as named entries: one per endpoint, domain, provider and
/// policy, and one per switch of the edge and the global policy, each
/// with its TOML text.
fn entries(p: &Provisioned) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for e in &p.endpoints {
        map.insert(format!("endpoint {}", e.uri), text(e));
    }
    let policy = &p.policy;
    for d in &policy.allowed_domains {
        map.insert(format!("allowed domain {}", d.domain), text(d));
    }
    for d in &policy.blocked_domains {
        map.insert(format!("blocked domain {d}"), String::new());
    }
    for provider in &policy.providers {
        map.insert(format!("provider {}", provider.name), text(provider));
    }
    for (name, access) in &policy.policies {
        map.insert(format!("policy {name}"), text(access));
    }
    for (name, access) in &policy.site_policies {
        map.insert(format!("site policy {name}"), text(access));
    }
    for (table, value) in [
        ("edge", toml::Value::try_from(&policy.edge)),
        (
            "global_policy",
            toml::Value::try_from(&policy.global_policy),
        ),
    ] {
        if let Ok(toml::Value::Table(fields)) = value {
            for (key, value) in fields {
                map.insert(format!("[policy.{table}] {key}"), value.to_string());
            }
        }
    }
    map
}

/// An entry's TOML text, to compare and show.
fn text<T: Serialize>(entry: &T) -> String {
    toml::to_string(entry).unwrap_or_default()
}

/// Checks an import against the configuration in force: the document
/// must be whole and valid, and must not remove every endpoint or every
/// federation entry unless `options.remove_all`. The checked
/// configuration comes back with what it changes.
pub fn check_import(
    current: &Config,
    document: &str,
    origin: &str,
    options: ImportOptions,
) -> Result<(Config, ImportPlan), ImportRefusal> {
    let whole = toml::from_str::<toml::Table>(document)
        .map(|t| t.contains_key("policy"))
        .unwrap_or(true);
    if !whole {
        return Err(ImportRefusal::Incomplete {
            origin: origin.to_owned(),
        });
    }
    let next = current.with_provisioned(document, origin)?;
    let (before, after) = (current.provisioned(), next.provisioned());
    let plan = ImportPlan::between(&before, &after);
    // A dry run shows everything, removals included.
    if !options.remove_all && !options.dry_run {
        let federation = |p: &Provisioned| {
            p.policy.allowed_domains.len()
                + p.policy.blocked_domains.len()
                + p.policy.providers.len()
        };
        let gone = if !before.endpoints.is_empty() && after.endpoints.is_empty() {
            Some(format!("every endpoint ({})", before.endpoints.len()))
        } else if federation(&before) > 0 && federation(&after) == 0 {
            Some(format!(
                "every allowed and blocked domain and provider ({})",
                federation(&before)
            ))
        } else {
            None
        };
        if let Some(what) = gone {
            return Err(ImportRefusal::RemovesEverything { what });
        }
    }
    Ok((next, plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut config = Config::embedded();
        config.policy.blocked_domains = vec!["spam.example".into()];
        config
    }

    #[test]
    fn an_empty_or_truncated_document_is_refused() {
        for document in [
            "",
            "\n# nothing\n",
            "[[endpoint]]\nuri = \"sip:a@porchlight.test\"\ndisplay_name = \"A\"\n",
        ] {
            let refusal =
                check_import(&config(), document, "doc", ImportOptions::default()).unwrap_err();
            assert!(
                matches!(refusal, ImportRefusal::Incomplete { .. }),
                "{document:?}: {refusal}"
            );
            assert!(refusal.to_string().contains("nothing was changed"));
        }
    }

    #[test]
    fn removing_everything_needs_saying_so_and_a_plan_shows_each_change() {
        let current = config();
        let mut next = current.provisioned();
        next.endpoints.clear();
        let document = next.to_toml();
        let refusal =
            check_import(&current, &document, "doc", ImportOptions::default()).unwrap_err();
        assert!(
            refusal.to_string().contains("removes every endpoint (1)"),
            "{refusal}"
        );
        let (_, plan) = check_import(
            &current,
            &document,
            "doc",
            ImportOptions {
                remove_all: true,
                ..ImportOptions::default()
            },
        )
        .unwrap();
        assert_eq!(plan.removed, ["endpoint sip:helpdesk@porchlight.test"]);

        let mut next = current.provisioned();
        next.policy.blocked_domains.clear();
        let refusal =
            check_import(&current, &next.to_toml(), "doc", ImportOptions::default()).unwrap_err();
        assert!(
            refusal
                .to_string()
                .contains("every allowed and blocked domain"),
            "{refusal}"
        );

        let mut next = current.provisioned();
        next.policy.blocked_domains.push("junk.example".into());
        next.policy.edge.enable_partner_discovery = true;
        next.endpoints[0].display_name = "Service Desk".into();
        let (_, plan) =
            check_import(&current, &next.to_toml(), "doc", ImportOptions::default()).unwrap();
        assert_eq!(plan.added, ["blocked domain junk.example"]);
        assert_eq!(
            plan.changed,
            [
                "[policy.edge] enable_partner_discovery: false -> true",
                "endpoint sip:helpdesk@porchlight.test",
            ]
        );
        assert!(plan.removed.is_empty());
        let (_, plan) = check_import(
            &current,
            &current.provisioned().to_toml(),
            "doc",
            ImportOptions::default(),
        )
        .unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }
}
