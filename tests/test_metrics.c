/* test_metrics: counters and histograms (app_metrics.c) and the HTTP endpoint (app_http.c). */
#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "app_http.h"
#include "app_metrics.h"
#include "fx_proc.h"
#include "fx_cunit.h"

static char *render(const app_metrics *m, const app_metrics_pull *p)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT(app_metrics_render(m, p, f) == 0);
    fclose(f);
    return buf;
}

/* The value of the first line starting with `series ` (exact series text). */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ')
            return atof(p + n + 1);
    return -1;
}

static void test_counters_and_histograms(void)
{
    app_metrics *m = NULL;
    CU_ASSERT_FATAL(app_metrics_new(&m) == CDX_OK);
    app_metrics_request(m, APP_OP_QUERY, CDX_OK);
    app_metrics_request(m, APP_OP_QUERY, CDX_OK);
    app_metrics_request(m, APP_OP_UPSERT, CDX_ERR_INVALID_ARGUMENT);
    app_metrics_request(m, (app_op)99, CDX_ERR_INTEGRITY); /* out of range: "invalid" */
    app_metrics_request(m, APP_OP_GET, (cdx_err)4242);     /* unknown code: OTHER */
    CU_ASSERT_EQUAL(app_metrics_requests(m, APP_OP_QUERY, CDX_OK), 2);
    CU_ASSERT_EQUAL(app_metrics_requests(m, APP_OP_INVALID, CDX_ERR_INTEGRITY), 1);
    app_metrics_observe(m, APP_STAGE_DECRYPT, 10000);       /* 10 us: first bucket */
    app_metrics_observe(m, APP_STAGE_DECRYPT, 300000);      /* 300 us */
    app_metrics_observe(m, APP_STAGE_DECRYPT, 60000000000); /* 60 s: only +Inf */
    app_metrics_inc(m, APP_C_BUDGET_WAITS, 3);
    app_metrics_gauge_add(m, APP_G_CONNECTIONS, 5);
    app_metrics_gauge_add(m, APP_G_CONNECTIONS, -2);
    char *t = render(m, NULL);
    CU_ASSERT(value_of(t, "cipherdex_requests_total{op=\"query\",code=\"OK\"}") == 2);
    CU_ASSERT(value_of(t, "cipherdex_requests_total{op=\"upsert\",code=\"INVALID_ARGUMENT\"}") ==
              1);
    CU_ASSERT(value_of(t, "cipherdex_requests_total{op=\"invalid\",code=\"INTEGRITY\"}") == 1);
    CU_ASSERT(value_of(t, "cipherdex_requests_total{op=\"get\",code=\"OTHER\"}") == 1);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_bucket{stage=\"decrypt\",le=\"2.5e-05\"}") == 1);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_bucket{stage=\"decrypt\",le=\"0.0005\"}") == 2);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_bucket{stage=\"decrypt\",le=\"10\"}") == 2);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_bucket{stage=\"decrypt\",le=\"+Inf\"}") == 3);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_count{stage=\"decrypt\"}") == 3);
    double sum = value_of(t, "cipherdex_stage_seconds_sum{stage=\"decrypt\"}");
    CU_ASSERT(sum > 60.0003 && sum < 60.0004);
    CU_ASSERT(value_of(t, "cipherdex_stage_seconds_count{stage=\"keys\"}") == 0);
    CU_ASSERT(value_of(t, "cipherdex_budget_waits_total") == 3);
    CU_ASSERT(value_of(t, "cipherdex_connections") == 3);
    CU_ASSERT(strstr(t, "cipherdex_block_cache") == NULL); /* no pull given */
    /* Every line is a comment or `name{labels} value` with a name from our namespace. */
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        CU_ASSERT_FATAL(nl != NULL);
        CU_ASSERT(line[0] == '#' || strncmp(line, "cipherdex_", 10) == 0);
        line = nl + 1;
    }
    free(t);
    app_metrics_pull p = {.cache_hits = 3,
                          .cache_misses = 1,
                          .subkey_derivations = 7,
                          .maint_swept = 11,
                          .maint_waiting = 4,
                          .maint_waiting_bytes = 4096};
    t = render(m, &p);
    CU_ASSERT(value_of(t, "cipherdex_block_cache_hit_ratio") == 0.75);
    CU_ASSERT(value_of(t, "cipherdex_subkey_derivations_total") == 7);
    CU_ASSERT(value_of(t, "cipherdex_swept_records_total") == 11);
    CU_ASSERT(value_of(t, "cipherdex_sweep_waiting_records") == 4);
    CU_ASSERT(value_of(t, "cipherdex_sweep_waiting_bytes") == 4096);
    CU_ASSERT(value_of(t, "cipherdex_compactions_total") == 0);
    free(t);
    app_metrics_free(m);
    app_metrics_free(NULL);
}

