//! The query string of `GET /events` and `POST /publish`, parsed once per request into what
//! the later steps (guard, admission, resume, publish) read.
//!
//! Parsing checks only what the query itself can get wrong (its length, the topics, the
//! `event` type's length); the refusals keep the order they always had, so a problem the guard
//! reports after the header bounds (a bad `lastEventId`, a second `access_token`) is kept here
//! for the guard instead of refused at once.

use http::Request;

use super::input::{MAX_EVENT_TYPE_BYTES, check_last_event_id};
use super::response::{Refused, bad_request};
use crate::metrics::Metrics;
use crate::topic::{TopicFilter, truncate};

/// Longest query string accepted; far above any sane list of topics, far below abuse.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Why a query is refused with `400`: the metric's reason label and the one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadQuery {
    /// The `sse_bridge_requests_rejected_total{reason}` label.
    pub reason: &'static str,
    /// The one-line reason sent to the client.
    pub message: String,
}

impl BadQuery {
    /// The `400` for this problem, counted under its reason.
    pub fn refuse(&self, metrics: &Metrics) -> Refused {
        bad_request(metrics, self.reason, &self.message)
    }

    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        BadQuery { reason, message: message.into() }
    }
}

/// The bounds `GET /events` parsing applies (from `server.*`).
#[derive(Debug, Clone, Copy)]
pub struct TopicBounds {
    /// `server.max_topics_per_connection`.
    pub max_topics: usize,
    /// `server.max_topic_length`.
    pub max_topic_length: usize,
}

/// A parsed `GET /events` request: what it subscribes to and where it resumes.
#[derive(Debug)]
pub struct EventsRequest {
    /// The topics and patterns, validated, without repeats, in the order given.
    pub filters: Vec<TopicFilter>,
    /// The resume cursor: the `Last-Event-ID` header, else the `lastEventId` parameter;
    /// `None` when absent or empty.
    pub last_event_id: Option<String>,
    /// The first `access_token` parameter (the guard decides whether it may be used).
    pub access_token: Option<String>,
    /// The first bad `lastEventId` or repeated `access_token`, in query order. The guard
    /// refuses it after checking the headers, which is where it always was refused.
    pub deferred: Option<BadQuery>,
}

impl EventsRequest {
    /// Parses the query (and picks the resume cursor); refuses an over-long query, a topic
    /// over the bounds and a request without topics.
    pub fn parse<B>(req: &Request<B>, bounds: TopicBounds) -> Result<Self, BadQuery> {
        let query = bounded_query(req)?;
        let mut filters: Vec<TopicFilter> = Vec::new();
        let mut query_last_id = None;
        let mut access_token = None;
        let mut deferred = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let problem = match &*k {
                "topic" => {
                    add_topic(&mut filters, &v, bounds)?;
                    None
                }
                "lastEventId" => {
                    let problem = check_last_event_id(v.as_bytes()).err();
                    query_last_id = Some(v.into_owned());
                    problem.map(|r| BadQuery::new("bad_last_event_id", r))
                }
                "access_token" if access_token.is_some() => {
                    Some(BadQuery::new("bad_token", "give at most one access_token"))
                }
                "access_token" => {
                    access_token = Some(v.into_owned());
                    None
                }
                _ => None,
            };
            deferred = deferred.or(problem);
        }
        if filters.is_empty() {
            return Err(BadQuery::new(
                "no_topic",
                "no topic: add ?topic=NAME (repeat for more; NATS-style patterns allowed)",
            ));
        }
        // The header wins: browsers send the newest id there, while the URL keeps the first one.
        let last_event_id = match req.headers().get("last-event-id") {
            Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            None => query_last_id,
        }
        .filter(|s| !s.is_empty());
        Ok(EventsRequest { filters, last_event_id, access_token, deferred })
    }
}

/// Adds one `topic` parameter to `filters` (a repeat is dropped), or says why not.
fn add_topic(filters: &mut Vec<TopicFilter>, v: &str, bounds: TopicBounds) -> Result<(), BadQuery> {
    if filters.len() >= bounds.max_topics {
        return Err(BadQuery::new(
            "too_many_topics",
            format!("too many topics: at most {} per connection", bounds.max_topics),
        ));
    }
    match TopicFilter::parse(v, bounds.max_topic_length) {
        Ok(f) if !filters.contains(&f) => filters.push(f),
        Ok(_) => {}
        Err(e) => return Err(BadQuery::new("bad_topic", format!("topic {:?}: {e}", truncate(v, 64)))),
    }
    Ok(())
}

