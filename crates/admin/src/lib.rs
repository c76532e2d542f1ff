//! The admin surface of a running node: a JSON API described by an OpenAPI
//! document, Prometheus metrics, and the web console, all behind one
//! bearer token and bound to loopback unless configured otherwise.
//!
//! Every answer comes from the node's own snapshot ([`NodeHandle`]), so
//! the admin surface never touches SIP state directly.

mod console;
mod metrics;
mod token;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use porchlight_policy::{FederationChange, FederationChangeError, Modality};
use porchlight_presence::{Availability, PresenceState};
use porchlight_server::cluster::{DrainError, PublishError};
use porchlight_server::status::{
    DecisionRecord, EndpointDetail, EndpointView, ImportError, Imported, OutgoingMessage,
    SentMessage, Status,
};
use porchlight_server::{ImportOptions, ImportRefusal, NodeHandle};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

pub use token::{address_file, load_or_create_token, write_address, TokenError};

/// What the handlers share.
#[derive(Clone)]
struct Admin {
    node: NodeHandle,
    token: Arc<str>,
}

/// The API's routes, each requiring `Authorization: Bearer <token>`.
pub fn router(node: NodeHandle, token: &str) -> Router {
    let admin = Admin {
        node,
        token: token.into(),
    };
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/endpoints", get(endpoints))
        .route("/api/v1/endpoints/{uri}", get(endpoint))
        .route(
            "/api/v1/endpoints/{uri}/presence",
            put(set_presence).delete(clear_presence),
        )
        .route("/api/v1/endpoints/{uri}/messages", post(send_message))
        .route("/api/v1/config", get(export_config).put(import_config))
        .route("/api/v1/federation", get(federation))
        .route("/api/v1/federation/allowed/{domain}", put(allow_domain))
        .route("/api/v1/federation/blocked/{domain}", put(block_domain))
        .route("/api/v1/federation/{domain}", delete(remove_domain))
        .route("/api/v1/cluster/members/{node}/drain", post(drain))
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/history", get(history))
        .route("/api/v1/explain", get(explain))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin);
    // The console's files carry no data: the page asks the API, with the
    // token, for everything it shows.
    console::routes().merge(api)
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Lets a request through only with the right bearer token; the check
/// takes the same time whatever the mismatch.
async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token::same(presented.as_bytes(), admin.token.as_bytes()) {
        return next.run(request).await;
    }
    let said = if presented.is_empty() {
        "a bearer token is required: send `Authorization: Bearer <token>` with the token in the node's [admin] token_file\n"
    } else {
        "the bearer token is not this node's: use the one in its [admin] token_file (a node makes a new one only when that file is missing)\n"
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"porchlight\"")],
        said,
    )
        .into_response()
}

/// The node has stopped: the API cannot answer.
fn stopped() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n").into_response()
}

#[utoipa::path(get, path = "/api/v1/status", tag = "node",
    responses((status = 200, description = "Counters, gauges and endpoints now", body = Status)),
    security(("token" = [])))]
async fn status(State(admin): State<Admin>) -> Response {
    match admin.node.status().await {
        Ok(status) => Json(status).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(get, path = "/api/v1/endpoints", tag = "endpoints",
    responses((status = 200, description = "Every endpoint with its live presence", body = [EndpointView])),
    security(("token" = [])))]
async fn endpoints(State(admin): State<Admin>) -> Response {
    match admin.node.status().await {
        Ok(status) => Json(status.endpoints).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(get, path = "/api/v1/endpoints/{uri}", tag = "endpoints",
    params(("uri" = String, Path, description = "The endpoint's SIP URI")),
    responses(
        (status = 200, description = "The endpoint with its watchers", body = EndpointDetail),
        (status = 404, description = "Not an endpoint of this node")),
    security(("token" = [])))]
async fn endpoint(State(admin): State<Admin>, Path(uri): Path<String>) -> Response {
    match admin.node.endpoint(&uri).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("{uri} is not an endpoint\n")).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(get, path = "/api/v1/decisions", tag = "policy",
    responses((status = 200, description = "The most recent refusals, newest first, with every step", body = [DecisionRecord])),
    security(("token" = [])))]
async fn decisions(State(admin): State<Admin>) -> Response {
    match admin.node.refusals().await {
        Ok(list) => Json(list).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(get, path = "/api/v1/history", tag = "node",
    responses((status = 200, description = "The node's own samples of the last hour, oldest first: subscriptions, NOTIFYs, refusals and the busiest partners' traffic, counters as totals since start", body = porchlight_server::status::HistoryView)),
    security(("token" = [])))]
async fn history(State(admin): State<Admin>) -> Response {
    match admin.node.history().await {
        Ok(view) => Json(view).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(get, path = "/api/v1/config", tag = "configuration",
    responses((status = 200, description = "The policy and endpoints in force, as one TOML document", content_type = "application/toml")),
    security(("token" = [])))]
async fn export_config(State(admin): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/toml")],
        admin.node.config().provisioned().to_toml(),
    )
        .into_response()
}

#[utoipa::path(put, path = "/api/v1/config", tag = "configuration",
    params(ImportOptions),
    request_body(content = String, content_type = "application/toml",
        description = "The whole policy and endpoints, as `GET` gives them"),
    responses(
        (status = 200, description = "Saved and in force, endpoints included: which were added, changed and removed, and every change (with dry_run: only shown)", body = Imported),
        (status = 400, description = "The document fails a check, or is empty or cut short: the text names the line and the fix"),
        (status = 409, description = "The import would remove every endpoint or every federation entry without remove_all, or the node has no store to keep it in")),
    security(("token" = [])))]
