//! The REST API contract, black-box over HTTP against the local stack: every endpoint (also
//! behind doubled slashes), every status code of the reference's table or of our documented
//! deviations (`docs/api-compatibility.md`), every (token kind × endpoint) permission pair,
//! the result shapes (including the 303 for results over the response limit and
//! `RETURN-OBJECT-STORE-ADDRESS`), and malformed requests that must never give 5xx or hang.

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::helpers::*;

const INVALID_ACCESS: &str = "Invalid access token or project doesn't exist";
const TOKEN_USED: &str = "This token has already been used to upload clks.";
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// What a single contract request may take at most: none of them does real work.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);
/// Just over the api's `MAX_REQUEST_BYTES` default (6 MiB − 64 KiB).
const OVER_REQUEST_LIMIT: usize = 6 * 1024 * 1024 + 1024;

struct Reply {
    status: u16,
    content_type: String,
    location: Option<String>,
    text: String,
    body: Value,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = self.text.chars().take(400).collect();
        write!(f, "{} [{}] {}", self.status, self.content_type, text)
    }
}

async fn send(rb: RequestBuilder) -> anyhow::Result<Reply> {
    let r = rb.timeout(REQUEST_LIMIT).send().await?;
    let status = r.status().as_u16();
    let header = |name: reqwest::header::HeaderName| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let location = header(reqwest::header::LOCATION);
    let text = r.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Reply { status, content_type, location, text, body })
}