/// A parsed `POST /publish` query. The topic is validated later, after the credential.
#[derive(Debug)]
pub struct PublishQuery {
    /// The first `topic` parameter.
    pub topic: Option<String>,
    /// More than one `topic` was given (refused after the credential check).
    pub extra_topic: bool,
    /// The last `event` parameter: the SSE event type to publish under.
    pub event_type: Option<String>,
}

impl PublishQuery {
    /// Parses the query; refuses an over-long query and an over-long `event` type.
    pub fn parse<B>(req: &Request<B>) -> Result<Self, BadQuery> {
        let mut q = PublishQuery { topic: None, extra_topic: false, event_type: None };
        for (k, v) in form_urlencoded::parse(bounded_query(req)?.as_bytes()) {
            match &*k {
                "topic" if q.topic.is_some() => q.extra_topic = true,
                "topic" => q.topic = Some(v.into_owned()),
                "event" if v.len() > MAX_EVENT_TYPE_BYTES => {
                    return Err(BadQuery::new(
                        "bad_event",
                        format!("event type is longer than {MAX_EVENT_TYPE_BYTES} bytes"),
                    ));
                }
                "event" => q.event_type = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// The request's query string, if within [`MAX_QUERY_BYTES`].
fn bounded_query<B>(req: &Request<B>) -> Result<&str, BadQuery> {
    let query = req.uri().query().unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(BadQuery::new("query_too_long", format!("query string is longer than {MAX_QUERY_BYTES} bytes")));
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: TopicBounds = TopicBounds { max_topics: 2, max_topic_length: 256 };

    fn get(uri: &str, last_event_id: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(v) = last_event_id {
            b = b.header("last-event-id", v);
        }
        b.body(()).unwrap()
    }

    fn reason(r: Result<EventsRequest, BadQuery>) -> &'static str {
        r.err().map_or("ok", |e| e.reason)
    }

    #[test]
    fn topic_problems_come_first_and_others_wait_for_the_guard() {
        assert_eq!(
            reason(EventsRequest::parse(&get("/events?lastEventId=%01&topic=a%20b", None), BOUNDS)),
            "bad_topic"
        );
        assert_eq!(
            reason(EventsRequest::parse(&get("/events?topic=a&topic=b&topic=c", None), BOUNDS)),
            "too_many_topics"
        );
        assert_eq!(reason(EventsRequest::parse(&get("/events?access_token=x", None), BOUNDS)), "no_topic");
        let r =
            EventsRequest::parse(&get("/events?topic=a&access_token=x&access_token=y&lastEventId=%01", None), BOUNDS);
        let r = r.unwrap();
        assert_eq!(r.deferred.map(|d| d.reason), Some("bad_token"), "the first problem in query order");
        assert_eq!(r.access_token.as_deref(), Some("x"));
    }

    #[test]
    fn the_header_cursor_wins_and_repeats_are_dropped() {
        let r = EventsRequest::parse(&get("/events?topic=a&topic=a&lastEventId=1-1", Some("1-2")), BOUNDS).unwrap();
        assert_eq!((r.filters.len(), r.last_event_id.as_deref()), (1, Some("1-2")));
        let r = EventsRequest::parse(&get("/events?topic=a&lastEventId=1-1", None), BOUNDS).unwrap();
        assert_eq!(r.last_event_id.as_deref(), Some("1-1"));
        let r = EventsRequest::parse(&get("/events?topic=a&lastEventId=1-1", Some("")), BOUNDS).unwrap();
        assert_eq!(r.last_event_id, None, "an empty header means no cursor");
    }

    #[test]
    fn publish_keeps_the_first_topic_and_the_last_event_type() {
        let q = PublishQuery::parse(&get("/publish?topic=a&event=x&topic=b&event=y", None)).unwrap();
        assert_eq!((q.topic.as_deref(), q.extra_topic, q.event_type.as_deref()), (Some("a"), true, Some("y")));
        let long = format!("/publish?topic=a&event={}", "e".repeat(MAX_EVENT_TYPE_BYTES + 1));
        assert_eq!(PublishQuery::parse(&get(&long, None)).unwrap_err().reason, "bad_event");
        let huge = format!("/publish?topic={}", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(PublishQuery::parse(&get(&huge, None)).unwrap_err().reason, "query_too_long");
    }
}
