//! `GET /dashboard`: the sync status page an operator keeps open.
//!
//! The page is server-rendered (maud, compiled in) and holds no data itself: its script polls
//! `GET /api/crm/status` (the same JSON scripts use) every few seconds and fills it in with
//! `textContent` only, so nothing from the CRM or the app is ever parsed as HTML. Its buttons
//! call the recovery routes (`/api/crm/outbox/...`, `/api/crm/inbox/...`). Those routes are
//! guarded as every `/api` route is ([`crate::auth`]): the bearer token, which the operator
//! enters once and the page keeps in `sessionStorage`, or, without a token, loopback with a
//! same-origin check. The shell itself is public: it carries nothing but the layout.
//!
//! The script and the stylesheet are files of their own (no inline code), so the Content
//! Security Policy can forbid every script that is not the gateway's.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use maud::{DOCTYPE, Markup, html};

const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::error::resource("/dashboard", "GET").route(web::get().to(page)))
        .service(crate::error::resource("/dashboard/app.js", "GET").route(web::get().to(script)))
        .service(crate::error::resource("/dashboard/app.css", "GET").route(web::get().to(style)));
}

fn guarded(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    response
}

async fn page() -> HttpResponse {
    guarded(HttpResponse::Ok()).content_type("text/html; charset=utf-8").body(layout().into_string())
}

async fn script() -> HttpResponse {
    guarded(HttpResponse::Ok()).content_type("text/javascript; charset=utf-8").body(SCRIPT)
}

async fn style() -> HttpResponse {
    guarded(HttpResponse::Ok()).content_type("text/css; charset=utf-8").body(STYLE)
}

/// A table the script fills: its columns' headers (numeric ones right-aligned; an empty label is
/// the action column, named for screen readers only) and an empty body.
fn table(id: &str, columns: &[(&str, bool)]) -> Markup {
    html! {
        table class="grid" id=(id) {
            thead { tr {
                @for (label, numeric) in columns {
                    @if label.is_empty() {
                        th scope="col" { span class="visually-hidden" { "Action" } }
                    } @else {
                        th scope="col" class=[numeric.then_some("num")] { (label) }
                    }
                }
            } }
            tbody {}
        }
    }
}

/// A figure with its label; the script fills `data-field`.
fn figure(label: &str, field: &str) -> Markup {
    html! {
        div class="figure" {
            div class="figure-value" data-field=(field) { "–" }
            div class="figure-label" { (label) }
        }
    }
}

fn layout() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sync status · crm-gateway" }
                link rel="stylesheet" href="/dashboard/app.css";
                script src="/dashboard/app.js" defer {}
            }
            body {
                header class="top" {
                    div class="brand" {
                        h1 { "crm-gateway" }
                        span class="subtitle" { "sync status" }
                    }
                    div class="top-right" {
                        span id="connection" class="badge" data-state="unknown" { "Connecting…" }
                        span id="updated" class="muted" {}
                        button id="forget-token" type="button" class="link" hidden { "Forget token" }
                    }
                }
                form id="token-form" class="token-form" hidden {
                    label for="token" { "API token (GATEWAY_API_TOKEN)" }
                    input id="token" type="password" autocomplete="off" spellcheck="false" required;
                    button type="submit" class="primary" { "Use token" }
                    p class="muted" { "Kept in this tab only (sessionStorage) and sent as a bearer token." }
                }
                div id="notice" class="notice" role="status" aria-live="polite" hidden {}
                main {
                    section class="cards" aria-label="Overview" {
                        article class="card" id="crm-card" {
                            h2 { "CRM" }
                            div class="card-status" {
                                span id="crm-health" class="badge" data-state="unknown" { "–" }
                                span data-field="crm.provider" class="muted" {}
                            }
                            dl class="facts" {
                                dt { "Circuit" } dd data-field="crm.circuit" { "–" }
                                dt { "Last call" } dd data-field="crm.lastCall" { "–" }
                                dt { "Last success" } dd data-field="crm.lastSuccess" { "–" }
                                dt { "Checked" } dd data-field="crm.checkedAt" { "–" }
                            }
                        }
                        article class="card" {
                            h2 { "Outbox" }
                            div class="figures" {
                                (figure("pending", "outbox.pending"))
                                (figure("in flight", "outbox.inFlight"))
                                (figure("failed", "outbox.failed"))
                            }
                            dl class="facts" {
                                dt { "Oldest waiting change" } dd data-field="outbox.oldest" { "–" }
                            }
                        }
                        article class="card" {
                            h2 { "Webhooks" }
                            div class="figures" {
                                (figure("applied, last hour", "webhooks.appliedHour"))
                                (figure("failed, last hour", "webhooks.failedHour"))
                            }
                            dl class="facts" {
                                dt { "Last received" } dd data-field="webhooks.lastReceived" { "–" }
                            }
                        }
                        article class="card" id="audit-card" {
                            h2 { "Consistency" }
                            div class="card-status" {
                                span id="audit-state" class="badge" data-state="unknown" { "–" }
                            }
                            dl class="facts" {
                                dt { "Last audit" } dd data-field="audit.at" { "–" }
                                dt { "Differences" } dd data-field="audit.differences" { "–" }
                                dt { "Pending, not compared" } dd data-field="audit.pending" { "–" }
                                dt { "Import read through" } dd data-field="import.through" { "–" }
                                dt { "Change stream" } dd data-field="stream.state" { "–" }
                                dt { "Read by" } dd data-field="stream.reader" { "–" }
                            }
                        }
                    }
                    div class="columns" {
                        section class="panel" {
                            h2 { "Records" }
                            (table("records", &[("Type", false), ("Synced", true), ("Pending", true), ("Failed", true), ("Oldest change", true)]))
                        }
                        section class="panel" {
                            h2 { "Webhook events" }
                            (table("webhooks", &[("Outcome", false), ("Last hour", true), ("Last day", true)]))
                        }
                    }
                    section class="panel" {
                        div class="panel-head" {
                            h2 { "Failures" }
                            button id="retry-all" type="button" class="primary" disabled { "Retry all failures" }
                        }
                        h3 { "Outbound: deliveries given up on" }
                        (table("outbound-failures", &[("Row", false), ("Record", false), ("Operation", false), ("Attempts", true), ("Error", false), ("Failed", false), ("", false)]))
                        p class="empty" id="outbound-empty" hidden { "No failed deliveries." }
                        h3 { "Inbound: webhook events that failed to apply" }
                        (table("inbound-failures", &[("Event", false), ("Type", false), ("Record", false), ("Error", false), ("Received", false), ("", false)]))
                        p class="empty" id="inbound-empty" hidden { "No failed webhook events." }
                    }
                    section class="panel" {
                        h2 { "Recent webhook events" }
                        (table("recent-events", &[("Received", false), ("Event", false), ("Type", false), ("Record", false), ("Name", false), ("Outcome", false)]))
                        p class="empty" id="recent-empty" hidden { "No webhook received yet." }
                    }
                }
                footer class="muted" {
                    "Refreshes every 3 seconds without reloading. Duplicates are counted by this instance; "
                    "everything else is read from the database all instances share. Prometheus metrics: GET /metrics."
                }
            }
        }
    }
}