async fn import_config(
    State(admin): State<Admin>,
    Query(options): Query<ImportOptions>,
    body: String,
) -> Response {
    import_answer(admin.node.import(&body, options).await)
}

/// The answer to a change saved as a whole-document import.
fn import_answer(result: Result<Imported, ImportError>) -> Response {
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(ImportError::Refused(e @ ImportRefusal::RemovesEverything { .. })) => {
            (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(ImportError::Refused(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(ImportError::Federation(e @ FederationChangeError::Name(_))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(ImportError::Federation(e @ FederationChangeError::Unknown(_))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e @ (ImportError::NoStore | ImportError::Federation(_))) => {
            (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(ImportError::Cluster(e @ PublishError::Conflict { .. })) => {
            (StatusCode::CONFLICT, format!("{e}\n")).into_response()
        }
        Err(ImportError::Cluster(e @ PublishError::Redis(_))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(ImportError::Stopped(_)) => stopped(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The federation lists.
#[derive(Serialize, utoipa::ToSchema)]
struct FederationLists {
    /// Allowed partner domains.
    allowed: Vec<AllowedEntry>,
    /// Blocked domains (subdomains included).
    blocked: Vec<String>,
}

/// One allowed partner domain.
#[derive(Serialize, utoipa::ToSchema)]
struct AllowedEntry {
    domain: String,
    /// Its edge's name, instead of DNS discovery.
    proxy_fqdn: Option<String>,
    /// Whether its edge vouches for its users.
    verified: bool,
}

/// How to allow a domain; what it leaves out stays as the entry has it.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct AllowSetting {
    /// Its edge (host, host:port, address, or sip:/sips: URI), instead of
    /// DNS discovery; `""` goes back to DNS.
    #[serde(default)]
    proxy_fqdn: Option<String>,
    /// Its edge does not vouch for its users.
    #[serde(default)]
    unverified: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/federation", tag = "federation",
    responses((status = 200, description = "The allowed and blocked domains in force", body = FederationLists)),
    security(("token" = [])))]
async fn federation(State(admin): State<Admin>) -> Json<FederationLists> {
    let policy = admin.node.config().policy.clone();
    Json(FederationLists {
        allowed: policy
            .allowed_domains
            .into_iter()
            .map(|d| AllowedEntry {
                verified: d.verification != porchlight_policy::Verification::Unverified,
                domain: d.domain,
                proxy_fqdn: d.proxy_fqdn,
            })
            .collect(),
        blocked: policy.blocked_domains,
    })
}

#[utoipa::path(put, path = "/api/v1/federation/allowed/{domain}", tag = "federation",
    params(("domain" = String, Path, description = "The partner domain")),
    request_body(content = AllowSetting, description = "Optional: a pinned edge, unverified"),
    responses(
        (status = 200, description = "Allowed, saved and in force", body = Imported),
        (status = 400, description = "Not a domain name, or not a proxy; the text says what to write"),
        (status = 409, description = "The domain is blocked, or the node keeps no store")),
    security(("token" = [])))]
async fn allow_domain(
    State(admin): State<Admin>,
    Path(domain): Path<String>,
    setting: Option<Json<AllowSetting>>,
) -> Response {
    let Json(setting) = setting.unwrap_or_default();
    let change = FederationChange::Allow {
        domain,
        proxy: setting.proxy_fqdn,
        unverified: setting.unverified,
    };
    import_answer(admin.node.change_federation(change).await)
}

#[utoipa::path(put, path = "/api/v1/federation/blocked/{domain}", tag = "federation",
    params(("domain" = String, Path, description = "The domain to block, subdomains included")),
    responses(
        (status = 200, description = "Blocked, saved and in force", body = Imported),
        (status = 400, description = "Not a domain name; the text says what to write"),
        (status = 409, description = "The domain is allowed, or the node keeps no store")),
    security(("token" = [])))]
async fn block_domain(State(admin): State<Admin>, Path(domain): Path<String>) -> Response {
    import_answer(
        admin
            .node
            .change_federation(FederationChange::Block(domain))
            .await,
    )
}

#[utoipa::path(delete, path = "/api/v1/federation/{domain}", tag = "federation",
    params(("domain" = String, Path, description = "The domain to take off either list")),
    responses(
        (status = 200, description = "Removed, saved and in force", body = Imported),
        (status = 400, description = "Not a domain name"),
        (status = 404, description = "The domain is on neither list"),
        (status = 409, description = "The node keeps no store")),
    security(("token" = [])))]
async fn remove_domain(State(admin): State<Admin>, Path(domain): Path<String>) -> Response {
    import_answer(
        admin
            .node
            .change_federation(FederationChange::Remove(domain))
            .await,
    )
}

/// Presence an admin sets for an endpoint.
#[derive(Deserialize, utoipa::ToSchema)]
struct PresenceSetting {
    /// `online`, `busy`, `dnd`, `brb`, `away`, `offline`, or a number on the Microsoft scale.
    availability: String,
    /// Free text shown under the name.
    #[serde(default)]
    note: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/endpoints/{uri}/presence", tag = "endpoints",
    params(("uri" = String, Path, description = "The endpoint's SIP URI")),
    request_body = PresenceSetting,
    responses(
        (status = 200, description = "Set; it wins over every source until cleared, and watchers are notified", body = EndpointView),
        (status = 400, description = "Unknown availability, or a note longer than [presence] max_note_bytes"),
        (status = 404, description = "Not an endpoint of this node")),
    security(("token" = [])))]
async fn set_presence(
    State(admin): State<Admin>,
    Path(uri): Path<String>,
    Json(setting): Json<PresenceSetting>,
) -> Response {
    let Some(availability) = Availability::from_name(&setting.availability) else {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "availability {:?}: use online, busy, dnd, brb, away, offline, or a number\n",
                setting.availability
            ),
        )
            .into_response();
    };
    let mut state = PresenceState::new(availability);
    state.note = setting.note.filter(|n| !n.trim().is_empty());
    // Every NOTIFY about the endpoint carries the note: bounded here.
    if let Err(e) = state.check_lengths(admin.node.config().presence.max_note_bytes) {
        return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    }
    presence_answer(&uri, admin.node.set_presence(&uri, Some(state)).await)
}

