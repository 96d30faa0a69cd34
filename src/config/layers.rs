//! Where settings come from, merged with figment: the TOML file, the environment, the flags (in
//! that order, each overriding the one before, all over the built-in defaults), and, for every
//! value that turns out wrong, which of them set it (file and line, variable, flag).
//!
//! serde stops at the first error, so when the merged configuration does not deserialize, each
//! value is tried on its own ([`extract`]): every bad one is reported, and the good ones still
//! reach [`validate`], whose problems are reported too.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::file::{FileConfig, PolicyFileConfig};
use super::settings::Settings;
use super::validate::{validate, ConfigErrors};

/// Prefix of every setting's environment variable.
pub(super) const ENV_PREFIX: &str = "TILE_PROXY_";
/// Separator of nested keys in a variable name.
pub(super) const ENV_NESTING: &str = "__";
/// Names kept from the service this one replaces, and the key each sets. The `TILE_PROXY_`
/// spelling of the same key wins when both are set.
const LEGACY_ENV: [(&str, &str); 4] = [
    ("HERE_API_KEY", "here_api_key"),
    ("HERE_API_KEY_FILE", "here_api_key_file"),
    ("CACHE_TTL_CAP", "ttl_cap"),
    ("REDIS_URL", "redis_url"),
];
/// Read by clap (`--config`), not a setting.
const CONFIG_ENV: &str = "TILE_PROXY_CONFIG";

/// What the command line set: the config file's path and each flag given, with the key it sets
/// (the CLI, `app::cli::ServeArgs`, builds it; config knows nothing of clap). Unset flags are
/// absent: they leave the environment and the file alone.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// The TOML file (`--config` / `TILE_PROXY_CONFIG`).
    pub config: Option<PathBuf>,
    pub values: Vec<Flag>,
}

/// One flag given on the command line.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The top-level key it sets (`listen`).
    pub key: &'static str,
    /// How the user spelled it (`--listen`), for error messages.
    pub name: &'static str,
    pub value: FlagValue,
}

/// A flag's value, typed as the key wants it.
#[derive(Debug, Clone)]
pub enum FlagValue {
    Text(String),
    Path(PathBuf),
    Number(u64),
}

impl Flags {
    /// Only a config file.
    pub fn file(path: impl Into<PathBuf>) -> Flags {
        Flags { config: Some(path.into()), values: Vec::new() }
    }

    /// These flags and `key`, spelled `name`, set to `value`.
    pub fn with(mut self, key: &'static str, name: &'static str, value: FlagValue) -> Flags {
        self.values.push(Flag { key, name, value });
        self
    }
}

/// A key path: `["upstream", "head_timeout"]`.
type KeyPath = Vec<String>;

/// One source, as a figment provider.
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The config file as parsed with spans, to find the line of a key.
struct FileSource {
    path: PathBuf,
    doc: toml_edit::ImDocument<String>,
}

impl FileSource {
    /// The line where `path` is set in the file, if it is.
    fn line_of(&self, path: &[String]) -> Option<usize> {
        let mut table: &dyn toml_edit::TableLike = self.doc.as_table();
        let mut span = None;
        for (i, segment) in path.iter().enumerate() {
            let (key, item) = table.get_key_value(segment)?;
            span = key.span().or_else(|| item.span()).or(span);
            match item.as_table_like() {
                Some(t) => table = t,
                None if i + 1 < path.len() => return None,
                None => {}
            }
        }
        span.map(|s| line_at(self.doc.raw(), s.start))
    }
}

/// What set each key, to name it in errors.
#[derive(Default)]
struct Sources {
    file: Option<FileSource>,
    env: BTreeMap<KeyPath, String>,
    flags: BTreeMap<KeyPath, &'static str>,
}

impl Sources {
    /// `env TILE_PROXY_LISTEN`, `flag --listen`, `/etc/tile-proxy.toml line 3`: the last source
    /// (by precedence) that set `path` or something in it. `None`: the built-in default.
    fn origin(&self, path: &[String]) -> Option<String> {
        let touches = |k: &KeyPath| k.starts_with(path) || path.starts_with(k);
        if let Some((_, flag)) = self.flags.iter().find(|(k, _)| touches(k)) {
            return Some(format!("flag {flag}"));
        }
        if let Some((_, var)) = self.env.iter().find(|(k, _)| touches(k)) {
            return Some(format!("env {var}"));
        }
        let file = self.file.as_ref()?;
        let line = file.line_of(path)?;
        Some(format!("{} line {line}", file.path.display()))
    }

    /// One line of the error list: the source first, then the key and the problem.
    fn describe(&self, path: &[String], message: &str) -> String {
        let key = path.join(".");
        match self.origin(path) {
            Some(origin) => format!("{origin} ({key}): {message}"),
            None => format!("{key}: {message}"),
        }
    }
}

