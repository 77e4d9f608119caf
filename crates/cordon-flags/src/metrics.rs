//! What SDKs report about themselves: registrations (`POST /api/client/register`) and
//! evaluation counts (`POST /api/client/metrics`).
//!
//! Both bodies come from the network and are parsed leniently where Unleash is lenient
//! (SDKs send fields we do not use, and new SDK versions add more), but every value we
//! keep is bounded: string lengths, the number of flags and variants in one report, and
//! the counts themselves. Counts are aggregated per flag, environment, application and
//! hour. The hour is the server's clock at receipt, not the SDK's `bucket.start`, so a
//! client cannot write counts into the past or the future.
//!
//! Metrics are not flag changes: they write no audit event and do not move the
//! revision that streaming clients follow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest application name, instance id, SDK version, flag or variant name kept.
pub const MAX_NAME: usize = 255;
/// Most flags in one metrics report.
pub const MAX_TOGGLES: usize = 10_000;
/// Most variants counted for one flag in one report.
pub const MAX_VARIANTS: usize = 100;
/// Most strategies named in one registration.
pub const MAX_STRATEGIES: usize = 100;
/// Most SDK instances remembered; more are refused (`429`) until old ones expire.
pub const MAX_INSTANCES: i64 = 10_000;
/// An instance not heard from for this long is forgotten.
pub const INSTANCE_TTL_MS: i64 = 7 * 24 * HOUR_MS;
/// Hourly counts older than this are deleted.
pub const RETENTION_MS: i64 = 31 * 24 * HOUR_MS;
/// One hour in milliseconds: counts are filed per hour.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the hour `ms` falls in (ms since the epoch).
pub fn hour_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}
/// Largest single count accepted (a report covers seconds to minutes of evaluations).
pub const MAX_COUNT: u64 = 1 << 40;

/// An SDK instance announcing itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub app_name: String,
    pub instance_id: String,
    pub environment: String,
    pub sdk_version: Option<String>,
    pub strategies: Vec<String>,
    /// Reporting interval in milliseconds, as the SDK says.
    pub interval: Option<u64>,
    /// When the server received it (ms since the epoch).
    pub seen_ms: i64,
}

/// Evaluation counts from one SDK report, for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub app_name: String,
    pub instance_id: String,
    pub environment: String,
    /// Start of the hour the counts are filed under (ms since the epoch).
    pub hour_ms: i64,
    pub toggles: BTreeMap<String, Counts>,
}

/// Counts of one flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub yes: u64,
    pub no: u64,
    #[serde(default)]
    pub variants: BTreeMap<String, u64>,
}

impl Counts {
    /// Add `other` to these counts, saturating.
    pub fn add(&mut self, other: &Counts) {
        self.yes = self.yes.saturating_add(other.yes);
        self.no = self.no.saturating_add(other.no);
        for (k, v) in &other.variants {
            let e = self.variants.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
    }
}

/// One stored row of counts: a flag in one environment, from one application, in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsRow {
    pub feature_name: String,
    pub app_name: String,
    pub environment: String,
    /// Start of the hour, RFC 3339 in UTC.
    pub timestamp: String,
    pub yes: u64,
    pub no: u64,
    pub variants: BTreeMap<String, u64>,
}

/// An application and the instances that registered or reported for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub app_name: String,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub instance_id: String,
    pub environment: String,
    pub sdk_version: Option<String>,
    pub strategies: Vec<String>,
    /// RFC 3339 in UTC.
    pub last_seen: String,
}

/// Why a registration or report was refused; answered as a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("`{0}` is missing or not a string")]
    Missing(&'static str),
    #[error("`{field}` is longer than {MAX_NAME} characters")]
    TooLong { field: &'static str },
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("the report names more than {MAX_TOGGLES} flags")]
    TooManyToggles,
    #[error("flag `{0}` reports more than {MAX_VARIANTS} variants")]
    TooManyVariants(String),
    #[error("the registration names more than {MAX_STRATEGIES} strategies")]
    TooManyStrategies,
    #[error("a count for flag `{0}` is not a whole number between 0 and {MAX_COUNT}")]
    BadCount(String),
}

