//! Rows as the SQL stores read them, and how they become the API model.
//!
//! What comes after a query, kept apart from the SQL in `store.rs`: JSON columns parsed
//! (a column that is not valid JSON is a [`StoreError::CorruptJson`], never a panic),
//! rows grouped into flags, strategies and dependencies attached in order, tokens and
//! metrics decoded.
//!
//! What it does not do: talk to a database.

use std::collections::BTreeMap;

use unleash_types::client_features::{
    ClientFeature, ClientFeatures, FeatureDependency, Segment, Strategy, Variant,
};

use crate::metrics::{Application, Counts, Instance, MetricsRow};
use crate::sql::Columns;
use crate::store::{FeatureEnvironment, FeatureSummary, StoreError, TokenRecord};
use crate::token::{TokenHash, TokenType};

type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::CorruptJson { what, source })
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A count as a signed 64-bit column, saturating.
pub(crate) fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// The columns every query about flags starts with: `name, project, type,
/// description, stale, impression_data` of `features`.
pub(crate) struct Flag {
    pub name: String,
    pub project: String,
    pub feature_type: Option<String>,
    pub description: Option<String>,
    pub stale: bool,
    pub impression_data: bool,
}

impl Flag {
    /// Columns 0 to 5 of `r`.
    pub(crate) fn read(r: &dyn Columns) -> Result<Self> {
        Ok(Flag {
            name: r.text(0)?,
            project: r.text(1)?,
            feature_type: r.opt_text(2)?,
            description: r.opt_text(3)?,
            stale: r.flag(4)?,
            impression_data: r.flag(5)?,
        })
    }
}

/// A flag in one environment (`features` joined with `feature_environments`).
pub(crate) struct FeatureRow {
    pub flag: Flag,
    pub enabled: bool,
    pub variants: String,
}

/// The client-API state from its rows: features sorted by name, segments as a
/// top-level list. `strategies` (in position order) and `dependencies` name their
/// flag; those of flags not in `features` (other projects, archived flags) are
/// ignored.
pub(crate) fn client_state(
    features: Vec<FeatureRow>,
    strategies: Vec<(String, Strategy)>,
    dependencies: Vec<(String, FeatureDependency)>,
    segments: Vec<Segment>,
) -> Result<ClientFeatures> {
    let mut by_name: BTreeMap<String, ClientFeature> = BTreeMap::new();
    for FeatureRow {
        flag: f,
        enabled,
        variants,
    } in features
    {
        let variants: Vec<Variant> = from_json("feature variants", &variants)?;
        by_name.insert(
            f.name.clone(),
            ClientFeature {
                name: f.name,
                project: Some(f.project),
                feature_type: f.feature_type,
                description: f.description,
                stale: Some(f.stale),
                impression_data: Some(f.impression_data),
                enabled,
                variants: Some(variants),
                strategies: Some(Vec::new()),
                ..ClientFeature::default()
            },
        );
    }
    for (feature, strategy) in strategies {
        if let Some(f) = by_name.get_mut(&feature) {
            f.strategies.get_or_insert_with(Vec::new).push(strategy);
        }
    }
    for (child, dependency) in dependencies {
        if let Some(f) = by_name.get_mut(&child) {
            f.dependencies.get_or_insert_with(Vec::new).push(dependency);
        }
    }
    Ok(ClientFeatures {
        version: 2,
        features: by_name.into_values().collect(),
        segments: Some(segments),
        query: None,
        meta: None,
    })
}

/// A flag with one of its environments (or none: a left join), ordered by flag name
/// and environment.
pub(crate) struct SummaryRow {
    pub flag: Flag,
    pub archived: bool,
    pub environment: Option<String>,
    pub enabled: Option<bool>,
    pub strategy_count: i64,
}

/// One [`FeatureSummary`] per flag, its environments in row order.
pub(crate) fn summaries(rows: Vec<SummaryRow>) -> Vec<FeatureSummary> {
    let mut out: Vec<FeatureSummary> = Vec::new();
    for r in rows {
        if out.last().is_none_or(|f| f.name != r.flag.name) {
            let f = r.flag;
            out.push(FeatureSummary {
                name: f.name,
                project: f.project,
                feature_type: f.feature_type,
                description: f.description,
                stale: f.stale,
                impression_data: f.impression_data,
                archived: r.archived,
                environments: Vec::new(),
            });
        }
        if let (Some(name), Some(f)) = (r.environment, out.last_mut()) {
            f.environments.push(FeatureEnvironment {
                name,
                enabled: r.enabled.unwrap_or(false),
                strategy_count: r.strategy_count.max(0) as usize,
            });
        }
    }
    out
}

/// A stored token, or `None` for a row this build cannot use (unknown type, a hash
/// of the wrong length), which then matches no presented token.
pub(crate) fn token(
    name: String,
    token_type: &str,
    project: String,
    environment: String,
    hash: Vec<u8>,
) -> Option<TokenRecord> {
    Some(TokenRecord {
        name,
        token_type: TokenType::parse(token_type)?,
        project,
        environment,
        hash: TokenHash(hash.try_into().ok()?),
        owner: None,
        expires_ms: None,
    })
}

/// Stored counts (negative ones, which only a hand edit makes, read as 0).
pub(crate) fn counts(yes: i64, no: i64, variants: &str) -> Result<Counts> {
    Ok(Counts {
        yes: yes.max(0) as u64,
        no: no.max(0) as u64,
        variants: from_json("metrics variants", variants)?,
    })
}

/// One row of `feature_metrics` for one flag.
pub(crate) struct CountsRow {
    pub app_name: String,
    pub environment: String,
    pub hour: i64,
    pub yes: i64,
    pub no: i64,
    pub variants: String,
}

pub(crate) fn metrics(flag: &str, rows: Vec<CountsRow>) -> Result<Vec<MetricsRow>> {
    rows.into_iter()
        .map(|r| {
            let counts = counts(r.yes, r.no, &r.variants)?;
            Ok(MetricsRow {
                feature_name: flag.to_owned(),
                app_name: r.app_name,
                environment: r.environment,
                timestamp: crate::metrics::rfc3339(r.hour),
                yes: counts.yes,
                no: counts.no,
                variants: counts.variants,
            })
        })
        .collect()
}

/// One row of `client_instances`; rows come ordered by application name.
pub(crate) struct InstanceRow {
    pub app_name: String,
    pub instance_id: String,
    pub environment: String,
    pub sdk_version: Option<String>,
    pub strategies: String,
    pub last_seen: i64,
}

/// Instances grouped into applications.
pub(crate) fn applications(rows: Vec<InstanceRow>) -> Result<Vec<Application>> {
    let mut apps: Vec<Application> = Vec::new();
    for r in rows {
        let instance = Instance {
            instance_id: r.instance_id,
            environment: r.environment,
            sdk_version: r.sdk_version,
            strategies: from_json("registered strategies", &r.strategies)?,
            last_seen: crate::metrics::rfc3339(r.last_seen),
        };
        match apps.last_mut() {
            Some(a) if a.app_name == r.app_name => a.instances.push(instance),
            _ => apps.push(Application {
                app_name: r.app_name,
                instances: vec![instance],
            }),
        }
    }
    Ok(apps)
}
