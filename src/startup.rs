//! The configuration as the binary loads it, before anything starts: every layer and the
//! configuration's own checks ([`Config::load`]), then the checks of the modules that build
//! runtime objects from it: the token keys and rules (`auth`), the durable streams' id tags
//! and the sources that would deliver the same messages twice (`durable`). Each error names
//! the key and the file or variable that set it, so `--check-config` and a normal start refuse
//! the same things in the same words.

use std::path::PathBuf;

use crate::config::{Config, ConfigError, ConfigFile, Invalid, Overrides};
use crate::durable::{Catalog, source_overlap};

/// Loads and checks everything `sse-bridge` needs to start; returns the configuration and the
/// file it came from (None: built-in defaults, the environment and flags only).
pub fn load_config(file: &ConfigFile, overrides: &Overrides) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let loaded = Config::load(file, overrides)?;
    runtime_checks(&loaded.config).map_err(|e| loaded.error(e))?;
    Ok((loaded.config, loaded.path))
}

/// What [`Config::validate`] leaves to the modules that own the runtime objects.
fn runtime_checks(config: &Config) -> Result<(), Invalid> {
    if let Some(a) = &config.auth {
        crate::auth::check(a, config.server.max_topic_length)?;
    }
    if let Some((a, b)) = Catalog::from_config(config).tag_collision() {
        return Err(Invalid::new("jetstream.streams", format!("{a:?} and {b:?} share the short id tag; rename one")));
    }
    if let Some(o) = source_overlap(config) {
        return Err(Invalid::new(
            o.key,
            format!(
                "{:?} overlaps `{}` = {:?}: {}; narrow one of them so each topic comes from one source",
                o.value, o.other_key, o.other_value, o.why
            ),
        ));
    }
    if let Some(tls) = &config.server.tls {
        crate::tls_files::check_server(tls)?;
    }
    crate::sources::check_files(config)?;
    Ok(())
}