fn name(v: &Value, field: &'static str) -> Result<String, Invalid> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or(Invalid::Missing(field))?;
    bounded(s, field)
}

fn bounded(s: &str, field: &'static str) -> Result<String, Invalid> {
    if s.is_empty() {
        return Err(Invalid::Missing(field));
    }
    if s.chars().count() > MAX_NAME {
        return Err(Invalid::TooLong { field });
    }
    Ok(s.to_owned())
}

fn optional_name(v: &Value, field: &'static str) -> Result<Option<String>, Invalid> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => bounded(s, field).map(Some),
        Some(_) => Err(Invalid::WrongType(field)),
    }
}

/// Unleash lets an SDK leave out `instanceId`; it is then filed as `default`.
fn instance_id(v: &Value) -> Result<String, Invalid> {
    Ok(optional_name(v, "instanceId")?.unwrap_or_else(|| "default".to_owned()))
}

fn count(v: Option<&Value>, flag: &str) -> Result<u64, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(n) => n
            .as_u64()
            .filter(|n| *n <= MAX_COUNT)
            .ok_or_else(|| Invalid::BadCount(flag.to_owned())),
    }
}

/// Parse a registration. `environment` comes from the token, never from the body: a
/// client token can only speak for its own environment.
pub fn parse_registration(
    body: &Value,
    environment: &str,
    seen_ms: i64,
) -> Result<Registration, Invalid> {
    let strategies = match body.get("strategies") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_STRATEGIES {
                return Err(Invalid::TooManyStrategies);
            }
            items
                .iter()
                .map(|s| {
                    s.as_str()
                        .ok_or(Invalid::WrongType("strategies"))
                        .and_then(|s| bounded(s, "strategies"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(Invalid::WrongType("strategies")),
    };
    let interval = match body.get("interval") {
        None | Some(Value::Null) => None,
        Some(n) => Some(n.as_u64().ok_or(Invalid::WrongType("interval"))?),
    };
    Ok(Registration {
        app_name: name(body, "appName")?,
        instance_id: instance_id(body)?,
        environment: environment.to_owned(),
        sdk_version: optional_name(body, "sdkVersion")?,
        strategies,
        interval,
        seen_ms,
    })
}

/// Parse a metrics report; the counts are filed under the hour of `received_ms`.
pub fn parse_report(body: &Value, environment: &str, received_ms: i64) -> Result<Report, Invalid> {
    let app_name = name(body, "appName")?;
    let instance_id = instance_id(body)?;
    let toggles = match body.get("bucket").map(|b| b.get("toggles")) {
        Some(Some(Value::Object(t))) => t,
        Some(Some(Value::Null)) | Some(None) => &serde_json::Map::new(),
        Some(Some(_)) => return Err(Invalid::WrongType("bucket.toggles")),
        None => return Err(Invalid::Missing("bucket")),
    };
    if toggles.len() > MAX_TOGGLES {
        return Err(Invalid::TooManyToggles);
    }
    let mut out = BTreeMap::new();
    for (flag, c) in toggles {
        let flag = bounded(flag, "bucket.toggles")?;
        let mut counts = Counts {
            yes: count(c.get("yes"), &flag)?,
            no: count(c.get("no"), &flag)?,
            variants: BTreeMap::new(),
        };
        match c.get("variants") {
            None | Some(Value::Null) => {}
            Some(Value::Object(vs)) => {
                if vs.len() > MAX_VARIANTS {
                    return Err(Invalid::TooManyVariants(flag));
                }
                for (variant, n) in vs {
                    let variant = bounded(variant, "variants")?;
                    counts.variants.insert(variant, count(Some(n), &flag)?);
                }
            }
            Some(_) => return Err(Invalid::WrongType("variants")),
        }
        if counts.yes > 0 || counts.no > 0 || !counts.variants.is_empty() {
            out.insert(flag, counts);
        }
    }
    Ok(Report {
        app_name,
        instance_id,
        environment: environment.to_owned(),
        hour_ms: hour_start(received_ms),
        toggles: out,
    })
}

/// Milliseconds since the epoch as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An RFC 3339 time (any offset) as milliseconds since the epoch; `None` when it does
/// not parse.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if s.len() > 64 {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_sdk_report_parses_and_is_filed_under_the_server_hour() {
        let body = json!({
            "appName": "shop", "instanceId": "i-1", "environment": "production",
            "platformName": "node", "sdkVersion": "unleash-client-node:6.12.1",
            "bucket": {"start": "1999-01-01T00:00:00.000Z", "stop": "1999-01-01T00:00:01.000Z",
                "toggles": {
                    "checkout": {"yes": 3, "no": 1, "variants": {"blue": 2, "disabled": 1}},
                    "idle": {"yes": 0, "no": 0, "variants": {}}
                }}
        });
        let r = parse_report(&body, "development", 1_700_000_123_456).unwrap();
        assert_eq!(
            r.environment, "development",
            "the token decides the environment"
        );
        assert_eq!(r.hour_ms, 1_699_999_200_000);
        assert_eq!(r.toggles.len(), 1, "all-zero counts are dropped");
        let c = &r.toggles["checkout"];
        assert_eq!((c.yes, c.no, c.variants["blue"]), (3, 1, 2));
    }

    #[test]
    fn hostile_reports_are_refused() {
        let many: serde_json::Map<String, Value> = (0..=MAX_TOGGLES)
            .map(|i| (format!("f{i}"), json!({"yes": 1})))
            .collect();
        let cases = [
            (
                json!({"bucket": {"toggles": {}}}),
                Invalid::Missing("appName"),
            ),
            (
                json!({"appName": 7, "bucket": {}}),
                Invalid::Missing("appName"),
            ),
            (json!({"appName": "a"}), Invalid::Missing("bucket")),
            (
                json!({"appName": "a", "bucket": {"toggles": {"f": {"yes": -1}}}}),
                Invalid::BadCount("f".into()),
            ),
            (
                json!({"appName": "a", "bucket": {"toggles": {"f": {"yes": 1.5}}}}),
                Invalid::BadCount("f".into()),
            ),
            (
                json!({"appName": "a", "bucket": {"toggles": {"f": {"no": MAX_COUNT + 1}}}}),
                Invalid::BadCount("f".into()),
            ),
            (
                json!({"appName": "x".repeat(MAX_NAME + 1), "bucket": {}}),
                Invalid::TooLong { field: "appName" },
            ),
            (
                json!({"appName": "a", "bucket": {"toggles": many}}),
                Invalid::TooManyToggles,
            ),
            (
                json!({"appName": "a", "bucket": {"toggles": []}}),
                Invalid::WrongType("bucket.toggles"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_report(&body, "development", 0).unwrap_err(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn registrations_keep_what_matters() {
        let body = json!({"appName": "shop", "sdkVersion": "unleash-python-sdk:6.0.0",
            "strategies": ["default", "flexibleRollout"], "interval": 60000,
            "started": "2026-11-27T10:00:00Z", "platformName": "CPython"});
        let r = parse_registration(&body, "production", 5).unwrap();
        assert_eq!(r.instance_id, "default");
        assert_eq!(r.strategies, ["default", "flexibleRollout"]);
        assert_eq!(r.interval, Some(60_000));
        let bad = json!({"appName": "shop", "strategies": [1]});
        assert_eq!(
            parse_registration(&bad, "production", 5).unwrap_err(),
            Invalid::WrongType("strategies")
        );
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_699_999_200_000), "2023-11-14T22:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}
