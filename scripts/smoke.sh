#!/usr/bin/env bash
# Checks the worker's JSON contract against any base URL: a local `make dev`, the end-to-end
# tests' worker, or a deployed workers.dev URL.
#
#   scripts/smoke.sh BASE_URL            e.g. http://127.0.0.1:8787 or https://sqlite-poc.NAME.workers.dev
#   SMOKE_USER=a   user whose database is loaded, written back, and moved to its Durable Object
#                  and back (default: smoke-test; created if missing)
#   EXPECT_TABLES="projects raw_clips"   tables that must be listed for SMOKE_USER (default: none)
#   AUTH_TOKEN=... sent as "Authorization: Bearer ..." when set
set -uo pipefail
BASE_URL="${1:-}"
[ -n "$BASE_URL" ] || { echo "usage: scripts/smoke.sh BASE_URL" >&2; exit 2; }
BASE_URL="${BASE_URL%/}"
USER_ID="${SMOKE_USER:-smoke-test}"
command -v curl >/dev/null && command -v jq >/dev/null || { echo "smoke: needs curl and jq (make setup)" >&2; exit 2; }

passed=0 failed=0
check() { # check NAME OK(0/1) [DETAIL]
  if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1${3:+: $3}"; fi
}
auth=()
[ -n "${AUTH_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $AUTH_TOKEN")
body=$(mktemp); trap 'rm -f "$body"' EXIT
request() { # request METHOD PATH -> prints status, body in $body
  curl -sS -o "$body" -w '%{http_code}' --max-time 60 -X "$1" "${auth[@]}" "$BASE_URL$2" 2>/dev/null || echo 000
}
post() { # post PATH JSON -> prints status, body in $body
  curl -sS -o "$body" -w '%{http_code}' --max-time 60 -X POST "${auth[@]}" \
    -H 'Content-Type: application/json' -d "$2" "$BASE_URL$1" 2>/dev/null || echo 000
}

status=$(request GET "/?user=$USER_ID")
check "GET /?user=$USER_ID answers 200" "$([ "$status" = 200 ]; echo $?)" "status $status: $(head -c 300 "$body")"

jq -e '
  .success == true
  and (.cold_start | type) == "boolean"
  and ([.delay_analysis.load, .delay_analysis.save] | all(
        (.ms | type == "number" and . >= 0 and . == floor)
        and (.status | IN("optimal", "acceptable", "warning", "slow", "critical"))
        and (.action | IN("none", "log_warning", "consider_archiving", "show_user_warning"))))
  and (.delay_analysis.thresholds | keys_unsorted == ["optimal_ms", "acceptable_ms", "warning_ms", "critical_ms"])
  and (.delay_analysis.thresholds | [.[]] | all(type == "number"))
  and (.timing_breakdown.load | keys_unsorted == ["total_ms", "wasm_init_ms", "download_ms", "parse_ms"])
  and (.timing_breakdown.save | keys_unsorted == ["total_ms", "serialize_ms", "upload_ms"])
  and ([.timing_breakdown.load[], .timing_breakdown.save[], .timing_breakdown.query_ms] | all(type == "number" and . >= 0))
  and (.db_info.size_bytes | type == "number" and . > 0)
  and (.db_info.size_kb == ((.db_info.size_bytes / 1024 * 100 | round) / 100))
  and (.db_info.tables | type == "array" and all(type == "string"))
  and (.clock.unmeasured | type == "array")
' "$body" >/dev/null 2>&1
check "response has every contract field with the right type" $? "$(head -c 300 "$body")"

jq -e '
  def band(ms; t): if ms < t.optimal_ms then ["optimal","none"]
    elif ms < t.acceptable_ms then ["acceptable","none"]
    elif ms < t.warning_ms then ["warning","log_warning"]
    elif ms < t.critical_ms then ["slow","consider_archiving"]
    else ["critical","show_user_warning"] end;
  .delay_analysis as $d
  | [$d.load, $d.save] | all([.status, .action] == band(.ms; $d.thresholds)
      # the band is chosen on the unrounded total, so a value that rounds onto a boundary may differ
      or ([.ms] | inside([$d.thresholds[]])))
