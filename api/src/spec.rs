//! What the OpenAPI document says beyond each handler's own annotation, so that it tells the
//! whole truth about what the server answers (scripts/fuzz-api holds the server to it with
//! schemathesis):
//!
//! - the security schemes (a bearer token — a JWT or an API key — and the `X-Api-Key` header),
//!   required by every operation;
//! - the answers any operation can give whatever it does: `400`, `401` (with
//!   `WWW-Authenticate`), `403`, `429` (with `Retry-After`), `431`, `500`, `503` (with
//!   `Retry-After`); `404` where the path names something; `413`, `415` and `422` where there
//!   is a request body;
//! - the headers of every answer: `X-Request-Id`, and the `RateLimit-*` headers on every answer
//!   that passed the guard (all but `431`, `500` and a timed-out `503`, which are answered
//!   outside it);
//! - links from an accepted order (and a listed one) to the operations on it.
//!
//! The headers are declared once under `components/headers` and referred to from each answer
//! (a `-Optional` twin where the server may leave one out). A header the server always sends
//! is declared `required`. utoipa 6's `Header` has no field
//! for that, so it is added through the header's extensions map, which is written out as it
//! is (its deserializer, not used here, would drop it).

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::security::{SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::problem::PROBLEM_JSON;
use crate::security::API_KEY_HEADER;

/// The name of the bearer security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";
/// The name of the `X-Api-Key` security scheme in the document.
pub const API_KEY_SCHEME: &str = "api_key";

/// The pattern of an order id (`ids::is_order_id`), of a request id (`request_id`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// The answers every operation can give, whatever it does.
const COMMON: &[(&str, &str)] = &[
    (
        "400",
        "Malformed request: a header, parameter, id or body that cannot be read",
    ),
    ("401", "No valid credentials"),
    ("403", "The caller's role may not use this endpoint"),
    (
        "429",
        "This caller's request budget is spent; see Retry-After",
    ),
    ("431", "Request headers larger than the server accepts"),
    (
        "500",
        "Internal error: the body carries only the request id",
    ),
    (
        "503",
        "Postgres unreachable, new orders paused or shed, or the request took longer than \
         api.request_timeout_ms; see Retry-After",
    ),
];
/// The answers of an operation with a path parameter (the thing it names may not exist, or
/// may not be the caller's to see).
const WITH_PATH_PARAMETER: &[(&str, &str)] =
    &[("404", "No such resource (or not one the caller may see)")];
/// The answers of an operation with a request body.
const WITH_BODY: &[(&str, &str)] = &[
    ("413", "Body larger than api.body_max_bytes"),
    ("415", "Not application/json"),
    (
        "422",
        "Unknown fields, wrong shape or a broken rule; see errors",
    ),
];

/// Answers produced outside the rate-limit guard, so without `RateLimit-*` headers (a timed-out
/// request is a `503` too, so those headers are not promised on a `503` either).
const OUTSIDE_THE_GUARD: &[&str] = &["431", "500", "503"];

/// Completes the generated document; applied by [`crate::server::routes`].
pub struct Completion;

impl utoipa::Modify for Completion {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .description(Some(
                        "A JWT verified against api.auth.jwks_file, or an API key (ofk_…) from \
                         `orderflow api-keys create`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key (ofk_…) from `orderflow api-keys create`",
            ))),
        );
        components.add_security_scheme(crate::tls::OPENAPI_SCHEME, crate::tls::openapi_scheme());
        debug_assert!(API_KEY_HEADER.eq_ignore_ascii_case("X-Api-Key"));
        openapi.security = Some(vec![
            SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(crate::tls::OPENAPI_SCHEME, Vec::<String>::new()),
        ]);
        unique_operation_ids(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, header) in common_headers() {
            components.headers.insert(name.to_string(), header);
        }
        let order_operations = order_operations(openapi);
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations(item) {
                complete(path, operation, &order_operations);
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Make every operationId unique, as OpenAPI requires: handlers of different modules may share
/// a function name (utoipa's default id), and then each of them is named after its method and
/// path instead (`get_v1_parked`).
fn unique_operation_ids(openapi: &mut utoipa::openapi::OpenApi) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for item in openapi.paths.paths.values_mut() {
        for operation in operations(item) {
            if let Some(id) = &operation.operation_id {
                *seen.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for (path, item) in openapi.paths.paths.iter_mut() {
        let slug: String = path
            .chars()
            .filter(|c| !matches!(c, '{' | '}'))
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        for (method, operation) in [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ] {
            let Some(operation) = operation else { continue };
            let shared = operation
                .operation_id
                .as_ref()
                .is_some_and(|id| seen.get(id).copied().unwrap_or(0) > 1);
            if shared {
                operation.operation_id = Some(format!("{method}{slug}"));
            }
        }
    }
}

/// The operations on one order (method, JSON pointer of the operation): where an accepted
/// order's links lead.
fn order_operations(openapi: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (path, item) in openapi.paths.paths.iter() {
        if !path.starts_with("/v1/orders/{order_id}") {
            continue;
        }
        for (method, operation) in [("get", &item.get), ("post", &item.post)] {
            if operation.is_some() {
                let pointer = path.replace('~', "~0").replace('/', "~1");
                let name = format!(
                    "{method}{}",
                    path.trim_start_matches("/v1/orders/{order_id}")
                        .replace('/', "_")
                );
                found.push((name, format!("#/paths/{pointer}/{method}")));
            }
        }
    }
    found
}

fn problem_answer(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The rate-limit headers of every answer that passed the guard.
const RATE_LIMIT_HEADERS: [&str; 3] = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"];

/// The headers answers refer to, by their name under `components/headers`.
fn common_headers() -> Vec<(String, RefOr<Header>)> {
    let mut all = vec![(
        "X-Request-Id".to_string(),
        header(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(ID_PATTERN)),
            "The request's id: the client's X-Request-Id when plain, else a new UUID",
            true,
        ),
    )];
    for (name, description) in RATE_LIMIT_HEADERS.into_iter().zip([
        "Requests the caller's bucket holds when full",
        "Requests left in the caller's bucket",
        "Seconds until the caller's bucket is full again",
    ]) {
        all.push((name.to_string(), integer_header(description, true)));
        all.push((
            format!("{name}-Optional"),
            integer_header(
                &format!("{description} (absent when answered outside the guard)"),
                false,
            ),
        ));
    }
    all.push((
        "WWW-Authenticate".to_string(),
        header(
            ObjectBuilder::new().schema_type(Type::String),
            "The Bearer challenge (error=\"invalid_token\" when credentials came)",
            true,
        ),
    ));
    all.push((
        "Retry-After".to_string(),
        integer_header("Seconds to wait before retrying", true),
    ));
    all
}

fn integer_header(description: &str, required: bool) -> RefOr<Header> {
    header(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0)),
        description,
        required,
    )
}

fn header(schema: ObjectBuilder, description: &str, required: bool) -> RefOr<Header> {
    let mut h = HeaderBuilder::new()
        .schema(Some(schema.build()))
        .description(Some(description))
        .build();
    if required {
        let mut extensions = h.extensions.take().unwrap_or_default();
        extensions.insert("required".into(), true.into());
        h.extensions = Some(extensions);
    }
    RefOr::T(h)
}

fn complete(path: &str, operation: &mut Operation, order_operations: &[(String, String)]) {
    let has_path_parameter = path.contains('{');
    // An order id has its shape wherever it is a parameter (`ids::is_order_id`).
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(p) = parameter {
            if p.name == "order_id" {
                p.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(ID_PATTERN))
                        .into(),
                );
            }
        }
    }
    let has_body = operation.request_body.is_some();
    let mut extra: Vec<(&str, &str)> = COMMON.to_vec();
    if has_path_parameter {
        extra.extend_from_slice(WITH_PATH_PARAMETER);
    }
    if has_body {
        extra.extend_from_slice(WITH_BODY);
    }
    let answers = &mut operation.responses.responses;
    for (status, description) in extra {
        answers
            .entry(status.to_string())
            .or_insert_with(|| problem_answer(description).into());
    }
    for (status, answer) in answers.iter_mut() {
        let RefOr::T(answer) = answer else { continue };
        let headers = &mut answer.headers;
        let guarded = !OUTSIDE_THE_GUARD.contains(&status.as_str());
        let mut names = vec![("X-Request-Id", "X-Request-Id".to_string())];
        for name in RATE_LIMIT_HEADERS {
            let optional = if guarded { "" } else { "-Optional" };
            names.push((name, format!("{name}{optional}")));
        }
        match status.as_str() {
            "401" => names.push(("WWW-Authenticate", "WWW-Authenticate".into())),
            "429" | "503" => names.push(("Retry-After", "Retry-After".into())),
            _ => {}
        }
        for (name, component) in names {
            headers.insert(
                name.into(),
                RefOr::Ref(Ref::new(format!("#/components/headers/{component}"))),
            );
        }
        // What the handler's annotation declared about its own headers: always sent.
        for name in ["Location", "ETag"] {
            if let Some(RefOr::T(h)) = headers.get_mut(name) {
                let mut extensions = h.extensions.take().unwrap_or_default();
                extensions.insert("required".into(), true.into());
                h.extensions = Some(extensions);
            }
        }
        // An accepted or listed order leads to the operations on it.
        let order_id = match (status.as_str(), path) {
            ("202", "/v1/orders") => Some("$response.body#/order_id"),
            _ => None,
        };
        if let Some(expression) = order_id {
            for (name, pointer) in order_operations {
                answer.links.insert(
                    name.clone(),
                    LinkBuilder::new()
                        .operation_ref(pointer.clone())
                        .parameter("order_id", expression)
                        .build()
                        .into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn spec() -> Value {
        serde_json::to_value(crate::server::openapi()).expect("the spec serializes")
    }

    fn operations(spec: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                all.push((method.clone(), path.clone(), operation.clone()));
            }
        }
        all
    }

    #[test]
    fn every_operation_requires_a_bearer_token_or_an_api_key() {
        let spec = spec();
        let schemes = &spec["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
        assert_eq!(schemes["api_key"]["in"], "header", "{schemes}");
        assert_eq!(schemes["api_key"]["name"], "X-Api-Key", "{schemes}");
        let security = spec["security"].as_array().expect("global security");
        // A bearer token, an API key, or a client certificate (crate::tls).
        assert_eq!(security.len(), 3, "{security:?}");
        for (method, path, operation) in operations(&spec) {
            // An operation's own `security` would replace the global one.
            assert!(operation.get("security").is_none(), "{method} {path}");
        }
    }

    #[test]
    fn every_answer_declares_the_headers_the_server_always_sends() {
        let spec = spec();
        let header = |answer: &Value, name: &str| -> Value {
            let h = &answer["headers"][name];
            match h["$ref"].as_str() {
                Some(r) => spec["components"]["headers"]
                    [r.trim_start_matches("#/components/headers/")]
                .clone(),
                None => h.clone(),
            }
        };
        let required = |answer: &Value, name: &str| header(answer, name)["required"] == true;
        for (method, path, operation) in operations(&spec) {
            let answers = operation["responses"].as_object().expect("responses");
            for status in ["400", "401", "403", "429", "431", "500", "503"] {
                assert!(answers.contains_key(status), "{method} {path}: no {status}");
            }
            if path.contains('{') {
                assert!(answers.contains_key("404"), "{method} {path}: no 404");
            }
            if operation.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(answers.contains_key(status), "{method} {path}: no {status}");
                }
            }
            for (status, answer) in answers {
                let at = format!("{method} {path} {status}");
                assert!(required(answer, "X-Request-Id"), "{at}: X-Request-Id");
                // Answered outside the rate-limit guard: the headers may be missing.
                let guarded = !["431", "500", "503"].contains(&status.as_str());
                for name in ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"] {
                    assert!(header(answer, name)["schema"].is_object(), "{at}: {name}");
                    assert_eq!(required(answer, name), guarded, "{at}: {name}");
                }
            }
            assert!(
                required(&answers["401"], "WWW-Authenticate"),
                "{method} {path}"
            );
            assert!(required(&answers["429"], "Retry-After"), "{method} {path}");
            assert!(required(&answers["503"], "Retry-After"), "{method} {path}");
        }
        let one = &spec["paths"]["/v1/orders/{order_id}"]["get"]["responses"];
        assert!(
            required(&one["200"], "ETag") && required(&one["304"], "ETag"),
            "{one}"
        );
        let create = &spec["paths"]["/v1/orders"]["post"]["responses"]["202"];
        assert!(required(create, "Location"), "{create}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let spec = spec();
        let mut ids = std::collections::HashSet::new();
        for (method, path, operation) in operations(&spec) {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                ids.insert(id.clone()),
                "{method} {path}: operationId {id} twice"
            );
        }
    }

    #[test]
    fn an_accepted_order_links_to_the_operations_on_it_and_ids_have_their_shape() {
        let spec = spec();
        let links = spec["paths"]["/v1/orders"]["post"]["responses"]["202"]["links"]
            .as_object()
            .expect("links from 202");
        assert!(links.len() >= 3, "{links:?}");
        for link in links.values() {
            assert_eq!(link["parameters"]["order_id"], "$response.body#/order_id");
        }
        let id = &spec["paths"]["/v1/orders/{order_id}"]["get"]["parameters"][0];
        assert_eq!(id["name"], "order_id");
        assert_eq!(id["schema"]["pattern"], super::ID_PATTERN);
    }
}
