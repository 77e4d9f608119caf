//! `wrap_change`: the code that guards a change with a flag, in the repository's
//! language, using that language's official Unleash SDK.
//!
//! Pure text generation: nothing here talks to a server or reads a file. The
//! language is given, or guessed from a file extension.

use rmcp::schemars::{self, JsonSchema};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::tools::{ToolError, check_name};

/// Languages with a template, and the names they answer to.
const LANGUAGES: &[(Language, &[&str], &[&str])] = &[
    (
        Language::TypeScript,
        &["typescript", "ts", "tsx"],
        &["ts", "tsx", "mts", "cts"],
    ),
    (
        Language::JavaScript,
        &["javascript", "js", "jsx", "node"],
        &["js", "jsx", "mjs", "cjs"],
    ),
    (Language::Python, &["python", "py"], &["py"]),
    (Language::Go, &["go", "golang"], &["go"]),
    (Language::Rust, &["rust", "rs"], &["rs"]),
    (Language::Java, &["java"], &["java"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    TypeScript,
    JavaScript,
    Python,
    Go,
    Rust,
    Java,
}

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::TypeScript => "typescript",
            Language::JavaScript => "javascript",
            Language::Python => "python",
            Language::Go => "go",
            Language::Rust => "rust",
            Language::Java => "java",
        }
    }
}

