//! `tile-proxy purge`: the admin API's purge from the command line, against a running proxy (one
//! pod is enough: with Redis the rule reaches the whole fleet), the token from the environment.
//!
//! The flags become the body of `POST /admin/purge`; the proxy checks it (the same checks and
//! messages as for any API client) and answers with the rule, which is printed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Map, Value};

use crate::app::admin_client;

/// The flags of `purge`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["index", "tile_url", "bbox", "geojson", "tiles", "zoom"])))]
pub struct PurgeArgs {
    /// The proxy's admin base URL (its admin_listen address when set)
    #[arg(long, value_name = "URL", env = "TILE_PROXY_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Admin token [env: TILE_PROXY_ADMIN_TOKEN]
    #[arg(long, env = "TILE_PROXY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Only this index's tiles (alone: all of them)
    #[arg(long)]
    pub index: Option<String>,
    /// One tile, by the URL clients request (its index is in the URL's indice)
    #[arg(long = "tile-url", value_name = "URL", conflicts_with_all = ["bbox", "geojson", "tiles", "zoom"])]
    pub tile_url: Option<String>,
    /// The tiles of a bbox west,south,east,north in degrees
    #[arg(long, value_name = "W,S,E,N", allow_hyphen_values = true, conflicts_with_all = ["geojson", "tiles"])]
    pub bbox: Option<String>,
    /// The tiles a GeoJSON area covers (Polygon, MultiPolygon, Feature, FeatureCollection); needs --zoom
    #[arg(long, value_name = "FILE", requires = "zoom", conflicts_with = "tiles")]
    pub geojson: Option<PathBuf>,
    /// A tile list: z/x/y lines (an expire list), up to 100,000; - reads standard input
    #[arg(long, value_name = "FILE", conflicts_with = "zoom")]
    pub tiles: Option<PathBuf>,
    /// Zoom level (12) or range (10-14)
    #[arg(long, value_name = "Z|MIN-MAX")]
    pub zoom: Option<String>,
    /// Print the proxy's JSON answer instead of a summary
    #[arg(long)]
    pub json: bool,
}

impl PurgeArgs {
    /// The request body the flags describe.
    pub fn body(&self) -> Result<Value, String> {
        let mut o = Map::new();
        if let Some(index) = &self.index {
            o.insert("index".into(), json!(index));
        }
        if let Some(url) = &self.tile_url {
            o.insert("url".into(), json!(url));
        }
        if let Some(bbox) = &self.bbox {
            let bbox = crate::seed::tiles::parse_bbox(bbox).map_err(|e| e.to_string())?;
            o.insert("bbox".into(), json!(bbox));
        }
        if let Some(zoom) = &self.zoom {
            let (zmin, zmax) = crate::seed::tiles::parse_zoom(zoom).map_err(|e| e.to_string())?;
            o.insert("zoom".into(), json!([zmin, zmax]));
        }
        if let Some(path) = &self.geojson {
            let text = read(path)?;
            let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
            o.insert("geojson".into(), value);
        }
        if let Some(path) = &self.tiles {
            o.insert("tiles".into(), json!(read(path)?));
        }
        Ok(Value::Object(o))
    }
}

/// A file's text, or standard input's for `-`.
fn read(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("standard input: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// One line about the rule the proxy made.
pub fn describe(answer: &Value) -> String {
    let rule = &answer["rule"];
    let mut parts = Vec::new();
    if let Some(index) = rule["index"].as_str() {
        parts.push(format!("index {index}"));
    }
    if let Some(url) = rule["url"].as_str() {
        parts.push(format!("tile {url}"));
    }
    if let Some(bbox) = rule["bbox"].as_array() {
        let b: Vec<String> = bbox.iter().map(Value::to_string).collect();
        parts.push(format!("bbox {}", b.join(",")));
    }
    if let Some(n) = rule["tiles"]["count"].as_u64() {
        parts.push(format!("{n} tiles in {} runs", rule["tiles"]["runs"]));
    }
    if let Some([a, b]) = rule["zoom"].as_array().map(Vec::as_slice) {
        parts.push(format!("zoom {a}-{b}"));
    }
    let shared = match answer["shared"]["redis"].as_bool() {
        Some(true) => "shared with every pod through Redis",
        _ => "on this pod (no Redis)",
    };
    format!("purged: rule {} ({}), {shared}", rule["id"].as_str().unwrap_or("?"), parts.join(", "))
}

/// `tile-proxy purge`.
pub fn run_cli(args: &PurgeArgs) -> ExitCode {
    let body = match args.body() {
        Ok(body) => body,
        Err(e) => {
            eprintln!("tile-proxy purge: {e}");
            return ExitCode::from(2);
        }
    };
    match admin_client::call(&args.url, "/admin/purge", args.token.as_deref(), Some(body)) {
        Ok(answer) if args.json => {
            println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            println!("{}", describe(&answer));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tile-proxy purge: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        purge: PurgeArgs,
    }

    fn parse(args: &[&str]) -> Result<PurgeArgs, clap::Error> {
        Cli::try_parse_from([&["purge"], args].concat()).map(|c| c.purge)
    }

    #[test]
    fn flags_become_the_admin_api_body() {
        let body = parse(&["--index", "a", "--bbox", "-1,2,3,4", "--zoom", "3-5"]).unwrap().body().unwrap();
        assert_eq!(body, json!({"index": "a", "bbox": [-1.0, 2.0, 3.0, 4.0], "zoom": [3, 5]}));
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("expire.list");
        std::fs::write(&list, "12/1/2\n12/1/3\n").unwrap();
        let body = parse(&["--tiles", list.to_str().unwrap()]).unwrap().body().unwrap();
        assert_eq!(body, json!({"tiles": "12/1/2\n12/1/3\n"}));
        let area = dir.path().join("area.geojson");
        std::fs::write(&area, r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}"#).unwrap();
        let body = parse(&["--geojson", area.to_str().unwrap(), "--zoom", "7"]).unwrap().body().unwrap();
        assert_eq!(body["geojson"]["type"], "Polygon");
        assert_eq!(body["zoom"], json!([7, 7]));
        let body = parse(&["--tile-url", "/v3/base/mc/1/0/0/png?indice=a"]).unwrap().body().unwrap();
        assert_eq!(body, json!({"url": "/v3/base/mc/1/0/0/png?indice=a"}));
    }

    #[test]
    fn conflicting_or_missing_flags_are_refused() {
        assert!(parse(&[]).is_err(), "nothing to purge");
        assert!(parse(&["--geojson", "a.json"]).is_err(), "geojson without zoom");
        assert!(parse(&["--tiles", "a", "--zoom", "3"]).is_err());
        assert!(parse(&["--bbox", "1,2,3,4", "--tiles", "a"]).is_err());
        assert!(parse(&["--tile-url", "/u", "--zoom", "3"]).is_err());
        let missing = parse(&["--tiles", "/nonexistent/list"]).unwrap().body().unwrap_err();
        assert!(missing.starts_with("/nonexistent/list: "), "{missing}");
        assert!(parse(&["--bbox", "1,2,3"]).unwrap().body().unwrap_err().contains("bbox"));
    }

    #[test]
    fn the_summary_names_the_rule() {
        let answer = json!({"rule": {"id": "ab12", "index": "a", "zoom": [12, 14], "tiles": {"count": 3, "runs": 2, "zooms": [12, 14]}}, "shared": {"redis": true}});
        assert_eq!(
            describe(&answer),
            "purged: rule ab12 (index a, 3 tiles in 2 runs, zoom 12-14), shared with every pod through Redis"
        );
    }
}
