use tracing::{callsite::Identifier, Level, Metadata};

use super::*;

#[test]
fn the_traces_path_is_appended_once() {
    assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
}

struct Cs;
impl tracing::Callsite for Cs {
    fn set_interest(&self, _: tracing::subscriber::Interest) {}
    fn metadata(&self) -> &Metadata<'_> {
        unreachable!()
    }
}
static CS: Cs = Cs;

fn meta(target: &'static str, level: Level, span: bool) -> Metadata<'static> {
    let kind = if span { tracing::metadata::Kind::SPAN } else { tracing::metadata::Kind::EVENT };
    let fields = tracing::field::FieldSet::new(&[], Identifier(&CS));
    Metadata::new("x", target, level, None, None, None, fields, kind)
}

#[test]
fn only_meshd_spans_and_its_info_events_are_exported() {
    assert!(exported(&meta("meshd::proxy::outbound", Level::DEBUG, true)), "DEBUG child spans");
    assert!(!exported(&meta("meshd::proxy::outbound", Level::DEBUG, false)), "not DEBUG events");
    assert!(exported(&meta("meshd::access", Level::INFO, false)));
    assert!(!exported(&meta("hyper::client", Level::INFO, true)), "not the exporter's own HTTP client");
    assert!(!exported(&meta("meshd::proxy", Level::TRACE, true)));
}