#[utoipa::path(delete, path = "/api/v1/endpoints/{uri}/presence", tag = "endpoints",
    params(("uri" = String, Path, description = "The endpoint's SIP URI")),
    responses(
        (status = 200, description = "Cleared: the endpoint's own sources decide again", body = EndpointView),
        (status = 404, description = "Not an endpoint of this node")),
    security(("token" = [])))]
async fn clear_presence(State(admin): State<Admin>, Path(uri): Path<String>) -> Response {
    presence_answer(&uri, admin.node.set_presence(&uri, None).await)
}

fn presence_answer(
    uri: &str,
    result: Result<Option<EndpointView>, porchlight_server::status::Stopped>,
) -> Response {
    match result {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("{uri} is not an endpoint\n")).into_response(),
        Err(_) => stopped(),
    }
}

#[utoipa::path(post, path = "/api/v1/endpoints/{uri}/messages", tag = "endpoints",
    params(("uri" = String, Path, description = "The endpoint sending, e.g. sip:helpdesk@contoso.com")),
    request_body = OutgoingMessage,
    responses(
        (status = 200, description = "Delivered: the recipient answered 2xx", body = SentMessage),
        (status = 400, description = "`to` is not a SIP URI of a user, or the body is not the JSON described"),
        (status = 403, description = "Refused by the policy (see /api/v1/decisions)", body = SentMessage),
        (status = 404, description = "Not an endpoint of this node, or no such recipient", body = SentMessage),
        (status = 502, description = "The recipient or its edge answered with a failure, or did not answer", body = SentMessage)),
    security(("token" = [])))]
/// An app sends IM as its endpoint: out through the edge to a federated
/// user, under the policy, answered when the recipient's final response
/// arrives.
async fn send_message(
    State(admin): State<Admin>,
    Path(uri): Path<String>,
    Json(mut message): Json<OutgoingMessage>,
) -> Response {
    message.from = uri;
    match admin.node.send_message(message).await {
        Ok(sent) => {
            let status = match sent.status {
                200..=299 => StatusCode::OK,
                400 => StatusCode::BAD_REQUEST,
                403 => StatusCode::FORBIDDEN,
                404 => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, Json(sent)).into_response()
        }
        Err(_) => stopped(),
    }
}