/// Loads file -> environment (`vars`) -> flags, validates, and lists every problem.
pub(super) fn load(
    args: &Flags,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<(Settings, FileConfig), ConfigErrors> {
    let mut errors = Vec::new();
    let mut sources = Sources::default();
    let file = match &args.config {
        Some(path) => read_file(path, &mut sources, &mut errors),
        None => Dict::new(),
    };
    let (env, all_vars) = read_env(vars, &mut sources, &mut errors);
    let flags = read_flags(args, &mut sources, &mut errors);
    let figment = Figment::new()
        .merge(Layer { name: "config file", dict: file })
        .merge(Layer { name: "environment", dict: env })
        .merge(Layer { name: "command line", dict: flags });
    let (config, bad) = extract(&figment);
    errors.extend(bad.iter().map(|(path, message)| sources.describe(path, message)));
    match validate(&config, &|name| all_vars.get(name).cloned()) {
        Ok(settings) if errors.is_empty() => Ok((settings, config)),
        Ok(_) => {
            errors.sort_by_key(|e| problem_order(e));
            Err(ConfigErrors(errors))
        }
        Err(problems) => {
            // A bad value was replaced by its default: what validation says about it is noise.
            let fresh = problems.iter().filter(|p| !bad.iter().any(|(b, _)| p.path.starts_with(b)));
            errors.extend(fresh.map(|p| sources.describe(&p.path, &p.message)));
            errors.sort_by_key(|e| problem_order(e));
            Err(ConfigErrors(errors))
        }
    }
}

/// For a line like `listen = 127.0.0.1:8080`: a text value left unquoted, which TOML cannot
/// read. The hint shows it quoted.
fn unquoted_hint(line: &str) -> Option<String> {
    let (key, value) = line.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if key.is_empty() || !key.chars().all(plain) || value.is_empty() {
        return None;
    }
    let structured = value.starts_with(['"', '\'', '[', '{']);
    let scalar = value.parse::<f64>().is_ok() || matches!(value, "true" | "false");
    (!structured && !scalar).then(|| format!("; text values are quoted: {key} = \"{value}\""))
}

/// 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn read_file(path: &Path, sources: &mut Sources, errors: &mut Vec<String>) -> Dict {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(format!("config file {shown}: cannot read it: {e}"));
            return Dict::new();
        }
    };
    let syntax_error = |span: Option<std::ops::Range<usize>>, message: &str| {
        let at = span.map(|s| line_at(&text, s.start));
        let line = at.map(|n| format!(" line {n}")).unwrap_or_default();
        let message = message.trim().replace('\n', "; ");
        let hint = at.and_then(|n| text.lines().nth(n - 1)).and_then(unquoted_hint).unwrap_or_default();
        format!("{shown}{line}: TOML syntax error: {message}{hint} (none of the file's settings were applied)")
    };
    let doc = match toml_edit::ImDocument::parse(text.clone()) {
        Ok(doc) => doc,
        Err(e) => {
            errors.push(syntax_error(e.span(), e.message()));
            return Dict::new();
        }
    };
    let dict = match toml::from_str::<Dict>(&text) {
        Ok(dict) => dict,
        Err(e) => {
            errors.push(syntax_error(e.span(), e.message()));
            return Dict::new();
        }
    };
    sources.file = Some(FileSource { path: path.to_path_buf(), doc });
    dict
}