/// Asserts an RFC 7807 problem with this status; returns its detail.
#[track_caller]
fn problem(r: &Reply, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {r}");
    assert_eq!(r.content_type, "application/problem+json", "{what}: {r}");
    assert_eq!(r.body["type"], "about:blank", "{what}: {r}");
    assert_eq!(r.body["status"], status, "{what}: {r}");
    assert!(r.body["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {r}");
    r.body["detail"].as_str().unwrap_or_else(|| panic!("{what}: no detail: {r}")).to_string()
}

/// The one 403 for a wrong token and for an unknown or deleted project or run: byte for byte
/// the same document, so a caller learns nothing about which ids exist.
#[track_caller]
fn denied(r: &Reply, what: &str) {
    problem(r, 403, what);
    let expected = json!({"type": "about:blank", "title": "Forbidden", "status": 403, "detail": INVALID_ACCESS});
    assert_eq!(r.body, expected, "{what}: {r}");
}

fn is_hex48(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 48 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The path with every `/` doubled: `/projects/x` → `//projects//x` (so `/api/v1//projects//x`).
fn doubled(path: &str) -> String {
    path.replace('/', "//")
}

fn clks_of(records: &[Vec<u8>]) -> Value {
    json!({"clks": records.iter().map(|r| b64(r)).collect::<Vec<_>>()})
}

/// Party 0 has `n0` records, party 1 `n1`; record i of both is a noisy copy of the same base
/// record (8 bits of 512 flipped at most), unrelated records score about 0.5.
fn two_parties(seed: u64, n0: usize, n1: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut data = synthetic_parties(seed, 2, n0.max(n1), 64, 8);
    let b = data.pop().unwrap_or_default();
    let a = data.pop().unwrap_or_default();
    (a[..n0].to_vec(), b[..n1].to_vec())
}

fn random_id(seed: u64) -> String {
    let mut rng = Rng(seed ^ 0x5eed);
    (0..3).map(|_| format!("{:016x}", rng.next())).collect()
}

async fn create(api: &Api, body: Value) -> anyhow::Result<Reply> {
    send(api.http.post(api.url("/projects")).json(&body)).await
}

// ---- /status, /version, /projects -------------------------------------------------------------

#[tokio::test]
async fn status_version_and_project_listing() -> anyhow::Result<()> {
    let api = Api::new();
    for path in ["/status", "//status", "/status/"] {
        let r = send(api.http.get(api.url(path))).await?;
        assert_eq!(r.status, 200, "{path}: {r}");
        assert!(r.content_type.starts_with("application/json"), "{r}");
        assert_eq!(r.body["status"], "ok", "{r}");
        assert!(r.body["project_count"].is_u64(), "{r}");
        assert!(r.body["rate"].as_u64().is_some_and(|n| n >= 1), "{r}");
    }
    for path in ["/version", "//version"] {
        let r = send(api.http.get(api.url(path))).await?;
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.body["anonlink"], "0.15.3", "{r}");
        assert!(r.body["entityservice"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
        assert!(r.body["rust"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
        // The reference's test_version reads all three of its keys.
        assert!(r.body["python"].is_string(), "{r}");
    }

    let project = api.create_project("groups", 2, false).await?;
    // Listing needs no token, and ignores one that is sent.
    for (path, token) in [("/projects", None), ("//projects", None), ("/projects/", Some("garbage"))] {
        let mut rb = api.http.get(api.url(path));
        if let Some(t) = token {
            rb = rb.header("Authorization", t);
        }
        let r = send(rb).await?;
        assert_eq!(r.status, 200, "{path}: {r}");
        let listed = r.body.as_array().unwrap_or_else(|| panic!("{path}: not a list: {r}"));
        let entry = listed.iter().find(|p| p["project_id"] == project.id.as_str()).unwrap_or_else(|| panic!("{path}: new project not listed"));
        let time = entry["time_added"].as_str().unwrap_or_default();
        assert!(time.len() >= 19 && time.as_bytes()[10] == b'T', "time_added is ISO 8601: {entry}");
    }
    let r = send(api.http.delete(api.url(&format!("/projects/{}", project.id))).header("Authorization", &project.result_token)).await?;
    assert_eq!(r.status, 204, "{r}");
    let r = send(api.http.get(api.url("/projects"))).await?;
    assert!(!r.body.as_array().expect("list").iter().any(|p| p["project_id"] == project.id.as_str()), "deleted project still listed");
    Ok(())
}

#[tokio::test]
async fn create_project_answers_tokens_and_describes_the_project() -> anyhow::Result<()> {
    let api = Api::new();
    let schema = json!({"version": 3, "clkConfig": {"l": 512}});
    // An Authorization header is ignored; the doubled slash of the reference's tests works.
    let r = send(
        api.http
            .post(format!("{}//projects", api.base))
            .header("Authorization", "whatever")
            .json(&json!({"schema": schema, "result_type": "permutations", "name": "n", "notes": "x", "uses_blocking": true})),
    )
    .await?;
    assert_eq!(r.status, 201, "{r}");
    assert!(r.content_type.starts_with("application/json"), "{r}");
    let keys: Vec<&String> = r.body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["project_id", "result_token", "update_tokens"], "{r}");
    assert!(is_hex48(&r.body["project_id"]) && is_hex48(&r.body["result_token"]), "{r}");
    let updates = r.body["update_tokens"].as_array().expect("update_tokens");
    assert_eq!(updates.len(), 2, "number_parties defaults to 2: {r}");
    assert!(updates.iter().all(is_hex48), "{r}");
    assert_ne!(updates[0], updates[1]);

    let id = r.body["project_id"].as_str().unwrap_or_default();
    let d = send(api.http.get(api.url(&format!("/projects/{id}"))).header("Authorization", r.body["result_token"].as_str().unwrap_or_default())).await?;
    assert_eq!(d.status, 200, "{d}");
    assert_eq!(
        d.body,
        json!({"project_id": id, "parties_contributed": 0, "schema": schema, "result_type": "permutations",
               "number_parties": 2, "name": "n", "notes": "x", "error": false, "uses_blocking": true}),
        "ProjectDescription (and no public_key or paillier_context)"
    );

    // Defaults, and more than two parties for groups.
    let r = create(&api, json!({"schema": {}, "result_type": "groups", "number_parties": 4})).await?;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.body["update_tokens"].as_array().map(Vec::len), Some(4));
    let d = send(api.http.get(api.url(&format!("/projects/{}", r.body["project_id"].as_str().unwrap_or_default())))
        .header("Authorization", r.body["result_token"].as_str().unwrap_or_default()))
    .await?;
    assert_eq!((d.body["name"].as_str(), d.body["notes"].as_str(), d.body["uses_blocking"].as_bool()), (Some(""), Some(""), Some(false)), "{d}");
    // Unknown fields are ignored, as connexion does.
    let r = create(&api, json!({"schema": {}, "result_type": "similarity_scores", "extra": [1, 2]})).await?;
    assert_eq!(r.status, 201, "{r}");
    Ok(())
}

#[tokio::test]
async fn create_project_rejects_bad_bodies() -> anyhow::Result<()> {
    let api = Api::new();
    let ok = json!({"schema": {}, "result_type": "groups"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().expect("object").remove(k);
        b
    };
    // (what, body, a piece of the expected detail)
    let cases: Vec<(&str, Value, &str)> = vec![
        ("missing schema", without("schema"), "Schema information required"),
        ("null schema", with("schema", Value::Null), "Schema information required"),
        ("schema not an object", with("schema", json!("x")), "schema"),
        ("missing result_type", without("result_type"), "result_type must be either"),
        ("unknown result_type", with("result_type", json!("clusters")), "result_type must be either"),
        ("removed mapping result_type", with("result_type", json!("mapping")), "result_type must be either"),
        ("result_type not a string", with("result_type", json!(3)), "result_type"),
        ("one party", with("number_parties", json!(1)), "at least 2 parties"),
        ("zero parties", with("number_parties", json!(0)), "at least 2 parties"),
        ("negative parties", with("number_parties", json!(-3)), "at least 2 parties"),
        ("too many parties", with("number_parties", json!(99)), "at most 98"),
        ("parties as a string", with("number_parties", json!("2")), "number_parties"),
        ("fractional parties", with("number_parties", json!(2.5)), "number_parties"),
        ("3 parties, permutations", json!({"schema": {}, "result_type": "permutations", "number_parties": 3}), "requires result type 'groups'"),
        ("3 parties, similarity_scores", json!({"schema": {}, "result_type": "similarity_scores", "number_parties": 3}), "requires result type 'groups'"),
        ("uses_blocking not a bool", with("uses_blocking", json!("yes")), "uses_blocking"),
        ("name not a string", with("name", json!(5)), "name"),
        ("notes not a string", with("notes", json!({"a": 1})), "notes"),
        ("body is an array", json!([ok.clone()]), "expected a JSON object"),
        ("body is a string", json!("schema"), "expected a JSON object"),
    ];
    for (what, body, detail) in &cases {
        let r = create(&api, body.clone()).await?;
        let d = problem(&r, 400, what);
        assert!(d.contains(detail), "{what}: detail {d:?} should mention {detail:?}");
    }
    let raw = |body: &'static str| api.http.post(api.url("/projects")).header("Content-Type", "application/json").body(body);
    for (what, rb) in [("bad JSON", raw("{\"schema\": {}, ")), ("empty body", raw("")), ("trailing garbage", raw("{\"schema\":{},\"result_type\":\"groups\"} x"))] {
        problem(&send(rb).await?, 400, what);
    }
    // Deviation 4: a declared non-JSON content type is 415; a missing one is accepted.
    let r = send(api.http.post(api.url("/projects")).header("Content-Type", "text/plain").body(ok.to_string())).await?;
    problem(&r, 415, "text/plain");
    let r = send(api.http.post(api.url("/projects")).body(ok.to_string())).await?;
    assert_eq!(r.status, 201, "no content type: {r}");
    Ok(())
}

// ---- authentication ---------------------------------------------------------------------------

/// Every `/projects/{id}...` operation needs the header: 400 before anything else is looked at,
/// for a real project as for an unknown one.
#[tokio::test]
async fn a_missing_authorization_header_is_400_everywhere() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let run = api.post_run(&project, 0.9).await?;
    let unknown = random_id(1);
    for pid in [project.id.as_str(), unknown.as_str()] {
        for ep in Ep::ALL {
            for path_of in [str::to_string as fn(&str) -> String, doubled] {
                let rb = ep.request_without_token(&api, &path_of, pid, &run);
                let r = send(rb).await?;
                let d = problem(&r, 400, &format!("{ep:?} on {pid} without Authorization"));
                assert!(d.contains("Authorization"), "{ep:?}: {d}");
            }
        }
    }
    Ok(())
}

// ---- the permission matrix --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ep {
    DescribeProject,
    DeleteProject,
    ListRuns,
    PostRun,
    DescribeRun,
    DeleteRun,
    RunStatus,
    Result,
    Clks,
    BinaryClks,
    Authorize,
}

impl Ep {
    const ALL: [Ep; 11] = [
        Ep::DescribeProject,
        Ep::DeleteProject,
        Ep::ListRuns,
        Ep::PostRun,
        Ep::DescribeRun,
        Ep::DeleteRun,
        Ep::RunStatus,
        Ep::Result,
        Ep::Clks,
        Ep::BinaryClks,
        Ep::Authorize,
    ];

    /// The request, with a body that a permitted token gets past authorisation with and that
    /// changes nothing (a run with threshold 0 and an empty upload are 400s).
    fn request_without_token(self, api: &Api, path_of: &dyn Fn(&str) -> String, project: &str, run: &str) -> RequestBuilder {
        let p = format!("/projects/{project}");
        let r = format!("{p}/runs/{run}");
        let url = |path: &str| api.url(&path_of(path));
        match self {
            Ep::DescribeProject => api.http.get(url(&p)),
            Ep::DeleteProject => api.http.delete(url(&p)),
            Ep::ListRuns => api.http.get(url(&format!("{p}/runs"))),
            Ep::PostRun => api.http.post(url(&format!("{p}/runs"))).json(&json!({"threshold": 0})),
            Ep::DescribeRun => api.http.get(url(&r)),
            Ep::DeleteRun => api.http.delete(url(&r)),
            Ep::RunStatus => api.http.get(url(&format!("{r}/status"))),
            Ep::Result => api.http.get(url(&format!("{r}/result"))),
            Ep::Clks => api.http.post(url(&format!("{p}/clks"))).json(&json!({"clks": []})),
            Ep::BinaryClks => api
                .http
                .post(url(&format!("{p}/binaryclks")))
                .header("Content-Type", "application/octet-stream")
                .body(vec![0u8; 8]),
            Ep::Authorize => api.http.get(url(&format!("{p}/authorize-external-upload"))),
        }
    }

    fn request(self, api: &Api, project: &str, run: &str, token: &str) -> RequestBuilder {
        self.request_without_token(api, &str::to_string, project, run).header("Authorization", token)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Result,
    Update(usize),
    Receipt(usize),
    /// A token of another project (its result, update or receipt token).
    Foreign,
    Garbage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Code(u16),
    /// 403 with the one invalid-access document.
    Denied,
    /// 403: the update token has been used.
    Used,
}

/// What the contract says `kind` gets on `ep` of a project of `result_type` whose run is
/// `complete` (and whose parties have uploaded) or not (and nobody has uploaded).
fn expected(result_type: &str, complete: bool, ep: Ep, kind: Kind) -> Expect {
    let permutations = result_type == "permutations";
    match (ep, kind) {
        // "run is not complete" is checked before the token.
        (Ep::Result, _) if !complete => Expect::Code(404),
        (Ep::DescribeProject | Ep::RunStatus | Ep::Result, Kind::Result) => Expect::Code(200),
        (Ep::DescribeProject | Ep::RunStatus | Ep::Result, Kind::Receipt(_)) if permutations => Expect::Code(200),
        (Ep::ListRuns | Ep::DescribeRun, Kind::Result) => Expect::Code(200),
        (Ep::PostRun, Kind::Result) => Expect::Code(400),
        (Ep::Clks | Ep::BinaryClks | Ep::Authorize, Kind::Update(_)) if complete => Expect::Used,
        (Ep::Clks | Ep::BinaryClks, Kind::Update(_)) => Expect::Code(400),
        (Ep::Authorize, Kind::Update(_)) => Expect::Code(201),
        _ => Expect::Denied,
    }
}

/// Runs every (endpoint × token) pair except deletes with the result token; returns the number
/// of cases checked.
async fn check_matrix(api: &Api, result_type: &str, complete: bool, project: &str, run: &str, tokens: &[(&str, Kind, String)]) -> anyhow::Result<usize> {
    let mut checked = 0;
    for ep in Ep::ALL {
        for (label, kind, token) in tokens {
            if matches!(ep, Ep::DeleteProject | Ep::DeleteRun) && *kind == Kind::Result {
                continue;
            }
            let what = format!("{result_type} ({}) {ep:?} with {label}", if complete { "completed" } else { "before uploads" });
            let r = send(ep.request(api, project, run, token)).await?;
            match expected(result_type, complete, ep, *kind) {
                Expect::Denied => denied(&r, &what),
                Expect::Used => assert_eq!(problem(&r, 403, &what), TOKEN_USED, "{what}"),
                Expect::Code(code) if code >= 400 => {
                    problem(&r, code, &what);
                }
                Expect::Code(code) => {
                    assert_eq!(r.status, code, "{what}: {r}");
                    assert!(r.content_type.starts_with("application/json"), "{what}: {r}");
                }
            }
            checked += 1;
        }
    }
    Ok(checked)
}

/// A permutations project of its own where party 0 has uploaded: its result token, its unused
/// update token 1 and party 0's receipt are valid tokens, just not for the project under test.
async fn foreign_tokens(api: &Api) -> anyhow::Result<Vec<(&'static str, Kind, String)>> {
    let other = api.create_project("permutations", 2, false).await?;
    let (a, _) = two_parties(99, 5, 5);
    let receipt = api.upload_json(&other, 0, &clks_of(&a)).await?;
    Ok(vec![
        ("other project's result token", Kind::Foreign, other.result_token.clone()),
        ("other project's unused update token", Kind::Foreign, other.update_tokens[1].clone()),
        ("other project's receipt token", Kind::Foreign, receipt),
    ])
}

/// The whole lifecycle of one project, with every token on every endpoint before the uploads,
/// after the run completed, after the run was deleted and after the project was deleted.
async fn permission_matrix(result_type: &str, seed: u64) -> anyhow::Result<Value> {
    let api = Api::new();
    let project = api.create_project(result_type, 2, false).await?;
    let run = api.post_run(&project, 0.8).await?;
    let mut tokens: Vec<(&str, Kind, String)> = vec![
        ("result token", Kind::Result, project.result_token.clone()),
        ("update token 0", Kind::Update(0), project.update_tokens[0].clone()),
        ("update token 1", Kind::Update(1), project.update_tokens[1].clone()),
        ("unknown hex token", Kind::Garbage, random_id(seed)),
        ("Bearer + result token", Kind::Garbage, format!("Bearer {}", project.result_token)),
        ("non-hex token", Kind::Garbage, "not a token at all".into()),
    ];
    tokens.extend(foreign_tokens(&api).await?);
    let mut checked = check_matrix(&api, result_type, false, &project.id, &run, &tokens).await?;

    let (a, b) = two_parties(seed, 30, 40);
    let receipt0 = api.upload_json(&project, 0, &clks_of(&a)).await?;
    let receipt1 = api.upload_binary(&project, 1, b.concat(), b.len(), 64).await?;
    assert!(is_hex48(&json!(receipt0)) && is_hex48(&json!(receipt1)));
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    tokens.push(("receipt token 0", Kind::Receipt(0), receipt0.clone()));
    tokens.push(("receipt token 1", Kind::Receipt(1), receipt1.clone()));
    checked += check_matrix(&api, result_type, true, &project.id, &run, &tokens).await?;

    // The results each token is given.
    let result_of = |token: &str, address: bool| {
        let mut rb = Ep::Result.request(&api, &project.id, &run, token);
        if address {
            rb = rb.header("RETURN-OBJECT-STORE-ADDRESS", "true");
        }
        send(rb)
    };
    let mut results = json!({"result": result_of(&project.result_token, false).await?.body});
    match result_type {
        "groups" => {
            let groups = canonical_groups(&results["result"]["groups"]);
            let expected: Vec<Vec<(u64, u64)>> = (0..30).map(|i| vec![(0, i), (1, i)]).collect();
            assert_eq!(groups, expected, "record i of both parties is the same entity");
            // The header concerns similarity scores only.
            let r = result_of(&project.result_token, true).await?;
            assert_eq!(canonical_groups(&r.body["groups"]), expected, "{r}");
        }
        "similarity_scores" => {
            let scores = results["result"]["similarity_scores"].as_array().expect("similarity_scores").clone();
            assert_eq!(scores.len(), 30, "{}", results["result"]);
            check_scores_order(&scores, 0.8);
            let mut pairs: Vec<(u64, u64)> = scores.iter().map(|s| (s[0][1].as_u64().unwrap_or(99), s[1][1].as_u64().unwrap_or(98))).collect();
            pairs.sort();
            assert_eq!(pairs, (0..30).map(|i| (i, i)).collect::<Vec<_>>());
            let address = result_of(&project.result_token, true).await?;
            let file = fetch_candidates(&api, &address).await?;
            assert_eq!(file.len(), 30, "candidate file entries");
        }
        "permutations" => {
            let mask = results["result"]["mask"].as_array().expect("mask").clone();
            assert_eq!(mask.len(), 30, "mask has min(30, 40) rows");
            let p0 = permutation_of(&result_of(&receipt0, false).await?, 30, 30);
            let p1 = permutation_of(&result_of(&receipt1, false).await?, 40, 30);
            // Every matched pair (i ↔ i) shares a row of the mask; every row the mask marks
            // holds such a pair.
            for (i, (x, y)) in p0.iter().zip(&p1).enumerate() {
                assert_eq!(x, y, "record {i} of both parties goes to the same row");
                assert_eq!(mask[*x as usize], 1, "row {x} holds a match");
            }
            assert!(mask.iter().all(|m| *m == 1), "all 30 rows match: {mask:?}");
            // The header does not turn a permutation into an address.
            let r = result_of(&receipt0, true).await?;
            assert_eq!(permutation_of(&r, 30, 30), p0);
            results["receipt0"] = json!(p0);
        }
        _ => unreachable!(),
    }

    // Unknown ids, with the result token, are the same 403 (the run is checked before the 404).
    let unknown_project = random_id(seed + 1);
    let unknown_run = random_id(seed + 2);
    for ep in Ep::ALL {
        let r = send(ep.request(&api, &unknown_project, &run, &project.result_token)).await?;
        denied(&r, &format!("{ep:?} on an unknown project"));
        checked += 1;
        if matches!(ep, Ep::DescribeRun | Ep::DeleteRun | Ep::RunStatus | Ep::Result) {
            let r = send(ep.request(&api, &project.id, &unknown_run, &project.result_token)).await?;
            denied(&r, &format!("{ep:?} on an unknown run"));
            checked += 1;
        }
    }

    // Deleting the run: 204 with an empty body, then it is gone for every run endpoint.
    let r = send(Ep::DeleteRun.request(&api, &project.id, &run, &project.result_token)).await?;
    assert_eq!((r.status, r.text.as_str()), (204, ""), "{r}");
    for ep in [Ep::DescribeRun, Ep::DeleteRun, Ep::RunStatus, Ep::Result] {
        denied(&send(ep.request(&api, &project.id, &run, &project.result_token)).await?, &format!("{ep:?} after the run's delete"));
        checked += 1;
    }
    let r = send(Ep::ListRuns.request(&api, &project.id, &run, &project.result_token)).await?;
    assert_eq!(r.body, json!([]), "{r}");

    // Deleting the project: 204, then every endpoint is the same 403 for every token.
    let other_run = api.post_run(&project, 0.9).await?;
    let r = send(Ep::DeleteProject.request(&api, &project.id, &run, &project.result_token)).await?;
    assert_eq!((r.status, r.text.as_str()), (204, ""), "{r}");
    for ep in Ep::ALL {
        for (label, _, token) in tokens.iter().take(3) {
            let r = send(ep.request(&api, &project.id, &other_run, token)).await?;
            denied(&r, &format!("{ep:?} with the {label} after the project's delete"));
            checked += 1;
        }
    }
    eprintln!("{result_type}: {checked} permission cases");
    Ok(results)
}

#[track_caller]
fn permutation_of(r: &Reply, len: usize, rows: u64) -> Vec<u64> {
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["rows"], rows, "{r}");
    let p: Vec<u64> = r.body["permutation"].as_array().unwrap_or_else(|| panic!("no permutation: {r}")).iter().map(|v| v.as_u64().expect("index")).collect();
    let mut sorted = p.clone();
    sorted.sort();
    assert_eq!(sorted, (0..len as u64).collect::<Vec<_>>(), "a permutation of the party's rows");
    p
}

/// Similarity scores are `[[0,r0],[1,r1],score]`, by descending score then ascending indices.
fn check_scores_order(scores: &[Value], threshold: f64) {
    let key = |s: &Value| (s[2].as_f64().expect("score"), s[0][0].as_u64().expect("d0"), s[1][0].as_u64().expect("d1"), s[0][1].as_u64().expect("r0"), s[1][1].as_u64().expect("r1"));
    for w in scores.windows(2) {
        let (a, b) = (key(&w[0]), key(&w[1]));
        assert!(a.0 > b.0 || (a.0 == b.0 && (a.1, a.2, a.3, a.4) < (b.1, b.2, b.3, b.4)), "out of order: {} then {}", w[0], w[1]);
    }
    for s in scores {
        let (score, d0, d1, ..) = key(s);
        assert!((threshold..=1.0).contains(&score), "{s}");
        assert_eq!((d0, d1), (0, 1), "{s}");
    }
}

/// Follows `RETURN-OBJECT-STORE-ADDRESS`'s answer to the candidate-pair file the way the
/// reference's clients do (an S3 client made from `credentials` and `object`), checks the
/// presigned `url` gives the same bytes, and returns the entries `(score, d0, d1, r0, r1)`.
async fn fetch_candidates(api: &Api, address: &Reply) -> anyhow::Result<Vec<(f64, u32, u32, u32, u32)>> {
    assert_eq!(address.status, 200, "{address}");
    let object = &address.body["object"];
    let path = object["path"].as_str().expect("path");
    let url = object["url"].as_str().expect("url");
    let endpoint = object["endpoint"].as_str().expect("endpoint");
    let bucket = object["bucket"].as_str().expect("bucket");
    assert_eq!(bucket, function_env("api")["WORK_BUCKET"].as_str(), "{address}");
    assert_eq!(object["secure"], url.starts_with("https://"), "{address}");
    assert!(url.contains(endpoint) && url.contains(path), "{address}");

    let c = &address.body["credentials"];
    let field = |name: &str| c[name].as_str().map(String::from).ok_or_else(|| anyhow::anyhow!("credentials.{name} missing in {address}"));
    let credentials = aws_sdk_s3::config::Credentials::new(field("AccessKeyId")?, field("SecretAccessKey")?, Some(field("SessionToken")?), None, "result-download");
    field("Expiration")?;
    let scheme = if object["secure"] == true { "https" } else { "http" };
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(format!("{scheme}://{endpoint}"))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    let got = aws_sdk_s3::Client::from_conf(conf).get_object().bucket(bucket).key(path).send().await?;
    let bytes = got.body.collect().await?.into_bytes();

    let r = api.http.get(url).send().await?;
    anyhow::ensure!(r.status() == 200, "GET presigned URL: {}", r.status());
    assert_eq!(r.bytes().await?, bytes, "the presigned URL serves the same object");
    assert_eq!(&bytes[..4], &[1, 8, 4, 4], "anonlink candidate file header");
    assert_eq!((bytes.len() - 4) % 24, 0);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    Ok(bytes[4..]
        .chunks(24)
        .enumerate()
        .map(|(i, c)| {
            let o = 4 + i * 24;
            (f64::from_le_bytes(c[..8].try_into().expect("8 bytes")), u32_at(o + 8), u32_at(o + 12), u32_at(o + 16), u32_at(o + 20))
        })
        .collect())
}

#[tokio::test]
async fn permissions_groups() -> anyhow::Result<()> {
    permission_matrix("groups", 11).await.map(drop)
}

#[tokio::test]
async fn permissions_similarity_scores() -> anyhow::Result<()> {
    permission_matrix("similarity_scores", 12).await.map(drop)
}

#[tokio::test]
async fn permissions_permutations() -> anyhow::Result<()> {
    permission_matrix("permutations", 13).await.map(drop)
}

/// Receipts of a groups project are issued but open nothing (they are for permutations only).
#[tokio::test]
async fn groups_receipts_open_nothing_on_multi_party_projects() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 3, false).await?;
    let run = api.post_run(&project, 0.8).await?;
    let data = synthetic_parties(21, 3, 20, 64, 8);
    let mut receipts = Vec::new();
    for (party, records) in data.iter().enumerate() {
        receipts.push(api.upload_json(&project, party, &clks_of(records)).await?);
    }
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    for (party, receipt) in receipts.iter().enumerate() {
        for ep in Ep::ALL {
            denied(&send(ep.request(&api, &project.id, &run, receipt)).await?, &format!("{ep:?} with receipt {party}"));
        }
    }
    let (code, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(code, 200);
    let groups = canonical_groups(&result["groups"]);
    assert!(groups.len() >= 18 && groups.iter().all(|g| g.len() >= 2), "{result}");
    Ok(())
}

// ---- runs -------------------------------------------------------------------------------------

#[tokio::test]
async fn runs_are_posted_listed_described_and_deleted() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let runs = format!("/projects/{}/runs", project.id);
    let auth = |rb: RequestBuilder| rb.header("Authorization", &project.result_token);
    let r = send(auth(api.http.get(api.url(&runs)))).await?;
    assert_eq!((r.status, r.body.clone()), (200, json!([])), "no runs yet: {r}");

    let r = send(auth(api.http.post(format!("{}/{}", api.base, doubled(&runs)))).json(&json!({"threshold": 1, "name": "n", "notes": "x", "extra": true}))).await?;
    assert_eq!(r.status, 201, "{r}");
    let run = r.body["run_id"].as_str().unwrap_or_default().to_string();
    assert!(is_hex48(&r.body["run_id"]), "{r}");
    assert_eq!(r.body, json!({"run_id": run, "threshold": 1.0, "name": "n", "notes": "x"}));
    let r = send(auth(api.http.post(api.url(&runs))).json(&json!({"threshold": 0.5}))).await?;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!((r.body["name"].as_str(), r.body["notes"].as_str()), (Some(""), Some("")), "defaults: {r}");
    let second = r.body["run_id"].as_str().unwrap_or_default().to_string();

    let r = send(auth(api.http.get(api.url(&runs)))).await?;
    let listed = r.body.as_array().expect("runs");
    assert_eq!(listed.len(), 2, "{r}");
    for entry in listed {
        assert_eq!(entry.as_object().map(|o| o.len()), Some(3), "{entry}");
        assert_eq!(entry["state"], "created", "{entry}");
        assert!(entry["time_added"].as_str().is_some_and(|t| t.contains('T')), "{entry}");
    }
    for path in [format!("{runs}/{run}"), doubled(&format!("{runs}/{run}/"))] {
        let r = send(auth(api.http.get(api.url(&path)))).await?;
        assert_eq!(r.body, json!({"run_id": run, "threshold": 1.0, "name": "n", "notes": "x"}), "{path}: {r}");
    }

    // RunStatus of a run waiting for data.
    let r = send(auth(api.http.get(api.url(&format!("{runs}/{run}/status"))))).await?;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["state"], "created");
    assert_eq!(r.body["stages"], 3);
    assert!(r.body["time_started"].is_null() && r.body.get("time_started").is_some(), "{r}");
    assert_eq!(r.body["current_stage"], json!({"number": 1, "description": "waiting for CLKs",
        "progress": {"absolute": 0, "relative": 0.0, "description": "number of parties already contributed"}}));
    // The result of a run that is not complete: 404, whatever the token.
    for token in [project.result_token.as_str(), "garbage"] {
        let r = send(api.http.get(api.url(&format!("{runs}/{run}/result"))).header("Authorization", token)).await?;
        assert_eq!(problem(&r, 404, "result not ready"), "run is not complete");
    }

    let r = send(auth(api.http.delete(api.url(&format!("{runs}/{run}"))))).await?;
    assert_eq!((r.status, r.text.as_str()), (204, ""), "{r}");
    denied(&send(auth(api.http.delete(api.url(&format!("{runs}/{run}"))))).await?, "second delete");
    let r = send(auth(api.http.get(api.url(&runs)))).await?;
    assert_eq!(r.body.as_array().map(|l| l.iter().map(|e| e["run_id"].clone()).collect::<Vec<_>>()), Some(vec![json!(second)]), "{r}");
    Ok(())
}

