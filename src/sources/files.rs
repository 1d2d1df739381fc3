//! The broker sources' files, checked before anything starts (`--check-config` and startup):
//! CA bundles, client certificates and keys, credentials files, NKey seeds and secret files
//! are readable and parse. What only the broker can judge (a CA that did not sign this server,
//! credentials it refuses) is the source's log line and status when it connects.

use super::nats_connect::NatsSecurity;
use super::redis_connect::RedisConnect;
use crate::config::{Config, Invalid};

/// Every file the configured sources will read, checked as they will read it.
pub fn check_files(config: &Config) -> Result<(), Invalid> {
    if let Some(n) = &config.nats {
        NatsSecurity::of_nats(n).check()?;
    }
    if let Some(j) = &config.jetstream {
        NatsSecurity::of_jetstream(j).check()?;
    }
    if let Some(r) = &config.redis {
        RedisConnect::of_redis(r).check()?;
    }
    if let Some(r) = &config.redis_streams {
        RedisConnect::of_streams(r).check()?;
    }
    Ok(())
}