static app_health_state g_state;

static void health(void *arg, app_health *out)
{
    (void)arg;
    out->state = g_state;
    snprintf(out->detail, sizeof(out->detail), "\"token\":\"%s\",\"store\":\"ok\"",
             g_state == APP_HEALTH_DOWN ? "unreachable" : "ok");
}

static void pull(void *arg, app_metrics_pull *p)
{
    (void)arg;
    p->cache_hits = 9;
    p->cache_misses = 1;
}

static void test_http(void)
{
    app_metrics *m = NULL;
    app_http *h = NULL;
    CU_ASSERT_FATAL(app_metrics_new(&m) == CDX_OK);
    CU_ASSERT_FATAL(app_http_new("127.0.0.1:0", m, health, pull, NULL, &h) == CDX_OK);
    uint16_t port = app_http_port(h);
    CU_ASSERT(port != 0);
    app_metrics_request(m, APP_OP_HEALTH, CDX_OK);
    char *r = fx_http(AF_INET, port, "GET /metrics HTTP/1.0\r\n\r\n");
    CU_ASSERT(strncmp(r, "HTTP/1.0 200", 12) == 0 || strncmp(r, "HTTP/1.1 200", 12) == 0);
    CU_ASSERT(strstr(r, "text/plain; version=0.0.4") != NULL);
    CU_ASSERT(strstr(r, "cipherdex_requests_total{op=\"health\",code=\"OK\"} 1") != NULL);
    CU_ASSERT(strstr(r, "cipherdex_block_cache_hit_ratio 0.9") != NULL);
    free(r);
    static const struct {
        app_health_state s;
        const char *code, *body;
    } hs[] = {{APP_HEALTH_OK, " 200", "{\"status\":\"ok\",\"token\":\"ok\",\"store\":\"ok\"}"},
              {APP_HEALTH_DEGRADED, " 200", "{\"status\":\"degraded\","},
              {APP_HEALTH_DOWN, " 503", "{\"status\":\"down\",\"token\":\"unreachable\""}};
    for (size_t i = 0; i < 3; i++) {
        g_state = hs[i].s;
        r = fx_http(AF_INET, port, "GET /healthz HTTP/1.0\r\n\r\n");
        CU_ASSERT(strstr(r, hs[i].code) != NULL && strstr(r, hs[i].code) < strstr(r, "\r\n"));
        CU_ASSERT(strstr(r, hs[i].body) != NULL);
        free(r);
    }
    r = fx_http(AF_INET, port, "GET /nope HTTP/1.0\r\n\r\n");
    CU_ASSERT(strstr(r, " 404") != NULL);
    free(r);
    r = fx_http(AF_INET, port, "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
    CU_ASSERT(strstr(r, " 405") != NULL);
    free(r);
    app_http_free(h);
    /* IPv6 loopback (skipped quietly where the host has no ::1). */
    if (app_http_new("[::1]:0", m, health, NULL, NULL, &h) == CDX_OK) {
        g_state = APP_HEALTH_OK;
        r = fx_http(AF_INET6, app_http_port(h), "GET /healthz HTTP/1.0\r\n\r\n");
        CU_ASSERT(strstr(r, " 200") != NULL);
        free(r);
        r = fx_http(AF_INET6, app_http_port(h), "GET /metrics HTTP/1.0\r\n\r\n");
        CU_ASSERT(strstr(r, "cipherdex_block_cache") == NULL); /* no pull function */
        free(r);
        app_http_free(h);
    }
    CU_ASSERT_EQUAL(app_http_new("nonsense", m, health, NULL, NULL, &h), CDX_ERR_CONFIG);
    CU_ASSERT_EQUAL(app_http_new("127.0.0.1:99999", m, health, NULL, NULL, &h), CDX_ERR_CONFIG);
    /* A port already bound: UNAVAILABLE, not a crash. */
    app_http *h1 = NULL, *h2 = NULL;
    CU_ASSERT_FATAL(app_http_new("127.0.0.1:0", m, health, NULL, NULL, &h1) == CDX_OK);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", app_http_port(h1));
    CU_ASSERT_EQUAL(app_http_new(addr, m, health, NULL, NULL, &h2), CDX_ERR_UNAVAILABLE);
    app_http_free(h1);
    app_http_free(NULL);
    app_metrics_free(m);
}

int main(void)
{
    static const fx_test tests[] = {
        {"counters and histograms", test_counters_and_histograms},
        {"HTTP /healthz and /metrics", test_http},
    };
    return fx_cunit_run1("metrics", tests, FX_LEN(tests));
}
