//! Layered loading with figment, later wins: built-in defaults → the TOML file (`bridge.toml`,
//! or `--config PATH`) → `SSE_BRIDGE_*` environment variables (`__` between nested keys; the
//! variables Kubernetes injects for Services named `sse-bridge…` are left out, see
//! [`super::service_links`]) → command-line flags. Then [`Config::validate`].
//!
//! Every error names the key and the file or variable that set it, which is why the loaded
//! figment is kept in [`Loaded`]: checks made later, by the modules that build runtime objects
//! from the configuration, name the source the same way.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use super::check::Invalid;
use super::error::{ConfigError, KeyError};
use super::root::Config;
use super::service_links::is_service_link;

/// The default configuration file name.
pub const DEFAULT_FILE: &str = "bridge.toml";
/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SSE_BRIDGE_";

/// Command-line overrides, applied after the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--log-level`
    pub log_level: Option<String>,
}

/// Where the configuration file comes from.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// `--config PATH`: must exist.
    Explicit(PathBuf),
    /// No flag: `bridge.toml` in the working directory if it exists, else built-in defaults.
    Default,
}

/// A configuration read from every layer and validated, with where each value came from.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file that was read; None: built-in defaults (and the environment, flags) only.
    pub path: Option<PathBuf>,
    figment: Figment,
}

impl Loaded {
    /// `e` as an operator reads it: with the file or variable that set the key.
    pub fn error(&self, e: Invalid) -> ConfigError {
        key_error(&self.figment, e.key, e.reason).into()
    }
}

impl Config {
    /// Loads the configuration from all layers and validates it ([`Config::validate`]).
    pub fn load(file: &ConfigFile, overrides: &Overrides) -> Result<Loaded, ConfigError> {
        Self::load_with_env(file, overrides, environment(std::env::vars_os()))
    }

    /// [`Config::load`] with a given environment layer (tests pass one that reads nothing).
    pub(super) fn load_with_env(file: &ConfigFile, overrides: &Overrides, env: Env) -> Result<Loaded, ConfigError> {
        let path = match file {
            ConfigFile::Explicit(p) if !p.is_file() => {
                let reason = if p.exists() { "not a regular file" } else { "no such file" };
                return Err(ConfigError::File { path: p.clone(), reason });
            }
            ConfigFile::Explicit(p) => Some(p.clone()),
            ConfigFile::Default => Path::new(DEFAULT_FILE).is_file().then(|| PathBuf::from(DEFAULT_FILE)),
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = &path {
            // `file_exact`: `Toml::file` would search parent folders for the name.
            fig = fig.merge(Toml::file_exact(p));
        }
        fig = fig.merge(env);
        if let Some(a) = overrides.listen {
            fig = fig.merge(Serialized::default("server.listen", a));
        }
        if let Some(a) = overrides.admin_listen {
            fig = fig.merge(Serialized::default("admin.listen", a));
        }
        if let Some(l) = &overrides.log_level {
            fig = fig.merge(Serialized::default("log.level", l));
        }
        let config: Config = fig.extract().map_err(|e| figment_error(&fig, e))?;
        let loaded = Loaded { config, path, figment: fig };
        loaded.config.validate().map_err(|e| loaded.error(e))?;
        Ok(loaded)
    }
}

/// The environment layer: every `SSE_BRIDGE_*` variable of `vars` except Kubernetes' service
/// links. The links are picked by name and value here, once; figment's filter sees names only.
fn environment(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Env {
    let links: Vec<String> = vars
        .filter_map(|(k, v)| {
            let (k, v) = (k.into_string().ok()?, v.into_string().ok()?);
            is_service_link(ENV_PREFIX, &k, &v).then(|| k[ENV_PREFIX.len()..].to_owned())
        })
        .collect();
    Env::prefixed(ENV_PREFIX).filter(move |key| !links.iter().any(|l| l == key.as_str())).split("__")
}

/// A failed check on `key`, naming where its value came from.
fn key_error(fig: &Figment, key: String, reason: impl Display) -> KeyError {
    let origin = describe_source(fig, &key);
    KeyError { key, origin, reason: reason.to_string() }
}

/// `from <provider> <source>`. A file is named by the path as given (`--config PATH` or
/// `bridge.toml`): figment's own `Display` rewrites it relative to the working directory, which
/// under a service manager (cwd `/`) turns `/etc/sse-bridge/bridge.toml` into
/// `etc/sse-bridge/bridge.toml`.
fn source_of(md: &figment::Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => format!("from {} {}", md.name, p.display()),
        Some(src) => format!("from {} {}", md.name, src),
        None => format!("from {}", md.name),
    }
}

/// Names where the value of `key` (or its nearest configured parent) came from.
fn describe_source(fig: &Figment, key: &str) -> String {
    let mut k = key.split('[').next().unwrap_or(key).to_string();
    loop {
        if let Some(md) = fig.find_metadata(&k) {
            return source_of(md);
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return "from defaults".into(),
        }
    }
}

/// Figment's errors (unknown keys, wrong types), one [`KeyError`] each.
fn figment_error(fig: &Figment, e: figment::Error) -> ConfigError {
    let errors = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match (&e.metadata, e.path.is_empty()) {
                (Some(md), _) => source_of(md),
                (None, false) => describe_source(fig, &key),
                (None, true) => "configuration".into(),
            };
            // For unknown fields figment's path already ends with the field itself.
            let key = match &e.kind {
                figment::error::Kind::UnknownField(f, _) if key.is_empty() => f.clone(),
                _ if key.is_empty() => "(root)".into(),
                _ => key,
            };
            KeyError { key, origin, reason: e.kind.to_string() }
        })
        .collect();
    ConfigError::Keys(errors)
}
