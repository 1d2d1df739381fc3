//! Per-topic delivery rules (`[[delivery]]` in the config), compiled once at startup.
//!
//! The sequencer asks [`DeliveryRules::policy_for`] once per event, so each event carries its
//! slow-consumer policy to every queue without a lookup per subscriber. A new stream asks
//! [`DeliveryRules::rate_for`] once for the delivery rate of its filters.

use std::num::NonZeroU32;

use governor::Quota;

use crate::config::{DeliveryRule, SlowConsumerPolicy};
use crate::topic::{Pattern, TopicFilter};

/// The compiled rules plus the default policy.
#[derive(Debug, Clone)]
pub struct DeliveryRules {
    rules: Vec<(Pattern, DeliveryRule)>,
    default_policy: SlowConsumerPolicy,
}

impl DeliveryRules {
    /// Compiles validated rules (`Config::validate` checked the patterns).
    pub fn new(rules: &[DeliveryRule], default_policy: SlowConsumerPolicy) -> Self {
        DeliveryRules {
            rules: rules
                .iter()
                .filter_map(|r| Pattern::parse(&r.topics, usize::MAX).ok().map(|p| (p, r.clone())))
                .collect(),
            default_policy,
        }
    }

    /// The slow-consumer policy of events on `topic`: the first rule that matches and names a
    /// policy, else the default.
    pub fn policy_for(&self, topic: &str) -> SlowConsumerPolicy {
        self.rules
            .iter()
            .find_map(|(p, r)| if p.matches(topic) { r.slow_consumer } else { None })
            .unwrap_or(self.default_policy)
    }

    /// The delivery rate for a stream with these filters: the lowest `max_rate` among the rules
    /// that cover any filter (a pattern filter is covered when the rule matches its text, e.g.
    /// `ticker.>` covers `ticker.*`). None: unlimited.
    pub fn rate_for(&self, filters: &[TopicFilter]) -> Option<Quota> {
        let (rate, burst) = self
            .rules
            .iter()
            .filter(|(p, _)| filters.iter().any(|f| p.matches(f.as_str())))
            .filter_map(|(_, r)| r.max_rate.map(|rate| (rate, r.burst.unwrap_or(rate))))
            .min_by_key(|(rate, _)| *rate)?;
        let rate = NonZeroU32::new(rate)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(topics: &str, policy: Option<SlowConsumerPolicy>, rate: Option<u32>) -> DeliveryRule {
        DeliveryRule { topics: topics.into(), slow_consumer: policy, max_rate: rate, burst: None }
    }

    #[test]
    fn first_matching_rule_wins() {
        let r = DeliveryRules::new(
            &[
                rule("ticker.>", Some(SlowConsumerPolicy::Latest), Some(10)),
                rule(">", Some(SlowConsumerPolicy::DropOldest), None),
            ],
            SlowConsumerPolicy::Disconnect,
        );
        assert_eq!(r.policy_for("ticker.eur"), SlowConsumerPolicy::Latest);
        assert_eq!(r.policy_for("orders.1"), SlowConsumerPolicy::DropOldest);
        let f = |s: &str| TopicFilter::parse(s, 256).unwrap();
        assert!(r.rate_for(&[f("ticker.*")]).is_some());
        assert!(r.rate_for(&[f("orders.1")]).is_none());
        assert_eq!(
            DeliveryRules::new(&[], SlowConsumerPolicy::Disconnect).policy_for("x"),
            SlowConsumerPolicy::Disconnect
        );
    }
}