/// The key path a variable sets: `None` when it is not ours, `Err` when it is ours but names
/// no key. Index names are kept as written; every other segment is lowercased.
fn env_key(name: &str) -> Option<Result<KeyPath, String>> {
    if let Some((_, key)) = LEGACY_ENV.iter().find(|(legacy, _)| *legacy == name) {
        return Some(Ok(vec![key.to_string()]));
    }
    let rest = name.strip_prefix(ENV_PREFIX).filter(|_| name != CONFIG_ENV)?;
    let segments: Vec<&str> = rest.split(ENV_NESTING).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Some(Err(format!(
            "names no setting: write TILE_PROXY_<KEY>, nested keys joined by {ENV_NESTING} \
             (e.g. TILE_PROXY_UPSTREAM__HEAD_TIMEOUT)"
        )));
    }
    let is_index = segments[0].eq_ignore_ascii_case("index");
    let path = segments
        .iter()
        .enumerate()
        .map(|(i, s)| if is_index && i == 1 { s.to_string() } else { s.to_ascii_lowercase() })
        .collect();
    Some(Ok(path))
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_SERVICE_PORT[_<NAME>]`,
/// `<SERVICE>_PORT` and `<SERVICE>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]` for every Service of the
/// namespace (unless `enableServiceLinks: false`): for a Service named `tile-proxy*` they start
/// with `TILE_PROXY_`. They are not settings. Both the name (`rest`, after the prefix) and the
/// value must have their shape, so a mistyped setting is still reported.
fn is_service_link(rest: &str, value: &str) -> bool {
    let ip = value.parse::<std::net::IpAddr>().is_ok();
    let number = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let proto_url = ["tcp://", "udp://", "sctp://"].iter().any(|p| value.starts_with(p));
    let parts: Vec<&str> = rest.split('_').collect();
    let n = parts.len();
    let is_proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    // ..._PORT_<N>_<PROTO>[_<FIELD>]
    for i in 0..n.saturating_sub(2) {
        if parts[i] == "PORT" && parts[i + 1].bytes().all(|b| b.is_ascii_digit()) && is_proto(parts[i + 2]) {
            return match &parts[i + 3..] {
                [] => proto_url,
                ["PROTO"] => matches!(value, "tcp" | "udp" | "sctp"),
                ["PORT"] => number,
                ["ADDR"] => ip,
                _ => false,
            };
        }
    }
    if parts.windows(2).any(|w| w == ["SERVICE", "PORT"]) {
        return number;
    }
    match parts.as_slice() {
        [.., "SERVICE", "HOST"] => ip,
        [.., "PORT"] => proto_url,
        _ => false,
    }
}

/// The environment's settings (values as strings: typed fields are read leniently), and every
/// variable for `api_key_env`. An empty variable counts as unset.
fn read_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    sources: &mut Sources,
    errors: &mut Vec<String>,
) -> (Dict, BTreeMap<String, String>) {
    let mut all = BTreeMap::new();
    for (name, value) in vars {
        // A name that is not UTF-8 is none of ours.
        let Ok(name) = name.into_string() else { continue };
        match value.into_string() {
            Ok(value) => {
                all.insert(name, value);
            }
            Err(_) if env_key(&name).is_some() => errors.push(format!("env {name}: the value is not UTF-8")),
            Err(_) => {}
        }
    }
    let mut dict = Dict::new();
    let (legacy, prefixed): (Vec<_>, Vec<_>) = all.iter().partition(|(name, _)| !name.starts_with(ENV_PREFIX));
    for (name, value) in legacy.into_iter().chain(prefixed) {
        if name.strip_prefix(ENV_PREFIX).is_some_and(|rest| is_service_link(rest, value)) {
            continue;
        }
        match env_key(name) {
            None => {}
            Some(Err(message)) => errors.push(format!("env {name}: {message}")),
            Some(Ok(_)) if value.is_empty() => {}
            Some(Ok(path)) => {
                insert(&mut dict, &path, Value::from(value.as_str()));
                sources.env.insert(path, name.clone());
            }
        }
    }
    (dict, all)
}

fn read_flags(a: &Flags, sources: &mut Sources, errors: &mut Vec<String>) -> Dict {
    let mut dict = Dict::new();
    for f in &a.values {
        let value = match &f.value {
            FlagValue::Text(v) => Value::from(v.as_str()),
            FlagValue::Path(p) => match p.to_str() {
                Some(v) => Value::from(v),
                None => {
                    errors.push(format!("flag {}: the path is not UTF-8", f.name));
                    continue;
                }
            },
            FlagValue::Number(n) => Value::from(*n),
        };
        insert(&mut dict, &[f.key.to_string()], value);
        sources.flags.insert(vec![f.key.to_string()], f.name);
    }
    dict
}

/// Sets `path` in `dict` to `value`, making the tables on the way.
fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict.entry(first.clone()).or_insert_with(|| Value::from(Dict::new()));
    if !matches!(entry, Value::Dict(..)) {
        *entry = Value::from(Dict::new());
    }
    if let Value::Dict(_, inner) = entry {
        insert(inner, rest, value);
    }
}

/// The merged configuration, and every value that does not deserialize with what is wrong
/// with it (those are left at their defaults in the returned config).
fn extract(figment: &Figment) -> (FileConfig, Vec<(KeyPath, String)>) {
    let whole_error = match figment.extract_lossy::<FileConfig>() {
        Ok(config) => return (config, Vec::new()),
        Err(e) => e,
    };
    let merged = figment.data().ok().and_then(|mut m| m.remove(&Profile::Default)).unwrap_or_default();
    let mut good = Dict::new();
    let mut bad = Vec::new();
    for (key, value) in &merged {
        walk(&mut vec![key.clone()], value, &mut good, &mut bad);
    }
    if bad.is_empty() {
        bad.push((Vec::new(), describe_error(&whole_error)));
    }
    let config = Figment::new().merge(Layer { name: "valid values", dict: good }).extract_lossy().unwrap_or_default();
    (config, bad)
}

/// Tries `value` at `path` alone; when it fails, tries its entries one by one, so that only
/// the bad leaves are reported and the good ones kept.
fn walk(path: &mut KeyPath, value: &Value, good: &mut Dict, bad: &mut Vec<(KeyPath, String)>) {
    let error = match probe(path, value) {
        Ok(()) => {
            insert(good, path, value.clone());
            return;
        }
        Err(e) => e,
    };
    // This very key is unknown: one problem, not one per entry below it.
    let unknown_here = matches!(&error.kind, Kind::UnknownField(name, _) if Some(name) == path.last())
        && error.path.len() + 1 == path.len();
    if let (Value::Dict(_, entries), false) = (value, unknown_here) {
        let before = bad.len();
        for (key, inner) in entries {
            path.push(key.clone());
            walk(path, inner, good, bad);
            path.pop();
        }
        if bad.len() > before {
            return;
        }
    }
    let message = if path.len() == 1 && path[0] == "here_api_key" {
        // The message would quote the value, and the value is the key.
        "must be a string (the value is not shown)".to_string()
    } else {
        describe_error(&error)
    };
    bad.push((path.clone(), message));
}

/// Deserializes a config holding only `value` at `path` (defaults elsewhere).
fn probe(path: &[String], value: &Value) -> Result<(), Box<figment::Error>> {
    let mut dict = Dict::new();
    insert(&mut dict, path, value.clone());
    Figment::new().merge(Layer { name: "probe", dict }).extract_lossy::<FileConfig>().map(|_| ()).map_err(Box::new)
}

/// An unsigned integer type, as serde names what it expected.
fn is_unsigned(expected: &str) -> bool {
    matches!(expected, "usize" | "u64" | "u32" | "u16" | "u8")
}

/// The known name closest to a misspelt `field` (at most 2 edits, and fewer than a third of its
/// letters), if there is one.
fn closest<'a>(field: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (field.chars().count() / 3).clamp(1, 2);
    known.iter().map(|k| (edit_distance(field, k), *k)).filter(|(d, _)| *d <= limit).min().map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Where a problem was found, for listing problems in order: the file's by line, then the
/// environment's, then the flags', then the rest (validation of the merged whole).
fn problem_order(message: &str) -> (u8, usize) {
    let line = message
        .split_once(" line ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    match line {
        Some(n) => (0, n),
        None if message.starts_with("env ") => (1, 0),
        None if message.starts_with("flag ") => (2, 0),
        None => (3, 0),
    }
}

fn describe_error(e: &figment::Error) -> String {
    match &e.kind {
        Kind::Message(m) => m.clone(),
        Kind::UnknownField(field, []) => format!("`{field}` is not a setting"),
        Kind::UnknownField(field, known) => match closest(field, known) {
            Some(near) => format!("`{field}` is not a setting; did you mean `{near}`?"),
            None => format!("`{field}` is not a setting (known here: {})", known.join(", ")),
        },
        Kind::InvalidValue(found, expected) | Kind::InvalidType(found, expected) if is_unsigned(expected) => {
            format!("expected a whole number (0 or more), found {found}")
        }
        Kind::UnknownVariant(v, known) => format!("`{v}` is not one of: {}", known.join(", ")),
        Kind::InvalidType(found, expected) => format!("expected {expected}, found {found}"),
        other => other.to_string(),
    }
}

impl Settings {
    /// Loads defaults -> file -> environment -> flags and validates. The error lists every
    /// problem found, each naming its source.
    pub fn load(args: &Flags) -> Result<Settings, ConfigErrors> {
        Self::load_effective(args).map(|(settings, _)| settings)
    }

    /// Like [`Settings::load`], and also gives the merged [`FileConfig`] the settings were
    /// validated from (see [`FileConfig::effective_toml`]).
    pub fn load_effective(args: &Flags) -> Result<(Settings, FileConfig), ConfigErrors> {
        load(args, std::env::vars_os())
    }
}

impl FileConfig {
    /// This configuration as a TOML config file that works as one: `workers` resolved from
    /// `settings`, every index policy with the values that apply (`[defaults]` with the built-in
    /// ones filled in, each `[index.<name>]` with what it inherits), and the secrets left out, each
    /// named in a comment at the top (the HERE key, the admin token, Redis's password: a
    /// placeholder in their place would not be valid where they go). It parses back into a
    /// `FileConfig` that gives the same `Settings` but those secrets.
    pub fn effective_toml(&self, settings: &Settings) -> String {
        let mut shown = self.clone();
        shown.workers = Some(settings.workers);
        let mut left_out: Vec<String> = Vec::new();
        if shown.here_api_key.take().is_some() {
            left_out.push("here_api_key (the HERE key) is set but not shown".into());
        }
        if shown.admin_token.take().is_some() {
            left_out.push("admin_token is set but not shown".into());
        }
        if let Some(url) = shown.redis_url.as_deref() {
            let without = without_password(url);
            if without != url {
                left_out.push("redis_url has a password, not shown: add it back as redis://:PASSWORD@host".into());
                shown.redis_url = Some(without);
            }
        }
        let nodes: Vec<String> = shown.redis_nodes.iter().map(|n| without_password(n)).collect();
        if nodes != shown.redis_nodes {
            left_out.push("redis_nodes have passwords, not shown: add them back as redis://:PASSWORD@host".into());
            shown.redis_nodes = nodes;
        }
        if settings.default_policy.rate_limit.is_some_and(|r| r.shipped) {
            left_out.push(format!(
                "[defaults] rate_limit: the built-in client limit applies ({} requests/s after a burst of {}, per \
                 pod); rate_limit = 0 turns it off",
                super::defaults::DEFAULT_RATE_LIMIT,
                super::defaults::DEFAULT_RATE_BURST
            ));
        }
        shown.defaults = effective_policy(&shown.defaults, &builtin_policy_file());
        for p in shown.index.values_mut() {
            *p = effective_policy(p, &shown.defaults);
        }
        let body = toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot be shown as TOML: {e}\n"));
        let notes: String = left_out.iter().map(|n| format!("# {n}\n")).collect();
        format!("# tile-proxy effective configuration (defaults < file < environment < flags)\n{notes}{body}")
    }
}

/// The built-in policy of an index, as the file spells it (what `[defaults]` falls back to).
fn builtin_policy_file() -> PolicyFileConfig {
    let b = super::validate::builtin_policy();
    PolicyFileConfig {
        ttl: b.ttl,
        stale_while_revalidate: Some(b.stale_while_revalidate),
        stale_if_error: Some(b.stale_if_error),
        early_refresh_beta: Some(b.early_refresh_beta),
        negative_ttl: Some(b.negative_ttl),
        client_cache_control: b.client_cache_control,
        budget_hour: b.budget.hour,
        budget_day: b.budget.day,
        traffic_ttl: Some(b.traffic.ttl),
        traffic_stale_if_error: Some(b.traffic.stale_if_error),
        traffic_budget_hour: b.traffic.budget.hour,
        traffic_budget_day: b.traffic.budget.day,
        rate_limit: None,
        rate_burst: None,
        api_key_env: None,
        api_key_file: None,
    }
}

/// `p` with every unset value taken from `base` (the section it inherits from); its own key
/// settings stay its own.
fn effective_policy(p: &PolicyFileConfig, base: &PolicyFileConfig) -> PolicyFileConfig {
    PolicyFileConfig {
        ttl: p.ttl.or(base.ttl),
        stale_while_revalidate: p.stale_while_revalidate.or(base.stale_while_revalidate),
        stale_if_error: p.stale_if_error.or(base.stale_if_error),
        early_refresh_beta: p.early_refresh_beta.or(base.early_refresh_beta),
        negative_ttl: p.negative_ttl.or(base.negative_ttl),
        client_cache_control: p.client_cache_control.clone().or_else(|| base.client_cache_control.clone()),
        budget_hour: p.budget_hour.or(base.budget_hour),
        budget_day: p.budget_day.or(base.budget_day),
        traffic_ttl: p.traffic_ttl.or(base.traffic_ttl),
        traffic_stale_if_error: p.traffic_stale_if_error.or(base.traffic_stale_if_error),
        traffic_budget_hour: p.traffic_budget_hour.or(base.traffic_budget_hour),
        traffic_budget_day: p.traffic_budget_day.or(base.traffic_budget_day),
        rate_limit: p.rate_limit.or(base.rate_limit),
        rate_burst: p.rate_burst.or(if p.rate_limit.is_some() { None } else { base.rate_burst }),
        api_key_env: p.api_key_env.clone(),
        api_key_file: p.api_key_file.clone(),
    }
}

/// A Redis URL without its password (the user name kept).
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some(("", _)) => format!("{scheme}://{host}"),
            Some((user, _)) => format!("{scheme}://{user}@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tile-proxy.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load_ok(args: &Flags, env: &[(&str, &str)]) -> (Settings, FileConfig) {
        load(args, vars(env)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn load_err(args: &Flags, env: &[(&str, &str)]) -> Vec<String> {
        load(args, vars(env)).map(|_| ()).expect_err("invalid").0
    }

    #[test]
    fn decimals_from_the_environment_keep_their_value() {
        let env = [
            ("HERE_API_KEY", "k"),
            ("TILE_PROXY_UPSTREAM_RPS", "0.3"),
            ("TILE_PROXY_DEFAULTS__RATE_LIMIT", "0.7"),
            ("TILE_PROXY_DEFAULTS__EARLY_REFRESH_BETA", "0.83"),
        ];
        let (s, f) = load_ok(&Flags::default(), &env);
        // Read as f32 (figment's reading of short strings) 0.3 became 0.30000001192092896 and
        // the interval 3333333 µs instead of 3333333.33...
        assert_eq!(f.upstream_rps, Some(0.3));
        assert_eq!(f.defaults.rate_limit, Some(0.7));
        assert_eq!(f.defaults.early_refresh_beta, Some(0.83));
        assert_eq!(s.default_policy.early_refresh_beta, 0.83);
        assert_eq!(s.upstream_interval, Some(Duration::from_secs_f64(1.0 / 0.3)));
        let shown = f.effective_toml(&s);
        assert!(shown.contains("upstream_rps = 0.3\n"), "{shown}");
        assert!(shown.contains("early_refresh_beta = 0.83\n"), "{shown}");
    }

    #[test]
    fn billing_prices_keep_their_decimals_and_bad_ones_are_named() {
        let (_dir, path) = file("[billing.vector]\nprice_per_1000 = 1.25\nfree_per_month = 250000\n");
        let env = [("HERE_API_KEY", "k"), ("TILE_PROXY_BILLING__RASTER__PRICE_PER_1000", "0.83")];
        let (s, f) = load_ok(&Flags::file(&path), &env);
        assert_eq!(s.billing.prices[0].per_1000, 0.83, "not 0.8299999833 (figment reads short strings as f32)");
        assert_eq!((s.billing.prices[1].per_1000, s.billing.prices[1].free_per_month), (1.25, 250_000));
        assert!(s.billing.bill_not_modified, "the default");
        let shown: FileConfig = toml::from_str(&f.effective_toml(&s)).unwrap();
        assert_eq!(shown.billing, f.billing, "check-config shows [billing] as it applies");

        let (_dir, path) = file("[billing.traffic_vector]\nprice_per_1000 = -1\n");
        let errs = load_err(&Flags::file(&path), &[("HERE_API_KEY", "k")]);
        assert!(errs.iter().any(|e| e.contains("billing.traffic_vector.price_per_1000")), "{errs:?}");
        let errs = load_err(
            &Flags::default(),
            &[("HERE_API_KEY", "k"), ("TILE_PROXY_BILLING__RASTER__PRICE_PER_1000", "cheap")],
        );
        assert!(errs.iter().any(|e| e.contains("TILE_PROXY_BILLING__RASTER__PRICE_PER_1000")), "{errs:?}");
    }

    #[test]
    fn environment_names() {
        let cases: [(&str, Option<&[&str]>); 8] = [
            ("TILE_PROXY_LISTEN", Some(&["listen"])),
            ("TILE_PROXY_UPSTREAM__HEAD_TIMEOUT", Some(&["upstream", "head_timeout"])),
            ("TILE_PROXY_INDEX__MyIdx__TTL", Some(&["index", "MyIdx", "ttl"])),
            ("HERE_API_KEY", Some(&["here_api_key"])),
            ("CACHE_TTL_CAP", Some(&["ttl_cap"])),
            ("TILE_PROXY_CONFIG", None),
            ("PATH", None),
            ("tile_proxy_listen", None),
        ];
        for (name, want) in cases {
            let got = env_key(name).map(|r| r.unwrap());
            assert_eq!(got, want.map(|w| w.iter().map(|s| s.to_string()).collect()), "{name}");
        }
        assert!(env_key("TILE_PROXY_UPSTREAM____HEAD_TIMEOUT").unwrap().is_err());
        assert!(env_key("TILE_PROXY_").unwrap().is_err());
    }

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let (_dir, path) = file(
            "listen = \"127.0.0.1:1001\"\nmemory_cache = \"64MiB\"\ndisk_cache = \"0\"\nupstream_requires_key = false\n\
             [upstream]\nhead_timeout = \"3s\"\nbody_timeout = \"9s\"\n[index.abc]\nttl = \"5m\"\n",
        );
        let args = Flags::file(path);
        let env = [
            ("TILE_PROXY_LISTEN", "127.0.0.1:1002"),
            ("TILE_PROXY_UPSTREAM__HEAD_TIMEOUT", "4s"),
            ("TILE_PROXY_INDEX__abc__STALE_IF_ERROR", "2h"),
            ("TILE_PROXY_WORKERS", "3"),
            ("TILE_PROXY_REJECT_UNKNOWN_PARAMS", "false"),
            ("TILE_PROXY_CORS_ORIGINS", "https://a.example, https://b.example:8443"),
            ("CACHE_TTL_CAP", "3600"),
            ("UNRELATED", "x"),
        ];
        // file only
        let (s, _) = load_ok(&args, &[]);
        assert_eq!(s.listen.port(), 1001);
        assert_eq!(s.upstream.head_timeout, Duration::from_secs(3));
        // file < env
        let (s, f) = load_ok(&args, &env);
        assert_eq!(s.listen.port(), 1002);
        assert_eq!(s.memory_cache, 64 << 20, "the file still counts where env says nothing");
        assert_eq!(s.disk_cache, 0);
        assert_eq!(s.upstream.head_timeout, Duration::from_secs(4));
        assert_eq!(s.upstream.body_timeout, Duration::from_secs(9));
        assert_eq!(s.policy("abc").ttl, Some(Duration::from_secs(300)));
        assert_eq!(s.policy("abc").stale_if_error, Duration::from_secs(7200));
        assert_eq!(s.workers, 3);
        assert!(!s.reject_unknown_params);
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example:8443"]);
        assert_eq!(s.ttl_cap, Duration::from_secs(3600));
        assert_eq!(f.index["abc"].ttl, Some(Duration::from_secs(300)));
        // file < env < flags
        let flags = args
            .clone()
            .with("listen", "--listen", FlagValue::Text("127.0.0.1:1003".into()))
            .with("workers", "--workers", FlagValue::Number(5))
            .with("ttl_cap", "--ttl-cap", FlagValue::Number(60))
            .with("memory_cache", "--memory-cache", FlagValue::Text("32MiB".into()));
        let (s, _) = load_ok(&flags, &env);
        assert_eq!(s.listen.port(), 1003);
        assert_eq!(s.workers, 5);
        assert_eq!(s.ttl_cap, Duration::from_secs(60));
        assert_eq!(s.memory_cache, 32 << 20);
        assert_eq!(s.upstream.head_timeout, Duration::from_secs(4));
    }

    #[test]
    fn the_tile_proxy_spelling_wins_over_the_legacy_one() {
        let args = Flags::default();
        let (s, _) = load_ok(&args, &[("HERE_API_KEY", "legacy"), ("TILE_PROXY_HERE_API_KEY", "new")]);
        assert_eq!(s.api_key.as_deref(), Some("new"));
        let (s, _) = load_ok(&args, &[("HERE_API_KEY", "k"), ("CACHE_TTL_CAP", "60"), ("TILE_PROXY_TTL_CAP", "2h")]);
        assert_eq!(s.ttl_cap, Duration::from_secs(7200));
        let (s, _) = load_ok(&args, &[("HERE_API_KEY", "k"), ("TILE_PROXY_LISTEN", "")]);
        assert_eq!(s.listen.to_string(), crate::config::DEFAULT_LISTEN, "empty = unset");
    }

    #[test]
    fn every_bad_value_is_named_by_its_source() {
        let (_dir, path) = file(
            "here_api_key = \"k\"\n\
             memory_cache = \"lots\"\n\
             listen = \"nowhere\"\n\
             listen_port = 3\n\
             [upstream]\n\
             retry_attempts = 0\n\
             upstream = 1\n\
             [index.abc]\n\
             ttl = \"forever\"\n\
             stale_if_error = \"1h\"\n",
        );
        let args =
            Flags::file(path.clone()).with("raster_upstream", "--raster-upstream", FlagValue::Text("ftp://x".into()));
        let errs = load_err(
            &args,
            &[
                ("TILE_PROXY_UPSTREAM__BODY_TIMEOUT", "soon"),
                ("TILE_PROXY_LISTN", "127.0.0.1:1"),
                ("TILE_PROXY_UNKNOWN_INDICES", "maybe"),
                ("TILE_PROXY_DEFAULTS__TTL", "400d"),
            ],
        );
        let p = path.display();
        let expect = [
            format!("{p} line 2 (memory_cache): `lots` is not a size"),
            format!("{p} line 3 (listen): `nowhere` is not an address"),
            format!("{p} line 4 (listen_port): `listen_port` is not a setting"),
            format!("{p} line 6 (upstream.retry_attempts): 0 is out of range"),
            format!("{p} line 7 (upstream.upstream): `upstream` is not a setting"),
            format!("{p} line 9 (index.abc.ttl): `forever` is not a duration"),
            "env TILE_PROXY_UPSTREAM__BODY_TIMEOUT (upstream.body_timeout): `soon` is not a duration".into(),
            "env TILE_PROXY_LISTN (listn): `listn` is not a setting".into(),
            "env TILE_PROXY_UNKNOWN_INDICES (unknown_indices): `maybe` is not one of: allow, reject".into(),
            "env TILE_PROXY_DEFAULTS__TTL (defaults.ttl): 400d is too long: at most 365d".into(),
            "flag --raster-upstream (raster_upstream): `ftp://x` is not an http(s):// base URL".into(),
        ];
        for want in &expect {
            assert!(errs.iter().any(|e| e.starts_with(want.as_str())), "missing {want:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        // In the file's line order, then the environment's, then the flags'.
        let file_lines: Vec<usize> =
            errs.iter().filter_map(|e| Some(problem_order(e)).filter(|o| o.0 == 0)).map(|o| o.1).collect();
        assert_eq!(file_lines, [2, 3, 4, 6, 7, 9], "{errs:#?}");
        assert!(errs.windows(2).all(|w| problem_order(&w[0]).0 <= problem_order(&w[1]).0), "{errs:#?}");
    }

    #[test]
    fn misspellings_negative_counts_unquoted_text_and_duration_flags_get_helpful_answers() {
        let (_dir, path) = file("here_api_key = \"k\"\nmemroy_cache = \"64MiB\"\n[upstream]\nhead_timout = \"5s\"\n");
        let errs = load_err(&Flags::file(path), &[("TILE_PROXY_WORKERS", "-3"), ("TILE_PROXY_LISTN", "x")]);
        let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
        assert!(has("`memroy_cache` is not a setting; did you mean `memory_cache`?"), "{errs:#?}");
        assert!(has("`head_timout` is not a setting; did you mean `head_timeout`?"), "{errs:#?}");
        assert!(has("`listn` is not a setting; did you mean `listen`?"), "{errs:#?}");
        assert!(has("env TILE_PROXY_WORKERS (workers): expected a whole number (0 or more), found"), "{errs:#?}");
        assert!(!has("usize"), "{errs:#?}");
        // Far from every key: the list of known ones instead of a guess.
        let errs = load_err(&Flags::default(), &[("HERE_API_KEY", "k"), ("TILE_PROXY_ZZZZZZZZ", "1")]);
        assert!(errs[0].contains("known here: listen"), "{errs:#?}");
        // A text value without quotes: the TOML error says how to write it.
        let (_dir, path) = file("here_api_key = \"k\"\nlisten = 127.0.0.1:8080\n");
        let errs = load_err(&Flags::file(path), &[]);
        assert!(
            errs[0].contains("line 2: TOML syntax error")
                && errs[0].contains("text values are quoted: listen = \"127.0.0.1:8080\""),
            "{errs:#?}"
        );
        // --ttl-cap takes a duration like CACHE_TTL_CAP.
        let args = Flags::default().with("ttl_cap", "--ttl-cap", FlagValue::Text("7d".into()));
        let (s, _) = load_ok(&args, &[("HERE_API_KEY", "k")]);
        assert_eq!(s.ttl_cap, Duration::from_secs(7 * 86400));
        assert_eq!(edit_distance("memroy_cache", "memory_cache"), 1);
        assert_eq!(closest("zzz", &["listen", "workers"]), None);
    }

    #[test]
    fn a_key_of_the_wrong_type_is_not_quoted() {
        let (_dir, path) = file("here_api_key = 123456789\n");
        let errs = load_err(&Flags::file(path.clone()), &[]);
        assert_eq!(
            errs,
            [format!("{} line 1 (here_api_key): must be a string (the value is not shown)", path.display())]
        );
    }

    #[test]
    fn a_syntax_error_is_listed_with_the_others() {
        let (_dir, path) = file("listen = \"127.0.0.1:1\"\n[upstream\nhead_timeout = \"1s\"\n");
        let args = Flags::file(path.clone());
        let errs = load_err(&args, &[("HERE_API_KEY", "k"), ("TILE_PROXY_MEMORY_CACHE", "0")]);
        assert!(errs[0].starts_with(&format!("{} line 2: TOML syntax error", path.display())), "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("env TILE_PROXY_MEMORY_CACHE (memory_cache): must be at least")));
        assert_eq!(errs.len(), 2, "{errs:#?}");

        let args = Flags::file("/nonexistent/tile-proxy.toml");
        let errs = load_err(&args, &[("HERE_API_KEY", "k")]);
        assert!(errs[0].contains("/nonexistent/tile-proxy.toml: cannot read it"), "{errs:#?}");
    }

    #[test]
    fn index_keys_come_from_the_named_variable_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "FILEKEY\n").unwrap();
        let (_d, path) = file(&format!(
            "[index.a]\napi_key_env = \"A_KEY\"\n[index.b]\napi_key_file = \"{}\"\n\
             [index.c]\napi_key_env = \"C_KEY\"\napi_key_file = \"{}\"\n",
            key_file.display(),
            key_file.display()
        ));
        let args = Flags::file(path.clone());
        let (s, f) = load_ok(&args, &[("HERE_API_KEY", "k"), ("A_KEY", "AKEY")]);
        assert_eq!(s.index_keys["a"], "AKEY");
        assert_eq!(s.index_keys["b"], "FILEKEY");
        assert_eq!(s.index_keys["c"], "FILEKEY", "file when the variable is unset");
        assert!(!format!("{s:?}").contains("AKEY") && !format!("{s:?}").contains("FILEKEY"));
        let shown = f.effective_toml(&s);
        assert!(!shown.contains("AKEY") && !shown.contains("FILEKEY"), "{shown}");

        let errs =
            load_err(&Flags::file(path.clone()), &[("HERE_API_KEY", "k"), ("A_KEY", " "), ("C_KEY", "bad key!")]);
        let p = path.display();
        assert!(
            errs.iter()
                .any(|e| e
                    .starts_with(&format!("{p} line 2 (index.a.api_key_env): environment variable A_KEY is empty"))),
            "{errs:#?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("{p} line 6 (index.c.api_key_env): C_KEY: the key holds"))),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");

        std::fs::remove_file(&key_file).unwrap();
        let errs = load_err(&args, &[("HERE_API_KEY", "k")]);
        assert!(
            errs.iter().any(|e| e.contains("(index.a.api_key_env): environment variable A_KEY is not set")),
            "{errs:#?}"
        );
        assert!(errs.iter().any(|e| e.contains("(index.b.api_key_file): cannot read")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("(index.c.api_key_file): cannot read")), "{errs:#?}");
        assert!(
            errs.iter().any(|e| e.contains("(index.c.api_key_env): environment variable C_KEY is not set")),
            "{errs:#?}"
        );
    }

    #[test]
    fn the_effective_configuration_parses_back() {
        let (_dir, path) = file(
            "here_api_key = \"SECRETKEY\"\ntrusted_proxies = [\"10.1.2.3/8\", \"::1\"]\n[index.abc]\nttl = \"90s\"\n",
        );
        let args = Flags::file(path);
        let (s, f) = load_ok(&args, &[("TILE_PROXY_DEFAULTS__CLIENT_CACHE_CONTROL", "public, max-age={max_age}")]);
        let text = f.effective_toml(&s);
        assert!(!text.contains("SECRETKEY"), "{text}");
        assert!(text.contains("# here_api_key (the HERE key) is set but not shown"), "{text}");
        let back: FileConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.here_api_key, None, "left out, not a placeholder");
        assert_eq!(back.workers, Some(s.workers));
        // The effective policies are written out: the built-in ones in [defaults], what [index.abc]
        // inherits in its section.
        assert_eq!(back.defaults.stale_if_error, Some(Duration::from_secs(86400)), "{text}");
        assert_eq!(back.defaults.negative_ttl, Some(Duration::from_secs(60)));
        assert_eq!(back.defaults.early_refresh_beta, Some(1.0));
        assert_eq!(back.index["abc"].ttl, Some(Duration::from_secs(90)));
        assert_eq!(back.index["abc"].client_cache_control.as_deref(), Some("public, max-age={max_age}"));
        // Fed back (with the key added again), it is the same configuration.
        let again = Settings::from_file_config(FileConfig { here_api_key: f.here_api_key.clone(), ..back }).unwrap();
        assert_eq!(format!("{again:?}"), format!("{s:?}"));
        assert_eq!(s.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["10.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn redis_settings_from_env_and_flags_with_the_password_and_token_kept_out_of_sight() {
        let (s, f) = load_ok(
            &Flags::default(),
            &[
                ("HERE_API_KEY", "k"),
                ("REDIS_URL", "redis://:hunter2-pass@redis:6379/1"),
                ("TILE_PROXY_REDIS__TIMEOUT", "30ms"),
                ("TILE_PROXY_REDIS__CONNECTIONS", "2"),
                ("TILE_PROXY_ADMIN_TOKEN", "0123456789abcdef-admin"),
            ],
        );
        let r = s.redis.as_ref().expect("redis on");
        assert_eq!(
            (r.url.as_str(), r.timeout, r.connections),
            ("redis://:hunter2-pass@redis:6379/1", Duration::from_millis(30), 2)
        );
        assert_eq!(r.lease, Duration::from_secs(6), "short: renewed while its fetch runs");
        assert_eq!(r.lease_wait, Duration::from_secs(36), "head_timeout x attempts + retry_total + 1s");
        assert_eq!(s.admin_token.as_deref(), Some("0123456789abcdef-admin"));
        let shown = format!("{s:?}\n{}", f.effective_toml(&s));
        assert!(!shown.contains("hunter2-pass") && !shown.contains("0123456789abcdef-admin"), "{shown}");
        assert!(shown.contains("redis://:<redacted>@redis:6379/1"), "the Debug form: {shown}");
        let toml_text = f.effective_toml(&s);
        assert!(toml_text.contains("redis_url = \"redis://redis:6379/1\""), "{toml_text}");
        assert!(toml_text.contains("# redis_url has a password, not shown"), "{toml_text}");
        assert!(toml_text.contains("# admin_token is set but not shown"), "{toml_text}");
        assert_eq!(without_password("rediss://user:pw@h:1"), "rediss://user@h:1");
        assert_eq!(without_password("redis://h:1"), "redis://h:1");
        let args =
            Flags::default().with("redis_url", "--redis-url", FlagValue::Text("rediss://cache.internal:6380".into()));
        let (s, _) = load_ok(&args, &[("HERE_API_KEY", "k"), ("REDIS_URL", "redis://ignored:1")]);
        assert_eq!(s.redis.unwrap().url, "rediss://cache.internal:6380", "the flag wins");
        let (s, _) = load_ok(&Flags::default(), &[("HERE_API_KEY", "k")]);
        assert!(s.redis.is_none() && s.admin_token.is_none(), "both off by default");
        let errs = load_err(
            &Flags::default(),
            &[("HERE_API_KEY", "k"), ("REDIS_URL", "http://nope"), ("TILE_PROXY_ADMIN_TOKEN", "short")],
        );
        assert!(errs.iter().any(|e| e.contains("(redis_url)") && e.contains("not a Redis URL")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains("(admin_token)") && e.contains("at least 16")), "{errs:#?}");
    }

    #[test]
    fn redis_cluster_mode_takes_seed_nodes_and_every_mistake_is_named() {
        use crate::config::RedisTopology;
        let (s, f) = load_ok(
            &Flags::default(),
            &[
                ("HERE_API_KEY", "k"),
                ("TILE_PROXY_REDIS_MODE", "cluster"),
                ("TILE_PROXY_REDIS_NODES", "redis://:seedpass77@r0:6379, redis://r1:6379"),
            ],
        );
        let r = s.redis.as_ref().expect("redis on");
        assert_eq!(
            r.mode,
            RedisTopology::Cluster { nodes: vec!["redis://:seedpass77@r0:6379".into(), "redis://r1:6379".into()] }
        );
        let toml_text = f.effective_toml(&s);
        assert!(toml_text.contains("redis_mode = \"cluster\""), "{toml_text}");
        assert!(!toml_text.contains("seedpass77") && !format!("{s:?}").contains("seedpass77"), "{toml_text}");
        assert!(toml_text.contains("# redis_nodes have passwords, not shown"), "{toml_text}");
        // redis_url alone is the one seed.
        let (s, _) = load_ok(
            &Flags::default(),
            &[("HERE_API_KEY", "k"), ("TILE_PROXY_REDIS_MODE", "cluster"), ("REDIS_URL", "redis://r:1")],
        );
        assert_eq!(s.redis.unwrap().mode, RedisTopology::Cluster { nodes: vec!["redis://r:1".into()] });
        let errs = load_err(&Flags::default(), &[("HERE_API_KEY", "k"), ("TILE_PROXY_REDIS_MODE", "cluster")]);
        assert!(errs.iter().any(|e| e.starts_with("redis_nodes") && e.contains("needs seed nodes")), "{errs:#?}");
        let errs = load_err(
            &Flags::default(),
            &[
                ("HERE_API_KEY", "k"),
                ("TILE_PROXY_REDIS_MODE", "cluster"),
                ("TILE_PROXY_REDIS_NODES", "redis://a:1,http://b"),
            ],
        );
        assert!(
            errs.iter().any(|e| e.contains("(redis_nodes)") && e.contains("`http://b` is not a Redis URL")),
            "{errs:#?}"
        );
        let errs = load_err(
            &Flags::default(),
            &[("HERE_API_KEY", "k"), ("REDIS_URL", "redis://r:1"), ("TILE_PROXY_REDIS_NODES", "redis://a:1")],
        );
        assert!(errs.iter().any(|e| e.contains("(redis_nodes)") && e.contains("only used with")), "{errs:#?}");
        // Sentinel: the Sentinels and the name they monitor; redis_url gives the primary's password.
        let (s, _) = load_ok(
            &Flags::default(),
            &[
                ("HERE_API_KEY", "k"),
                ("TILE_PROXY_REDIS_MODE", "sentinel"),
                ("TILE_PROXY_REDIS_NODES", "redis://s0:26379,redis://s1:26379"),
                ("TILE_PROXY_REDIS_MASTER_NAME", "tiles"),
                ("REDIS_URL", "redis://:primarypass@ignored:1/2"),
            ],
        );
        let r = s.redis.as_ref().expect("redis on");
        assert_eq!(
            r.mode,
            RedisTopology::Sentinel {
                sentinels: vec!["redis://s0:26379".into(), "redis://s1:26379".into()],
                master: "tiles".into()
            }
        );
        assert!(!format!("{s:?}").contains("primarypass"));
        let errs = load_err(&Flags::default(), &[("HERE_API_KEY", "k"), ("TILE_PROXY_REDIS_MODE", "sentinel")]);
        assert!(errs.iter().any(|e| e.starts_with("redis_master_name") && e.contains("needs the name")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("redis_nodes") && e.contains("needs the Sentinels")), "{errs:#?}");
        let errs = load_err(&Flags::default(), &[("HERE_API_KEY", "k"), ("TILE_PROXY_REDIS_MODE", "ring")]);
        assert!(errs.iter().any(|e| e.contains("redis_mode")), "{errs:#?}");
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        use crate::config::redact_url;
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:<redacted>@h:1/0");
        assert_eq!(redact_url("rediss://user:pw@h:1"), "rediss://user:<redacted>@h:1");
        assert_eq!(redact_url("redis://token@h"), "redis://<redacted>@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn kubernetes_service_links_are_not_settings() {
        for (name, value) in [
            ("PORT", "tcp://10.96.0.7:8080"),
            ("SERVICE_HOST", "10.96.0.7"),
            ("SERVICE_PORT", "8080"),
            ("SERVICE_PORT_HTTP", "8080"),
            ("PORT_8080_TCP", "tcp://10.96.0.7:8080"),
            ("PORT_8080_TCP_PROTO", "tcp"),
            ("PORT_8080_TCP_PORT", "8080"),
            ("PORT_8080_TCP_ADDR", "10.96.0.7"),
            ("HEADLESS_SERVICE_HOST", "fd00::7"),
            ("HEADLESS_PORT", "tcp://10.96.0.8:8080"),
            ("REDIS_SERVICE_PORT", "6379"),
        ] {
            assert!(is_service_link(name, value), "{name}={value}");
        }
        for (name, value) in [
            ("LISTEN", "0.0.0.0:8080"),
            ("LISTEN_PORT", "8080"),
            ("PORT", "8080"),
            ("SERVICE_HOST", "example.com"),
            ("REDIS_URL", "redis://r:6379"),
            ("PORTS", "tcp://x"),
        ] {
            assert!(!is_service_link(name, value), "{name}={value}");
        }
        // A Service named tile-proxy in the namespace no longer stops the pod.
        let env = [
            ("HERE_API_KEY", "k"),
            ("TILE_PROXY_PORT", "tcp://10.96.0.7:8080"),
            ("TILE_PROXY_SERVICE_HOST", "10.96.0.7"),
            ("TILE_PROXY_SERVICE_PORT", "8080"),
            ("TILE_PROXY_PORT_8080_TCP_ADDR", "10.96.0.7"),
        ];
        load_ok(&Flags::default(), &env);
        let errs = load_err(&Flags::default(), &[("HERE_API_KEY", "k"), ("TILE_PROXY_LISTEN_PORT", "8080")]);
        assert!(errs.iter().any(|e| e.contains("TILE_PROXY_LISTEN_PORT")), "a typo is still reported: {errs:#?}");
    }
}