/// The question `explain` answers.
#[derive(Deserialize, utoipa::IntoParams)]
struct ExplainQuery {
    /// The sender, e.g. `sip:alice@fabrikam.com`.
    from: String,
    /// The target, e.g. `sip:helpdesk@contoso.com`.
    to: String,
    /// `presence`, `im` or `audio`.
    #[serde(default = "presence")]
    kind: String,
    /// Domains the peer's certificate proves, comma-separated; none means
    /// the request did not come over mutual TLS. Not used for requests
    /// going out.
    #[serde(default)]
    peer: String,
}

fn presence() -> String {
    "presence".into()
}

/// A policy decision with its reasons.
#[derive(Serialize, utoipa::ToSchema)]
struct Explanation {
    /// Let through or not.
    allowed: bool,
    /// How the remote domain was classified, when it was.
    class: Option<String>,
    /// Each step, in order.
    steps: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/explain", tag = "policy", params(ExplainQuery),
    responses(
        (status = 200, description = "The decision the running configuration makes", body = Explanation),
        (status = 400, description = "Unknown kind"),
        (status = 404, description = "Neither side is this node's")),
    security(("token" = [])))]
async fn explain(State(admin): State<Admin>, Query(q): Query<ExplainQuery>) -> Response {
    let Some(modality) = Modality::from_name(&q.kind) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("kind {:?}: use presence, im or audio\n", q.kind),
        )
            .into_response();
    };
    let peer: Vec<String> = q
        .peer
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let peer = (!peer.is_empty()).then_some(peer.as_slice());
    match porchlight_server::explain(&admin.node.config(), &q.from, &q.to, modality, peer) {
        Some(decision) => Json(Explanation {
            allowed: decision.allowed,
            class: decision.class.map(|c| format!("{c:?}")),
            steps: decision.steps,
        })
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no policy decision: the target is not an endpoint here, or neither side is this node's\n",
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "node",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")),
    security(("token" = [])))]
async fn metrics(State(admin): State<Admin>) -> Response {
    match admin.node.status().await {
        Ok(status) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics::render(&status),
        )
            .into_response(),
        Err(_) => stopped(),
    }
}

/// The OpenAPI document of this API.
/// A drain under way.
#[derive(Serialize, utoipa::ToSchema)]
struct Draining {
    /// The member drained.
    node: u16,
    /// Subscriptions it held at its last renewal, which the others take over.
    subscriptions: u64,
}

#[utoipa::path(post, path = "/api/v1/cluster/members/{node}/drain", tag = "cluster",
    params(("node" = u16, Path, description = "The member's node_id")),
    responses(
        (status = 202, description = "Asked: at its next renewal the member stops notifying, saves its subscriptions and gives up its lease; another node takes its watchers over and re-notifies them paced. It takes no new ones until restarted", body = Draining),
        (status = 404, description = "No such member, or its lease has lapsed"),
        (status = 409, description = "Draining already, the only live member, or this node is not in a cluster"),
        (status = 503, description = "Redis did not answer")),
    security(("token" = [])))]
async fn drain(State(admin): State<Admin>, Path(node): Path<u16>) -> Response {
    match admin.node.drain(node).await {
        Ok(subscriptions) => (
            StatusCode::ACCEPTED,
            Json(Draining {
                node,
                subscriptions,
            }),
        )
            .into_response(),
        Err(e @ (DrainError::NotMember(_) | DrainError::Lapsed(_))) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e @ DrainError::Redis(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Porchlight admin API", description = "The running node: status, endpoints, policy decisions, metrics."),
    paths(status, endpoints, endpoint, set_presence, clear_presence, send_message, federation, allow_domain, block_domain, remove_domain, export_config, import_config, drain, decisions, history, explain, metrics),
    modifiers(&BearerToken)
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    /// The token scheme, and the answers every route can give that no
    /// handler writes: 401 from the token check (each route), and the JSON
    /// body's 400/415/422 from the extractor (each route that takes one).
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::ResponseBuilder;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let answer = |text: &str| ResponseBuilder::new().description(text).build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                responses.entry("401".into()).or_insert_with(|| {
                    answer("No bearer token, or not this node's (see [admin] token_file)").into()
                });
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|body| body.content.contains_key("application/json"));
                if json_body {
                    responses.entry("400".into()).or_insert_with(|| {
                        answer("The body is not JSON, or a field is not what it should be").into()
                    });
                    responses.entry("415".into()).or_insert_with(|| {
                        answer("The body is not sent as Content-Type: application/json").into()
                    });
                    responses.entry("422".into()).or_insert_with(|| {
                        answer("The JSON lacks a required field or has one of the wrong type")
                            .into()
                    });
                }
            }
        }
    }
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