#[tokio::test]
async fn post_run_rejects_bad_bodies() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let url = api.url(&format!("/projects/{}/runs", project.id));
    let post = |body: String, content_type: &str| {
        api.http.post(&url).header("Authorization", &project.result_token).header("Content-Type", content_type.to_string()).body(body)
    };
    let cases: Vec<(&str, &str, &str)> = vec![
        ("missing threshold", r#"{"name": "x"}"#, "threshold"),
        ("null threshold", r#"{"threshold": null}"#, "threshold"),
        ("threshold 0", r#"{"threshold": 0}"#, "greater than 0"),
        ("negative threshold", r#"{"threshold": -0.5}"#, "greater than 0"),
        ("threshold over 1", r#"{"threshold": 1.0001}"#, "at most 1"),
        ("threshold 2", r#"{"threshold": 2}"#, "at most 1"),
        ("threshold as a string", r#"{"threshold": "0.9"}"#, "threshold"),
        ("threshold out of f64 range", r#"{"threshold": 1e400}"#, ""),
        ("name not a string", r#"{"threshold": 0.9, "name": 1}"#, "name"),
        ("bad JSON", r#"{"threshold": 0.9"#, ""),
        ("empty body", "", ""),
        ("an array", r#"[{"threshold": 0.9}]"#, "JSON object"),
        ("a number", "0.9", "JSON object"),
    ];
    for (what, body, detail) in cases {
        let d = problem(&send(post(body.into(), "application/json")).await?, 400, what);
        assert!(d.contains(detail), "{what}: {d:?} should mention {detail:?}");
    }
    problem(&send(post(r#"{"threshold": 0.9}"#.into(), "text/plain")).await?, 415, "text/plain run");
    let r = send(api.http.get(&url).header("Authorization", &project.result_token)).await?;
    assert_eq!(r.body, json!([]), "no refused request created a run: {r}");
    Ok(())
}

/// Deviations 5 and 6: a project in error refuses new runs with 409; the result of a run in
/// error is 409 with the run's message, after the token check.
#[tokio::test]
async fn projects_and_runs_in_error_answer_409() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let run = api.post_run(&project, 0.9).await?;
    let (a, _) = two_parties(31, 20, 20);
    api.upload_json(&project, 0, &clks_of(&a)).await?;
    let long: Vec<Vec<u8>> = a.iter().map(|r| [r.as_slice(), r.as_slice()].concat()).collect();
    api.upload_json(&project, 1, &clks_of(&long)).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "error", "{status}");
    assert!(status["message"].is_string(), "{status}");
    assert_eq!(api.describe(&project).await?["error"], true);

    let result = |token: &str| send(Ep::Result.request(&api, &project.id, &run, token));
    denied(&result("garbage").await?, "result of a failed run with a wrong token");
    denied(&result(&project.update_tokens[0]).await?, "result of a failed run with an update token");
    let d = problem(&result(&project.result_token).await?, 409, "result of a failed run");
    assert!(d.starts_with("Error during computation of run"), "{d}");
    let r = send(api.http.post(api.url(&format!("/projects/{}/runs", project.id))).header("Authorization", &project.result_token).json(&json!({"threshold": 0.9}))).await?;
    assert_eq!(problem(&r, 409, "post run in error"), "Can't post run as project has errors");
    Ok(())
}

// ---- uploads ----------------------------------------------------------------------------------

async fn post_clks(api: &Api, project: &Project, party: usize, content_type: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<Reply> {
    send(
        api.http
            .post(api.url(&format!("/projects/{}/clks", project.id)))
            .header("Authorization", &project.update_tokens[party])
            .header("Content-Type", content_type.to_string())
            .body(body),
    )
    .await
}

#[tokio::test]
async fn json_uploads_their_forms_and_their_refusals() -> anyhow::Result<()> {
    let api = Api::new();
    let (a, b) = two_parties(41, 6, 6);
    let enc: Vec<String> = a.iter().map(|r| b64(r)).collect();

    // Without blocking: refusals first (none of them uses the token), then `clks`.
    let plain = api.create_project("groups", 2, false).await?;
    let refusals: Vec<(&str, u16, &str, String, &str)> = vec![
        ("empty clks", 400, "application/json", json!({"clks": []}).to_string(), "Missing CLKs information"),
        ("empty encodings", 400, "application/json", json!({"encodings": []}).to_string(), "Missing CLKs information"),
        ("text/plain", 400, "text/plain", json!({"clks": enc}).to_string(), "Content Type not supported"),
        ("octet-stream on /clks (deviation 8)", 400, "application/octet-stream", "\0\0\0\0".into(), "Content Type not supported"),
        ("bad JSON", 400, "application/json", "{\"clks\": [".into(), "not valid JSON"),
        ("clks not a list", 400, "application/json", json!({"clks": "abc"}).to_string(), "upload"),
        ("blocks on a project without blocking", 403, "application/json", json!({"encodings": enc, "blocks": {"0": ["x"]}}).to_string(), "Blocking has been disabled"),
        ("clknblocks on a project without blocking", 403, "application/json", json!({"clknblocks": [[enc[0], "x"]]}).to_string(), "Blocking has been disabled"),
        ("no encodings at all", 403, "application/json", json!({"foo": [1]}).to_string(), "Missing encoding information"),
    ];
    for (what, status, content_type, body, detail) in &refusals {
        let d = problem(&post_clks(&api, &plain, 0, content_type, body.clone()).await?, *status, what);
        assert!(d.contains(detail), "{what}: {d:?} should mention {detail:?}");
    }
    let r = post_clks(&api, &plain, 0, "application/json; charset=utf-8", json!({"clks": enc}).to_string()).await?;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.body["message"], "Updated");
    assert!(is_hex48(&r.body["receipt_token"]), "{r}");
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(2), "{r}");
    // The same token again: 403, whatever the body.
    assert_eq!(problem(&post_clks(&api, &plain, 0, "application/json", json!({"clks": enc}).to_string()).await?, 403, "re-upload"), TOKEN_USED);
    // Inline `encodings` without blocks.
    let enc_b: Vec<String> = b.iter().map(|r| b64(r)).collect();
    assert_eq!(post_clks(&api, &plain, 1, "application/json", json!({"encodings": enc_b}).to_string()).await?.status, 201);

    // With blocking: `clknblocks`, and `encodings` + `blocks` inline.
    let blocked = api.create_project("groups", 2, true).await?;
    let upload_bucket = function_env("api")["UPLOAD_BUCKET"].clone();
    let refusals: Vec<(&str, u16, String, &str)> = vec![
        ("clks on a blocking project", 403, json!({"clks": enc}).to_string(), "Expecting blocking information"),
        ("encodings without blocks", 403, json!({"encodings": enc}).to_string(), "Expecting blocking information"),
        ("blocks without encodings (deviation 10)", 400, json!({"clks": enc, "blocks": {"0": ["x"]}}).to_string(), "'blocks' is accepted only together with 'encodings'"),
        ("empty clknblocks", 400, json!({"clknblocks": []}).to_string(), "Missing CLKs information"),
        ("external encodings, inline blocks (deviation 9)", 400,
            json!({"encodings": {"file": {"bucket": upload_bucket, "path": format!("{}/0/e.bin", blocked.id)}}, "blocks": {"0": ["x"]}}).to_string(), "blocks in the object store too"),
        ("inline encodings, external blocks (deviation 9)", 400,
            json!({"encodings": enc, "blocks": {"file": {"bucket": "b", "path": format!("{}/0/blocks.json", blocked.id)}}}).to_string(), "both"),
    ];
    for (what, status, body, detail) in &refusals {
        let d = problem(&post_clks(&api, &blocked, 0, "application/json", body.clone()).await?, *status, what);
        assert!(d.contains(detail), "{what}: {d:?} should mention {detail:?}");
    }
    let clknblocks: Vec<Value> = enc.iter().enumerate().map(|(i, e)| json!([e, "all", i % 2])).collect();
    assert_eq!(post_clks(&api, &blocked, 0, "application/json", json!({"clknblocks": clknblocks}).to_string()).await?.status, 201);
    let blocks: serde_json::Map<String, Value> = (0..6).map(|i| (i.to_string(), json!(["all", i % 2]))).collect();
    let r = post_clks(&api, &blocked, 1, "application/json", json!({"encodings": enc_b, "blocks": blocks}).to_string()).await?;
    assert_eq!(r.status, 201, "{r}");

    // Both projects link what they were given.
    for project in [&plain, &blocked] {
        let run = api.post_run(project, 0.8).await?;
        let status = api.wait_for_run(project, &run, RUN_LIMIT).await?;
        assert_eq!(status["state"], "completed", "{status}");
        let (_, result) = api.result(project, &run, &project.result_token).await?;
        assert_eq!(canonical_groups(&result["groups"]), (0..6).map(|i| vec![(0, i), (1, i)]).collect::<Vec<_>>());
        assert_eq!(api.describe(project).await?["parties_contributed"], 2);
    }
    Ok(())
}

#[tokio::test]
async fn external_data_references_are_checked_at_request_time() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let r = send(api.http.get(api.url(&format!("//projects//{}//authorize-external-upload", project.id))).header("Authorization", &project.update_tokens[1])).await?;
    assert_eq!(r.status, 201, "{r}");
    let credentials = r.body["credentials"].as_object().expect("credentials");
    for field in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
        assert!(credentials.get(field).and_then(Value::as_str).is_some_and(|v| !v.is_empty()), "{field}: {r}");
    }
    let upload = &r.body["upload"];
    assert_eq!(upload["path"], format!("{}/1", project.id));
    assert!(upload["secure"].is_boolean() && upload["endpoint"].is_string(), "{r}");
    let bucket = upload["bucket"].as_str().expect("bucket").to_string();
    let endpoint = upload["endpoint"].as_str().expect("endpoint").to_string();
    // Issuing credentials does not use the token.
    assert_eq!(send(Ep::Authorize.request(&api, &project.id, "-", &project.update_tokens[1])).await?.status, 201);

    let file = |bucket: &str, path: String| json!({"encodings": {"file": {"bucket": bucket, "path": path}}});
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("another party's prefix", file(&bucket, format!("{}/0/e.bin", project.id)), 403, "Provided object store path is not allowed"),
        ("the bare prefix", file(&bucket, format!("{}/1", project.id)), 403, "Provided object store path is not allowed"),
        ("the prefix with a slash only", file(&bucket, format!("{}/1/", project.id)), 403, "Provided object store path is not allowed"),
        ("a look-alike prefix", file(&bucket, format!("{}/10/e.bin", project.id)), 403, "Provided object store path is not allowed"),
        ("another bucket", file("elsewhere", format!("{}/1/e.bin", project.id)), 403, "Provided object store path is not allowed"),
        // Refused whether pulls from clients' stores are off (not supported) or on (a link-local address).
        ("another object store", json!({"encodings": {"file": {"bucket": bucket, "path": format!("{}/1/e.bin", project.id), "endpoint": "169.254.169.254:9000"},
                                                      "credentials": {"AccessKeyId": "k", "SecretAccessKey": "s"}}}), 400, "'169.254.169.254"),
        ("external encodings, inline blocks", json!({"encodings": {"file": {"bucket": bucket, "path": format!("{}/1/e.bin", project.id)}}, "blocks": {"0": ["x"]}}), 403, "Blocking has been disabled"),
        ("file without a path", json!({"encodings": {"file": {"bucket": bucket}}}), 400, "path"),
    ];
    for (what, body, status, detail) in &cases {
        let d = problem(&post_clks(&api, &project, 1, "application/json", body.to_string()).await?, *status, what);
        assert!(d.contains(detail), "{what}: {d:?} should mention {detail:?}");
    }
    // A reference to the party's own prefix is accepted (naming the announced endpoint is fine);
    // the missing object then fails ingestion, not the request.
    let own = json!({"encodings": {"file": {"bucket": bucket, "path": format!("{}/1/e.bin", project.id), "endpoint": endpoint, "secure": false},
                                  "credentials": credentials}});
    let r = post_clks(&api, &project, 1, "application/json", own.to_string()).await?;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(problem(&send(Ep::Authorize.request(&api, &project.id, "-", &project.update_tokens[1])).await?, 403, "authorize after upload"), TOKEN_USED);
    Ok(())
}

async fn post_binary(api: &Api, project: &Project, party: usize, headers: &[(&str, &str)], body: Vec<u8>) -> anyhow::Result<Reply> {
    let mut rb = api.http.post(api.url(&format!("/projects/{}/binaryclks", project.id))).header("Authorization", &project.update_tokens[party]);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    send(rb.body(body)).await
}

#[tokio::test]
async fn binary_uploads_check_their_headers_and_size() -> anyhow::Result<()> {
    let api = Api::new();
    let r = create(&api, json!({"schema": {"clkConfig": {"l": 512}}, "result_type": "groups"})).await?;
    let project = Project {
        id: r.body["project_id"].as_str().unwrap_or_default().into(),
        result_token: r.body["result_token"].as_str().unwrap_or_default().into(),
        update_tokens: r.body["update_tokens"].as_array().expect("tokens").iter().map(|t| t.as_str().unwrap_or_default().into()).collect(),
    };
    let (a, b) = two_parties(51, 10, 10);
    let data = a.concat();
    let oct = ("Content-Type", "application/octet-stream");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        ("no Hash headers", vec![oct], data.clone(), "Binary upload requires 'Hash-Count' and 'Hash-Size' headers"),
        ("no Hash-Size", vec![oct, ("Hash-Count", "10")], data.clone(), "Binary upload requires"),
        ("no Hash-Count", vec![oct, ("Hash-Size", "64")], data.clone(), "Binary upload requires"),
        ("Hash-Count 0", vec![oct, ("Hash-Count", "0"), ("Hash-Size", "64")], vec![], "Invalid value for Hash-Count header"),
        ("Hash-Count -1", vec![oct, ("Hash-Count", "-1"), ("Hash-Size", "64")], data.clone(), "Invalid value for Hash-Count header"),
        ("Hash-Count not a number", vec![oct, ("Hash-Count", "ten"), ("Hash-Size", "64")], data.clone(), "Invalid value for Hash-Count header"),
        ("Hash-Count fractional", vec![oct, ("Hash-Count", "10.0"), ("Hash-Size", "64")], data.clone(), "Invalid value for Hash-Count header"),
        ("Hash-Size 0", vec![oct, ("Hash-Count", "10"), ("Hash-Size", "0")], data.clone(), "Invalid value for Hash-Size header"),
        ("Hash-Size 1025", vec![oct, ("Hash-Count", "10"), ("Hash-Size", "1025")], data.clone(), "Invalid value for Hash-Size header"),
        ("Hash-Size off the schema", vec![oct, ("Hash-Count", "20"), ("Hash-Size", "32")], data.clone(), "Upload 'Hash-Size' doesn't match project settings"),
        ("body too short", vec![oct, ("Hash-Count", "11"), ("Hash-Size", "64")], data.clone(), "Uploaded data did not match the expected size"),
        ("body too long", vec![oct, ("Hash-Count", "9"), ("Hash-Size", "64")], data.clone(), "Uploaded data did not match the expected size"),
        ("count × size overflows", vec![oct, ("Hash-Count", "18446744073709551615"), ("Hash-Size", "64")], data.clone(), "Uploaded data did not match the expected size"),
        ("JSON content type", vec![("Content-Type", "application/json"), ("Hash-Count", "10"), ("Hash-Size", "64")], data.clone(), "Content Type not supported"),
        ("no content type", vec![("Hash-Count", "10"), ("Hash-Size", "64")], data.clone(), "Content Type not supported"),
    ];
    for (what, headers, body, detail) in &cases {
        let d = problem(&post_binary(&api, &project, 0, headers, body.clone()).await?, 400, what);
        assert!(d.contains(detail), "{what}: {d:?} should mention {detail:?}");
    }
    // Deviation 7: none of those 400s was recorded against the party.
    let described = api.describe(&project).await?;
    assert_eq!((described["error"].as_bool(), described["parties_contributed"].as_u64()), (Some(false), Some(0)), "{described}");

    let r = post_binary(&api, &project, 0, &[oct, ("Hash-Count", " 10 "), ("Hash-Size", "+64")], data.clone()).await?;
    assert_eq!(r.status, 201, "headers are read as Python's int() reads them: {r}");
    assert_eq!(r.body["message"], "Updated");
    assert!(is_hex48(&r.body["receipt_token"]), "{r}");
    let again = post_binary(&api, &project, 0, &[oct, ("Hash-Count", "10"), ("Hash-Size", "64")], data).await?;
    assert_eq!(problem(&again, 403, "second binary upload"), TOKEN_USED);
    api.upload_binary(&project, 1, b.concat(), 10, 64).await?;
    let run = api.post_run(&project, 0.8).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    let (_, result) = api.result(&project, &run, &project.result_token).await?;
    assert_eq!(canonical_groups(&result["groups"]), (0..10).map(|i| vec![(0, i), (1, i)]).collect::<Vec<_>>());
    Ok(())
}

/// Deviation 15: a body over the request limit is 413 with a problem that points to
/// `authorize-external-upload`, whether its length is declared or not, and uses no token.
#[tokio::test]
async fn bodies_over_the_request_limit_are_413() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    let big_json = || {
        let filler = "A".repeat(OVER_REQUEST_LIMIT);
        format!(r#"{{"clks": ["{filler}"], "schema": {{}}, "result_type": "groups", "threshold": 0.5}}"#)
    };
    let auth = |rb: RequestBuilder, token: &str| rb.header("Authorization", token.to_string()).header("Content-Type", "application/json");
    let clks = api.url(&format!("/projects/{}/clks", project.id));
    let runs = api.url(&format!("/projects/{}/runs", project.id));
    let cases: Vec<(&str, RequestBuilder)> = vec![
        ("POST /projects", api.http.post(api.url("/projects")).header("Content-Type", "application/json").body(big_json())),
        ("POST /clks", auth(api.http.post(&clks), &project.update_tokens[0]).body(big_json())),
        ("POST /runs", auth(api.http.post(&runs), &project.result_token).body(big_json())),
        (
            "POST /binaryclks, sent",
            api.http
                .post(api.url(&format!("/projects/{}/binaryclks", project.id)))
                .header("Authorization", &project.update_tokens[0])
                .header("Content-Type", "application/octet-stream")
                .header("Hash-Count", (OVER_REQUEST_LIMIT / 64 + 1).to_string())
                .header("Hash-Size", "64")
                .body(vec![0u8; (OVER_REQUEST_LIMIT / 64 + 1) * 64]),
        ),
    ];
    for (what, rb) in cases {
        let r = send(rb).await.map_err(|e| anyhow::anyhow!("{what}: no answer: {e:?}"))?;
        let d = problem(&r, 413, what);
        assert!(d.contains("authorize-external-upload"), "{what}: {d}");
    }
    // Headers declaring more than the body holds disagree with it: the reference's 400, checked
    // before the size limit (its black-box tests send exactly this).
    let declared = api
        .http
        .post(api.url(&format!("/projects/{}/binaryclks", project.id)))
        .header("Authorization", &project.update_tokens[0])
        .header("Content-Type", "application/octet-stream")
        .header("Hash-Count", (OVER_REQUEST_LIMIT / 64 + 1).to_string())
        .header("Hash-Size", "64")
        .body(vec![0u8; 64]);
    problem(&send(declared).await?, 400, "POST /binaryclks, declared larger than sent");
    // Without a declared length (chunked), the limit holds while reading.
    let json_ct = [("Content-Type", "application/json")];
    let r = chunked_post("/projects", &json_ct, big_json().into_bytes()).await?;
    assert!(problem(&r, 413, "chunked POST /projects").contains("authorize-external-upload"), "{r}");
    let clks_headers = [("Content-Type", "application/json"), ("Authorization", project.update_tokens[0].as_str())];
    let r = chunked_post(&format!("/projects/{}/clks", project.id), &clks_headers, big_json().into_bytes()).await?;
    problem(&r, 413, "chunked POST /clks");
    // Nothing was consumed or created.
    let r = send(api.http.get(&runs).header("Authorization", &project.result_token)).await?;
    assert_eq!(r.body, json!([]), "{r}");
    let (a, _) = two_parties(61, 4, 4);
    api.upload_json(&project, 0, &clks_of(&a)).await?;
    // Just under the limit is accepted.
    let almost = json!({"clks": [b64(&vec![0u8; 4 * 1024 * 1024])]});
    let r = post_clks(&api, &project, 1, "application/json", almost.to_string()).await?;
    assert_eq!(r.status, 201, "a 5.3 MB body is under the limit: {r}");
    Ok(())
}

/// A chunked POST over a raw connection (reqwest here has no streaming bodies): the reply as far
/// as the server sent it, even if it answered before reading the whole body and closed.
async fn chunked_post(path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> anyhow::Result<Reply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(&api_url())?;
    let addr = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port_or_known_default().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("POST /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The write half stays open until the answer is read: a half-closed connection makes the
    // server drop the request.
    let write = async {
        wr.write_all(head.as_bytes()).await?;
        for c in body.chunks(64 * 1024) {
            wr.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
            wr.write_all(c).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(())
    };
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        // A reset after the answer (the server stops reading an oversized body) ends the read.
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    };
    // A write error (the server answered and stopped reading) is not the test's concern.
    let both = async { tokio::join!(write, read) };
    let (_written, ()) = tokio::time::timeout(REQUEST_LIMIT, both).await.map_err(|_| anyhow::anyhow!("{path}: no answer within {REQUEST_LIMIT:?}"))?;
    drop(wr);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("{path}: incomplete answer {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    };
    let body = match header("content-length").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => body.get(..n).unwrap_or(body).to_string(),
        None => body.to_string(),
    };
    Ok(Reply { status, content_type: header("content-type").unwrap_or_default(), location: header("location"), body: serde_json::from_str(&body).unwrap_or(Value::Null), text: body })
}

// ---- results over the response limit --------------------------------------------------------

/// Deviations 16 and 17: a similarity_scores result over the response limit is a 303 to a
/// presigned URL (that reqwest, like requests, follows), and `RETURN-OBJECT-STORE-ADDRESS`
/// answers the candidate file's address with a presigned URL instead of credentials.
#[tokio::test]
async fn large_similarity_scores_results_redirect_to_the_object_store() -> anyhow::Result<()> {
    const N: usize = 600;
    let api = Api::new();
    let project = api.create_project("similarity_scores", 2, false).await?;
    // Random encodings score about 0.5 against each other: at 0.3 every pair is a candidate,
    // N² pairs of ~30 bytes of JSON each, over 10 MB.
    let (a, b) = two_parties(71, N, N);
    api.upload_binary(&project, 0, a.concat(), N, 64).await?;
    api.upload_binary(&project, 1, b.concat(), N, 64).await?;
    let run = api.post_run(&project, 0.3).await?;
    let status = api.wait_for_run(&project, &run, RUN_LIMIT).await?;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["total_number_comparisons"], (N * N) as u64);
    assert_eq!(status["stages"], 2);

    let path = format!("/projects/{}/runs/{run}/result", project.id);
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let r = send(no_redirects.get(api.url(&path)).header("Authorization", &project.result_token)).await?;
    assert_eq!(r.status, 303, "{r}");
    let location = r.location.clone().unwrap_or_else(|| panic!("303 without Location"));
    assert!(location.starts_with("http"), "{location}");
    // Only the result token is redirected.
    denied(&send(no_redirects.get(api.url(&path)).header("Authorization", &project.update_tokens[0])).await?, "redirect with an update token");

    let r = api.http.get(api.url(&path)).header("Authorization", &project.result_token).send().await?;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await?;
    assert!(bytes.len() > 6 * 1024 * 1024, "{} bytes", bytes.len());
    let result: Value = serde_json::from_slice(&bytes)?;
    let scores = result["similarity_scores"].as_array().expect("similarity_scores");
    assert_eq!(scores.len(), N * N);
    check_scores_order(scores, 0.3);

    let address = send(api.http.get(api.url(&path)).header("Authorization", &project.result_token).header("RETURN-OBJECT-STORE-ADDRESS", "1")).await?;
    let candidates = fetch_candidates(&api, &address).await?;
    assert_eq!(candidates.len(), N * N);
    let mut from_file: Vec<(u32, u32, u64)> = candidates.iter().map(|c| (c.3, c.4, c.0.to_bits())).collect();
    let mut from_json: Vec<(u32, u32, u64)> =
        scores.iter().map(|s| (s[0][1].as_u64().unwrap_or(0) as u32, s[1][1].as_u64().unwrap_or(0) as u32, s[2].as_f64().unwrap_or(0.0).to_bits())).collect();
    from_file.sort_unstable();
    from_json.sort_unstable();
    assert!(from_file == from_json, "the candidate file and the JSON hold the same pairs and scores");
    assert!(candidates.iter().all(|c| (c.1, c.2) == (0, 1)), "dataset indices");
    Ok(())
}

// ---- malformed requests -----------------------------------------------------------------------

/// Nothing a client sends makes the api answer 5xx or hang: every request here gets a 4xx
/// problem document within the per-request limit.
#[tokio::test]
async fn malformed_requests_get_4xx_problems_quickly() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, true).await?;
    let run = api.post_run(&project, 0.9).await?;
    let p = format!("/projects/{}", project.id);
    let (rt, ut) = (project.result_token.as_str(), project.update_tokens[0].as_str());
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_obj = format!("{{\"clks\": {deep}}}");
    let long_id = "a".repeat(20_000);
    struct Case {
        what: String,
        method: Method,
        path: String,
        headers: Vec<(&'static str, Vec<u8>)>,
        body: Vec<u8>,
    }
    let case = |what: &str, method: Method, path: String, headers: Vec<(&'static str, Vec<u8>)>, body: &[u8]| Case {
        what: what.into(),
        method,
        path,
        headers,
        body: body.to_vec(),
    };
    let json_ct = ("Content-Type", b"application/json".to_vec());
    let auth = |t: &str| ("Authorization", t.as_bytes().to_vec());
    let mut cases = vec![
        case("unknown path", Method::GET, "/nope".into(), vec![], b""),
        case("unknown nested path", Method::GET, format!("{p}/runs/{run}/result/extra"), vec![auth(rt)], b""),
        case("wrong method on /projects", Method::PUT, "/projects".into(), vec![], b"{}"),
        case("wrong method on a project", Method::POST, p.clone(), vec![auth(rt)], b"{}"),
        case("wrong method on /status", Method::DELETE, "/status".into(), vec![], b""),
        case("GET /clks", Method::GET, format!("{p}/clks"), vec![auth(ut)], b""),
        case("POST authorize-external-upload", Method::POST, format!("{p}/authorize-external-upload"), vec![auth(ut)], b""),
        case("PATCH a run", Method::PATCH, format!("{p}/runs/{run}"), vec![auth(rt)], b"{}"),
        case("empty Authorization", Method::GET, p.clone(), vec![auth("")], b""),
        case("whitespace Authorization", Method::GET, p.clone(), vec![auth("   ")], b""),
        case("non-ASCII Authorization", Method::GET, p.clone(), vec![("Authorization", vec![0xff, 0xfe, b'a'])], b""),
        case("huge Authorization", Method::GET, p.clone(), vec![auth(&"f".repeat(6000))], b""),
        case("very long project id", Method::GET, format!("/projects/{long_id}"), vec![auth(rt)], b""),
        case("very long run id", Method::GET, format!("{p}/runs/{long_id}/status"), vec![auth(rt)], b""),
        case("percent-encoded slash in the id", Method::GET, format!("/projects/{}%2Fruns", project.id), vec![auth(rt)], b""),
        case("percent-encoded garbage id", Method::GET, "/projects/%FF%00%C3".into(), vec![auth(rt)], b""),
        case("dot segments", Method::GET, format!("/projects/../projects/{}", project.id), vec![auth("garbage")], b""),
        case("query string", Method::GET, format!("{p}?x=1&&y"), vec![auth("garbage")], b""),
        case("deeply nested JSON project", Method::POST, "/projects".into(), vec![json_ct.clone()], deep.as_bytes()),
        case("deeply nested JSON run", Method::POST, format!("{p}/runs"), vec![json_ct.clone(), auth(rt)], deep.as_bytes()),
        case("deeply nested clks", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], deep_obj.as_bytes()),
        case("invalid UTF-8 project", Method::POST, "/projects".into(), vec![json_ct.clone()], &[b'{', 0xff, 0xfe, b'}']),
        case("invalid UTF-8 clks", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], &[b'{', b'"', 0xc3, b'"', b':', b'1', b'}']),
        case("NaN threshold", Method::POST, format!("{p}/runs"), vec![json_ct.clone(), auth(rt)], b"{\"threshold\": NaN}"),
        case("huge number_parties", Method::POST, "/projects".into(), vec![json_ct.clone()], b"{\"schema\":{},\"result_type\":\"groups\",\"number_parties\":1e30}"),
        case("integer overflow number_parties", Method::POST, "/projects".into(), vec![json_ct.clone()], b"{\"schema\":{},\"result_type\":\"groups\",\"number_parties\":184467440737095516150}"),
        case("duplicate keys", Method::POST, "/projects".into(), vec![json_ct.clone()], b"{\"schema\":{},\"result_type\":\"groups\",\"result_type\":\"x\"}"),
        case("null body", Method::POST, "/projects".into(), vec![json_ct.clone()], b"null"),
        case("content type garbage", Method::POST, "/projects".into(), vec![("Content-Type", b";;;==".to_vec())], b"{}"),
        case("clks: null", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], b"{\"clks\": null}"),
        case("clknblocks of numbers", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], b"{\"clknblocks\": 5}"),
        case("encodings of strings", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], b"{\"encodings\": \"abc\", \"blocks\": {}}"),
        case("empty blocks map", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], b"{\"encodings\": [\"AAAA\"], \"blocks\": {}}"),
        case("file of the wrong type", Method::POST, format!("{p}/clks"), vec![json_ct.clone(), auth(ut)], b"{\"encodings\": {\"file\": 3}, \"blocks\": {\"file\": 3}}"),
        case("Hash headers as bytes", Method::POST, format!("{p}/binaryclks"), vec![auth(ut), ("Content-Type", b"application/octet-stream".to_vec()), ("Hash-Count", vec![0xff]), ("Hash-Size", vec![0xfe])], b"x"),
        case("Hash-Count huge", Method::POST, format!("{p}/binaryclks"), vec![auth(ut), ("Content-Type", b"application/octet-stream".to_vec()), ("Hash-Count", b"99999999999999999999999999".to_vec()), ("Hash-Size", b"8".to_vec())], b"x"),
        case("Hash-Count × Hash-Size overflows u64", Method::POST, format!("{p}/binaryclks"), vec![auth(ut), ("Content-Type", b"application/octet-stream".to_vec()), ("Hash-Count", b"18446744073709551615".to_vec()), ("Hash-Size", b"1024".to_vec())], b"x"),
        case("result with a bogus header value", Method::GET, format!("{p}/runs/{run}/result"), vec![auth(rt), ("RETURN-OBJECT-STORE-ADDRESS", vec![0xff])], b""),
    ];
    // Every JSON endpoint with a few broken bodies.
    for (path, token) in [("/projects".to_string(), None), (format!("{p}/runs"), Some(rt)), (format!("{p}/clks"), Some(ut))] {
        for body in ["", "{", "}", "[]", "[", "\"", "1", "true", "{\"a\":}", "{'schema': {}}", "\u{feff}{}", "{\"clks\": [\"\\ud800\"]}"] {
            let mut headers = vec![json_ct.clone()];
            if let Some(t) = token {
                headers.push(auth(t));
            }
            cases.push(case(&format!("{body:?} to {path}"), Method::POST, path.clone(), headers, body.as_bytes()));
        }
    }
    let client = reqwest::Client::builder().timeout(REQUEST_LIMIT).build()?;
    for c in &cases {
        let mut rb = client.request(c.method.clone(), api.url(&c.path)).body(c.body.clone());
        for (k, v) in &c.headers {
            rb = rb.header(*k, reqwest::header::HeaderValue::from_bytes(v).expect("header value"));
        }
        let started = std::time::Instant::now();
        let r = send(rb).await.map_err(|e| anyhow::anyhow!("{}: no answer within {REQUEST_LIMIT:?}: {e:?}", c.what))?;
        assert!((400..500).contains(&r.status), "{}: {r}", c.what);
        problem(&r, r.status, &c.what);
        assert!(started.elapsed() < Duration::from_secs(5), "{} took {:?}", c.what, started.elapsed());
    }
    eprintln!("{} malformed requests", cases.len());
    // None of them used the update token or broke the project.
    let described = api.describe(&project).await?;
    assert_eq!((described["error"].as_bool(), described["parties_contributed"].as_u64()), (Some(false), Some(0)), "{described}");
    assert_eq!(send(Ep::Authorize.request(&api, &project.id, &run, ut)).await?.status, 201);
    Ok(())
}

/// The reference's binary upload tests: a body whose length disagrees with Hash-Count ×
/// Hash-Size is a 400, whatever the headers announce (also more than the request limit).
#[tokio::test]
async fn binary_uploads_with_a_wrong_length_are_400() -> anyhow::Result<()> {
    let api = Api::new();
    let project = api.create_project("groups", 2, false).await?;
    for (count, length) in [(1_000_000usize, 128usize), (10, 128 * 9), (10, 128 * 11)] {
        let r = send(
            api.http
                .post(api.url(&format!("/projects/{}/binaryclks", project.id)))
                .header("Authorization", &project.update_tokens[0])
                .header("Content-Type", "application/octet-stream")
                .header("Hash-Count", count.to_string())
                .header("Hash-Size", "128")
                .body(vec![0u8; length]),
        )
        .await?;
        assert_eq!(r.status, 400, "count {count}, {length} bytes: {r}");
        assert!(r.content_type.starts_with("application/problem+json"), "{r}");
    }
    Ok(())
}