' "$body" >/dev/null 2>&1
check "statuses and actions follow the thresholds" $? "$(jq -c .delay_analysis "$body" 2>/dev/null)"

jq -e '.storage.layout | IN("single", "incremental")' "$body" >/dev/null 2>&1
check "the report says the storage layout" $? "$(jq -c .storage "$body" 2>/dev/null)"

for table in ${EXPECT_TABLES:-}; do
  jq -e --arg t "$table" '.db_info.tables | index($t) != null' "$body" >/dev/null 2>&1
  check "table $table is listed" $? "$(jq -c .db_info.tables "$body" 2>/dev/null)"
done

status=$(post "/query?user=$USER_ID" '{"sql": "SELECT 1 AS one, ? AS big", "params": [{"integer": "9007199254740993"}]}')
check "POST /query runs SQL and returns lossless results" \
  "$([ "$status" = 200 ] && jq -e '.results[0].rows == [[1, {"integer": "9007199254740993"}]] and .db_info.saved == false' "$body" >/dev/null 2>&1; echo $?)" \
  "status $status: $(head -c 300 "$body")"

status=$(post "/db/$USER_ID/v2/pipeline" '{"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}, {"type": "close"}]}')
check "the libSQL pipeline answers (a closed stream: baton null)" \
  "$([ "$status" = 200 ] && jq -e '.baton == null and .results[0].response.result.rows[0][0].value == "1"' "$body" >/dev/null 2>&1; echo $?)" \
  "status $status: $(head -c 300 "$body")"

status=$(request GET "/db/$USER_ID/")
check "the WebSocket endpoint refuses a plain GET with 426 upgrade_required" \
  "$([ "$status" = 426 ] && jq -e '.error.code == "upgrade_required"' "$body" >/dev/null 2>&1; echo $?)" \
  "status $status: $(head -c 300 "$body")"

export_file=$(mktemp)
status=$(curl -sS -o "$export_file" -w '%{http_code}' --max-time 60 "${auth[@]}" "$BASE_URL/export?user=$USER_ID" 2>/dev/null || echo 000)
check "GET /export returns the database as one SQLite file" \
  "$([ "$status" = 200 ] && [ "$(head -c 15 "$export_file")" = "SQLite format 3" ]; echo $?)" "status $status"
rm -f "$export_file"

status=$(post "/migrate?user=$USER_ID&to=durable_object" '')
check "POST /migrate moves the user to their Durable Object" \
  "$([ "$status" = 200 ] && jq -e '.moved.route == "durable_object"' "$body" >/dev/null 2>&1; echo $?)" \
  "status $status: $(head -c 300 "$body")"
status=$(request GET "/?user=$USER_ID")
check "a moved user is served by the Durable Object" \
  "$([ "$status" = 200 ] && jq -e '.route == "durable_object"' "$body" >/dev/null 2>&1; echo $?)" "status $status"
status=$(post "/migrate?user=$USER_ID&to=r2" '')
check "POST /migrate moves the user back to R2" \
  "$([ "$status" = 200 ] && jq -e '.route == "r2"' "$body" >/dev/null 2>&1; echo $?)" \
  "status $status: $(head -c 300 "$body")"

status=$(request GET "/?user=../etc")
check "an unsafe user id is refused with 400 invalid_user" \
  "$([ "$status" = 400 ] && jq -e '.error.code == "invalid_user"' "$body" >/dev/null 2>&1; echo $?)" "status $status"

status=$(request POST "/?user=$USER_ID")
check "POST is refused with 405" "$([ "$status" = 405 ]; echo $?)" "status $status"

status=$(request GET "/no-such-route")
check "an unknown path is a JSON 404" \
  "$([ "$status" = 404 ] && jq -e '.error.code == "not_found"' "$body" >/dev/null 2>&1; echo $?)" "status $status"

echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