fn supported() -> String {
    LANGUAGES
        .iter()
        .map(|(l, _, _)| l.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WrapChange {
    /// Flag name that guards the change.
    pub flag: String,
    /// typescript, javascript, python, go, rust or java. Optional when `path` is given.
    pub language: Option<String>,
    /// File the change is in; its extension picks the language when `language` is omitted.
    pub path: Option<String>,
    /// The new code, run when the flag is on.
    pub code: Option<String>,
    /// The current code, run when the flag is off.
    pub fallback: Option<String>,
}

/// The language to write in: `language` if given, else from `path`'s extension.
pub fn detect(language: Option<&str>, path: Option<&str>) -> Result<Language, ToolError> {
    if let Some(name) = language {
        let lower = name.trim().to_ascii_lowercase();
        return LANGUAGES
            .iter()
            .find(|(_, names, _)| names.contains(&lower.as_str()))
            .map(|(l, _, _)| *l)
            .ok_or_else(|| {
                ToolError::InvalidArgument(format!(
                    "language {name:?} is not supported; use one of: {}",
                    supported()
                ))
            });
    }
    let Some(path) = path else {
        return Err(ToolError::InvalidArgument(format!(
            "give `language` (one of: {}) or the `path` of the file being changed",
            supported()
        )));
    };
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    LANGUAGES
        .iter()
        .find(|(_, _, exts)| exts.contains(&ext.as_str()))
        .map(|(l, _, _)| *l)
        .ok_or_else(|| {
            ToolError::InvalidArgument(format!(
                "cannot tell the language of {path:?}; pass `language`, one of: {}",
                supported()
            ))
        })
}

fn indent(code: &str, by: &str) -> String {
    code.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{by}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The guard, setup and SDK package for `a`.
pub fn wrap_change(a: &WrapChange) -> Result<Value, ToolError> {
    check_name("flag", &a.flag)?;
    let lang = detect(a.language.as_deref(), a.path.as_deref())?;
    let flag = &a.flag;
    let comment = match lang {
        Language::Python => "#",
        _ => "//",
    };
    let code = a
        .code
        .clone()
        .unwrap_or_else(|| format!("{comment} new behaviour"));
    let fallback = a
        .fallback
        .clone()
        .unwrap_or_else(|| format!("{comment} current behaviour"));
    let (package, setup, guard) = match lang {
        Language::TypeScript | Language::JavaScript => {
            let import = if lang == Language::TypeScript {
                "import { initialize } from 'unleash-client';"
            } else {
                "const { initialize } = require('unleash-client');"
            };
            (
                "npm install unleash-client",
                format!(
                    "{import}\n\n\
                     // Once per process; UNLEASH_API_TOKEN is a client token.\n\
                     export const unleash = initialize({{\n  \
                       url: process.env.UNLEASH_URL + '/api',\n  \
                       appName: 'my-app',\n  \
                       customHeaders: {{ Authorization: process.env.UNLEASH_API_TOKEN }},\n\
                     }});"
                ),
                format!(
                    "if (unleash.isEnabled('{flag}', {{ userId }})) {{\n{}\n}} else {{\n{}\n}}",
                    indent(&code, "  "),
                    indent(&fallback, "  ")
                ),
            )
        }
        Language::Python => (
            "pip install UnleashClient",
            "import os\nfrom UnleashClient import UnleashClient\n\n\
             # Once per process; UNLEASH_API_TOKEN is a client token.\n\
             client = UnleashClient(\n    \
                 url=os.environ[\"UNLEASH_URL\"] + \"/api\",\n    \
                 app_name=\"my-app\",\n    \
                 custom_headers={\"Authorization\": os.environ[\"UNLEASH_API_TOKEN\"]},\n\
             )\nclient.initialize_client()"
                .to_owned(),
            format!(
                "if client.is_enabled(\"{flag}\", {{\"userId\": user_id}}):\n{}\nelse:\n{}",
                indent(&code, "    "),
                indent(&fallback, "    ")
            ),
        ),
        Language::Go => (
            "go get github.com/Unleash/unleash-client-go/v4",
            "import (\n\t\"net/http\"\n\t\"os\"\n\n\t\"github.com/Unleash/unleash-client-go/v4\"\n\
             \tucontext \"github.com/Unleash/unleash-client-go/v4/context\"\n)\n\n\
             // Once per process; UNLEASH_API_TOKEN is a client token.\n\
             unleash.Initialize(\n\
             \tunleash.WithUrl(os.Getenv(\"UNLEASH_URL\")+\"/api\"),\n\
             \tunleash.WithAppName(\"my-app\"),\n\
             \tunleash.WithCustomHeaders(http.Header{\"Authorization\": {os.Getenv(\"UNLEASH_API_TOKEN\")}}),\n)"
                .to_owned(),
            format!(
                "if unleash.IsEnabled(\"{flag}\", unleash.WithContext(ucontext.Context{{UserId: userID}})) {{\n{}\n}} else {{\n{}\n}}",
                indent(&code, "\t"),
                indent(&fallback, "\t")
            ),
        ),
        Language::Rust => (
            "cargo add unleash-api-client",
            "use unleash_api_client::{ClientBuilder, context::Context};\n\n\
             // Once per process; UNLEASH_API_TOKEN is a client token. Spawn\n\
             // `client.poll_for_updates()` on your runtime after `register()`.\n\
             let client = ClientBuilder::default()\n    \
                 .disable_metric_submission()\n    \
                 .into_client::<String, reqwest::Client>(\n        \
                     &(std::env::var(\"UNLEASH_URL\")? + \"/api\"),\n        \
                     \"my-app\",\n        \
                     \"my-instance\",\n        \
                     Some(std::env::var(\"UNLEASH_API_TOKEN\")?),\n    \
                 )?;"
                .to_owned(),
            format!(
                "let context = Context {{ user_id: Some(user_id.to_string()), ..Default::default() }};\n\
                 if client.is_enabled_str(\"{flag}\", Some(&context), false) {{\n{}\n}} else {{\n{}\n}}",
                indent(&code, "    "),
                indent(&fallback, "    ")
            ),
        ),
        Language::Java => (
            "io.getunleash:unleash-client-java (Maven/Gradle)",
            "import io.getunleash.DefaultUnleash;\nimport io.getunleash.Unleash;\n\
             import io.getunleash.UnleashContext;\nimport io.getunleash.util.UnleashConfig;\n\n\
             // Once per process; UNLEASH_API_TOKEN is a client token.\n\
             Unleash unleash = new DefaultUnleash(UnleashConfig.builder()\n    \
                 .appName(\"my-app\")\n    \
                 .unleashAPI(System.getenv(\"UNLEASH_URL\") + \"/api\")\n    \
                 .apiKey(System.getenv(\"UNLEASH_API_TOKEN\"))\n    \
                 .build());"
                .to_owned(),
            format!(
                "UnleashContext context = UnleashContext.builder().userId(userId).build();\n\
                 if (unleash.isEnabled(\"{flag}\", context)) {{\n{}\n}} else {{\n{}\n}}",
                indent(&code, "    "),
                indent(&fallback, "    ")
            ),
        ),
    };
    Ok(json!({
        "flag": flag,
        "language": lang.name(),
        "guard": guard,
        "setup": setup,
        "package": package,
        "notes": format!(
            "The flag is off until someone rolls it out, so the new code ships dark. Pass the real \
             user id as userId (stickiness); kill_flag turns the new path off at once. When the \
             change is done, cleanup_flag says how to remove the check."
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(language: Option<&str>, path: Option<&str>) -> Result<Value, ToolError> {
        wrap_change(&WrapChange {
            flag: "new-checkout".into(),
            language: language.map(Into::into),
            path: path.map(Into::into),
            code: Some("charge(cart)\nlog(cart)".into()),
            fallback: None,
        })
    }

    #[test]
    fn language_comes_from_the_extension() {
        for (path, lang) in [
            ("src/app.tsx", "typescript"),
            ("lib/x.mjs", "javascript"),
            ("pkg/a.py", "python"),
            ("cmd/main.go", "go"),
            ("src/lib.rs", "rust"),
            ("src/Main.java", "java"),
        ] {
            assert_eq!(wrap(None, Some(path)).unwrap()["language"], lang, "{path}");
        }
        // An explicit language wins over the path.
        assert_eq!(wrap(Some("Go"), Some("a.py")).unwrap()["language"], "go");
    }

    #[test]
    fn unknown_language_lists_the_supported_ones() {
        for err in [
            wrap(Some("cobol"), None).unwrap_err(),
            wrap(None, Some("x.cob")).unwrap_err(),
            wrap(None, None).unwrap_err(),
        ] {
            let m = err.to_string();
            assert!(matches!(err, ToolError::InvalidArgument(_)));
            assert!(
                m.contains("typescript, javascript, python, go, rust, java"),
                "{m}"
            );
        }
    }

    #[test]
    fn guards_use_each_sdk_and_indent_the_code() {
        let py = wrap(Some("python"), None).unwrap();
        assert_eq!(
            py["guard"],
            "if client.is_enabled(\"new-checkout\", {\"userId\": user_id}):\n    charge(cart)\n    log(cart)\nelse:\n    # current behaviour"
        );
        assert!(
            py["setup"]
                .as_str()
                .unwrap()
                .contains("from UnleashClient import UnleashClient")
        );
        let ts = wrap(Some("ts"), None).unwrap();
        assert!(
            ts["guard"].as_str().unwrap().starts_with(
                "if (unleash.isEnabled('new-checkout', { userId })) {\n  charge(cart)\n"
            )
        );
        assert!(
            ts["setup"]
                .as_str()
                .unwrap()
                .contains("from 'unleash-client'")
        );
        let go = wrap(Some("go"), None).unwrap();
        assert!(
            go["guard"]
                .as_str()
                .unwrap()
                .contains("unleash.IsEnabled(\"new-checkout\"")
                && go["guard"].as_str().unwrap().contains("\n\tcharge(cart)\n")
        );
        let rs = wrap(Some("rust"), None).unwrap();
        assert!(
            rs["guard"]
                .as_str()
                .unwrap()
                .contains("is_enabled_str(\"new-checkout\"")
        );
        let java = wrap(Some("java"), None).unwrap();
        assert!(
            java["guard"]
                .as_str()
                .unwrap()
                .contains("unleash.isEnabled(\"new-checkout\", context)")
        );
    }

    #[test]
    fn the_flag_name_is_validated() {
        let err = wrap_change(&WrapChange {
            flag: "bad name'); drop".into(),
            language: Some("ts".into()),
            path: None,
            code: None,
            fallback: None,
        })
        .unwrap_err();
        assert!(matches!(err, ToolError::InvalidArgument(_)));
    }
}
