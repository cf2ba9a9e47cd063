//! Snapshots, templates (read-only), teams and API keys.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::models::{self, NewApiKey, SnapshotBody, UpdateApiKey};
use super::{AppCtx, JsonBody};
use crate::model::{Caller, SandboxId};

/// `POST /sandboxes/{id}/snapshots` → 201 `{snapshotID, names}`.
pub async fn create_snapshot(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SnapshotBody>,
) -> ApiResult<Response> {
    let id = SandboxId::parse(&id)
        .ok_or_else(|| ApiError::not_found(format!("sandbox {id:?} not found")))?;
    if let Some(n) = &body.name
        && (n.is_empty() || n.len() > 256)
    {
        return Err(ApiError::bad_request(
            "snapshot name must be 1 to 256 bytes",
        ));
    }
    let s = ctx.backend.snapshot(&caller, &id, body.name).await?;
    Ok((StatusCode::CREATED, Json(models::snapshot(&s))).into_response())
}

/// `GET /snapshots?sandboxID=&name=&limit=&nextToken=`: newest first, `X-Next-Token` while more
/// remain; `name` matches a snapshot's id or one of its names.
pub async fn list_snapshots(
    State(ctx): State<AppCtx>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let mut sandbox = None;
    let mut name = None;
    let mut limit = 100usize;
    let mut after: Option<String> = None;
    for pair in query.as_deref().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = super::list::percent_decode(v);
        match k {
            "sandboxID" => sandbox = Some(v),
            "name" => name = Some(v),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("invalid limit {v:?}")))?
            }
            "nextToken" => after = Some(v),
            _ => {}
        }
    }
    let mut all = ctx.backend.list_snapshots(&caller).await?;
    all.retain(|s| {
        sandbox
            .as_ref()
            .is_none_or(|id| s.sandbox_id.as_str() == id)
            && name
                .as_ref()
                .is_none_or(|n| &s.id == n || s.names.contains(n))
    });
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    if let Some(a) = &after {
        match all.iter().position(|s| &s.id == a) {
            Some(i) => {
                all.drain(..=i);
            }
            None => return Err(ApiError::bad_request("invalid nextToken")),
        }
    }
    let more = all.len() > limit;
    all.truncate(limit);
    let items: Vec<Value> = all.iter().map(models::snapshot).collect();
    let mut resp = Json(items).into_response();
    if more && let Some(v) = all.last().and_then(|s| HeaderValue::from_str(&s.id).ok()) {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `GET /templates`.
pub async fn list_templates(
    State(ctx): State<AppCtx>,
    caller: Caller,
) -> ApiResult<Json<Vec<Value>>> {
    let t = ctx.backend.templates(&caller).await?;
    Ok(Json(t.iter().map(models::template_info).collect()))
}

/// `GET /templates/{id}` (an id or an alias).
pub async fn get_template(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = ctx.backend.templates(&caller).await?;
    t.iter()
        .find(|t| t.id == id || t.aliases.contains(&id))
        .map(|t| Json(models::template(t)))
        .ok_or_else(|| ApiError::not_found(format!("Template not found: {id}")))
}

/// `GET /templates/aliases/{alias}` → `{templateID, public}` (what `Template.exists` asks).
pub async fn template_alias(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(alias): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = ctx.backend.templates(&caller).await?;
    t.iter()
        .find(|t| t.id == alias || t.aliases.contains(&alias))
        .map(|t| Json(json!({"templateID": t.id, "public": t.public})))
        .ok_or_else(|| ApiError::not_found(format!("Template alias not found: {alias}")))
}

/// `DELETE /templates/{id}`: deletes a snapshot (204; 404 when there is none). Templates of the
/// backend's own configuration are read-only through the API.
pub async fn delete_template(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if ctx.backend.delete_snapshot(&caller, &id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    let t = ctx.backend.templates(&caller).await?;
    if t.iter().any(|t| t.id == id || t.aliases.contains(&id)) {
        return Err(ApiError::bad_request(format!(
            "template {id} is configured on the server and read-only through the API"
        )));
    }
    Err(ApiError::not_found(format!("Template not found: {id}")))
}

/// `GET /teams`.
pub async fn teams(State(ctx): State<AppCtx>, caller: Caller) -> Json<Vec<Value>> {
    Json(
        ctx.keys
            .teams(&caller)
            .await
            .iter()
            .map(models::team)
            .collect(),
    )
}

/// `GET /api-keys`.
pub async fn list_api_keys(State(ctx): State<AppCtx>, caller: Caller) -> Json<Vec<Value>> {
    Json(
        ctx.keys
            .list(&caller)
            .await
            .iter()
            .map(|(k, _)| models::api_key(k))
            .collect(),
    )
}

/// `POST /api-keys` → 201 with the key's value (shown only here).
pub async fn create_api_key(
    State(ctx): State<AppCtx>,
    caller: Caller,
    JsonBody(body): JsonBody<NewApiKey>,
) -> ApiResult<Response> {
    let name = body.name.unwrap_or_default();
    let k = ctx
        .keys
        .create(&caller, &name, body.team_name.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(models::created_api_key(&k.record, &k.team, &k.raw)),
    )
        .into_response())
}

/// `PATCH /api-keys/{id}` (`{"name": …}`).
pub async fn update_api_key(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateApiKey>,
) -> ApiResult<Json<Value>> {
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let k = ctx.keys.rename(&caller, &id, &name).await?;
    Ok(Json(models::api_key(&k)))
}

/// `DELETE /api-keys/{id}`.
pub async fn delete_api_key(
    State(ctx): State<AppCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.keys.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
