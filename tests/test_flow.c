/* test_flow: admission control and timeouts (appliance/app_flow.c), deterministic clocks. */
#include <CUnit/Basic.h>

#include "app_flow.h"
#include "fx_cunit.h"

static const app_flow_limits LIM = {.max_outstanding = 16,
                                    .output_high_water = 1000,
                                    .handshake_timeout_ms = 10000,
                                    .idle_timeout_s = 300,
                                    .min_recv_bytes_per_s = 1024};

/* Receive one whole frame of len bytes at time t; returns its charge. */
static uint64_t frame(app_flow *f, uint64_t len, int64_t t)
{
    app_flow_bytes(f, 4, t);
    CU_ASSERT(app_flow_frame_header(f, len, t));
    app_flow_bytes(f, len, t);
    return app_flow_frame_done(f, t);
}

static void test_outstanding_cap(void)
{
    app_budget b = {.limit = 1 << 30};
    app_flow f;
    app_flow_init(&f, &LIM, &b, 0);
    app_flow_handshake_done(&f, 0);
    uint64_t charges[16];
    for (int i = 0; i < 16; i++) {
        CU_ASSERT(app_flow_may_read(&f));
        charges[i] = frame(&f, 100, 1);
    }
    CU_ASSERT_FALSE(app_flow_may_read(&f)); /* 16 outstanding: stop reading */
    CU_ASSERT_EQUAL(b.used, 16 * (100 + 64));
    app_flow_response_queued(&f, 10);
    app_flow_written(&f, 10, 2);
    app_flow_request_done(&f, charges[0]);
    CU_ASSERT(app_flow_may_read(&f));
    for (int i = 1; i < 16; i++)
        app_flow_request_done(&f, charges[i]);
    CU_ASSERT_EQUAL(b.used, 0);
    CU_ASSERT_EQUAL(f.outstanding, 0);
}

static void test_budget_shared(void)
{
    app_budget b = {.limit = 1000};
    app_flow a, c;
    app_flow_init(&a, &LIM, &b, 0);
    app_flow_init(&c, &LIM, &b, 0);
    app_flow_handshake_done(&a, 0);
    app_flow_handshake_done(&c, 0);
    uint64_t ca = frame(&a, 700, 1); /* 764 of 1000 */
    app_flow_bytes(&c, 4, 2);
    CU_ASSERT_FALSE(app_flow_frame_header(&c, 300, 2)); /* 364 does not fit: wait */
    CU_ASSERT_FALSE(app_flow_may_read(&c));             /* and do not buffer its body */
    CU_ASSERT_EQUAL(b.waits, 1);
    /* Waiting on the budget is not the peer's slowness. */
    CU_ASSERT_EQUAL(app_flow_check(&c, 100000), APP_FLOW_OK);
    CU_ASSERT_FALSE(app_flow_retry(&c));
    app_flow_request_done(&a, ca);
    CU_ASSERT(app_flow_retry(&c));
    CU_ASSERT(app_flow_may_read(&c));
    CU_ASSERT_EQUAL(b.used, 364);
    /* Closing mid-frame gives the budget back. */
    app_flow_close(&c);
    CU_ASSERT_EQUAL(b.used, 0);
}

static void test_output_high_water(void)
{
    app_budget b = {.limit = 1 << 20};
    app_flow f;
    app_flow_init(&f, &LIM, &b, 0);
    app_flow_handshake_done(&f, 0);
    uint64_t c = frame(&f, 10, 0);
    app_flow_response_queued(&f, 5000); /* the client is not reading its answers */
    app_flow_request_done(&f, c);
    CU_ASSERT_FALSE(app_flow_may_read(&f));
    app_flow_written(&f, 4500, 1);
    CU_ASSERT(app_flow_may_read(&f));
    /* Queued output is not idleness. */
    app_flow_response_queued(&f, 10);
    CU_ASSERT_EQUAL(app_flow_check(&f, 1000000), APP_FLOW_OK);
}

/* Answers count against the budget until written; above the high-water mark no request starts. */
static void test_answers_charged(void)
{
    app_budget b = {.limit = 1 << 20};
    app_flow f;
    app_flow_init(&f, &LIM, &b, 0);
    app_flow_handshake_done(&f, 0);
    uint64_t c1 = frame(&f, 10, 0), c2 = frame(&f, 10, 0);
    CU_ASSERT(app_flow_may_start(&f));
    app_flow_response_queued(&f, 800); /* an answer nobody reads */
    app_flow_request_done(&f, c1);
    CU_ASSERT_EQUAL(b.used, 800 + c2); /* the answer, and the request still waiting */
    CU_ASSERT(app_flow_may_start(&f)); /* 800 <= 1000: the next one may run */
    app_flow_response_queued(&f, 800);
    app_flow_request_done(&f, c2);
    CU_ASSERT_FALSE(app_flow_may_start(&f)); /* 1600 > 1000: the rest wait for the client */
    CU_ASSERT_FALSE(app_flow_may_read(&f));
    CU_ASSERT_EQUAL(b.used, 1600);
    app_flow_written(&f, 1600, 1);
    CU_ASSERT(app_flow_may_start(&f));
    CU_ASSERT_EQUAL(b.used, 0);
    /* Closing with unread answers gives their charge back. */
    uint64_t c3 = frame(&f, 10, 2);
    app_flow_response_queued(&f, 5000);
    app_flow_request_done(&f, c3);
    CU_ASSERT_EQUAL(b.used, 5000);
    /* Above the mark with nothing written for idle_timeout_s: a stalled reader, closed. */
    CU_ASSERT_EQUAL(app_flow_check(&f, 2 + 300000), APP_FLOW_OK);
    CU_ASSERT_EQUAL(app_flow_check(&f, 2 + 300001), APP_FLOW_STALLED_READER);
    app_flow_written(&f, 100, 300000); /* progress restarts the clock */
    CU_ASSERT_EQUAL(app_flow_check(&f, 300001), APP_FLOW_OK);
    app_flow_close(&f);
    CU_ASSERT_EQUAL(b.used, 0);
    /* Workers reserve beside frames: a take that does not fit takes nothing. */
    CU_ASSERT(app_budget_take(&b, 1 << 19));
    CU_ASSERT_FALSE(app_budget_take(&b, (1 << 19) + 1));
    app_budget_force(&b, 1 << 20); /* bytes that exist already: past the limit */
    CU_ASSERT_EQUAL(b.used, (1 << 19) + (1 << 20));
    app_budget_give(&b, 1 << 30);
    CU_ASSERT_EQUAL(b.used, 0);
}

static void test_timeouts(void)
{
    app_budget b = {.limit = 1 << 20};
    app_flow f;
    app_flow_init(&f, &LIM, &b, 1000);
    CU_ASSERT_EQUAL(app_flow_check(&f, 11000), APP_FLOW_OK);
    CU_ASSERT_EQUAL(app_flow_check(&f, 11001), APP_FLOW_HANDSHAKE_TIMEOUT);
    app_flow_handshake_done(&f, 5000);
    CU_ASSERT_EQUAL(app_flow_check(&f, 5000 + 300000), APP_FLOW_OK);
    CU_ASSERT_EQUAL(app_flow_check(&f, 5000 + 300001), APP_FLOW_IDLE_TIMEOUT);
    /* Slow loris: 3 header bytes, then nothing. */
    app_flow_bytes(&f, 3, 6000);
    CU_ASSERT_EQUAL(app_flow_check(&f, 7000), APP_FLOW_OK); /* grace second */
    CU_ASSERT_EQUAL(app_flow_check(&f, 7001), APP_FLOW_TOO_SLOW);
    /* A steady 2 KB/s body is fine; 500 B/s is not. */
    app_flow g;
    app_flow_init(&g, &LIM, &b, 0);
    app_flow_handshake_done(&g, 0);
    app_flow_bytes(&g, 4, 0);
    CU_ASSERT(app_flow_frame_header(&g, 100000, 0));
    for (int s = 1; s <= 10; s++) {
        app_flow_bytes(&g, 2048, s * 1000);
        CU_ASSERT_EQUAL(app_flow_check(&g, s * 1000), APP_FLOW_OK);
    }
    for (int s = 11; s <= 40; s++)
        app_flow_bytes(&g, 500, s * 1000);
    CU_ASSERT_EQUAL(app_flow_check(&g, 40000), APP_FLOW_TOO_SLOW);
    app_flow_close(&g);
    /* Outstanding work is never idle. */
    app_flow h;
    app_flow_init(&h, &LIM, &b, 0);
    app_flow_handshake_done(&h, 0);
    uint64_t c = frame(&h, 10, 0);
    CU_ASSERT_EQUAL(app_flow_check(&h, 10000000), APP_FLOW_OK);
    app_flow_request_done(&h, c);
    CU_ASSERT_EQUAL(app_flow_check(&h, 10000000), APP_FLOW_IDLE_TIMEOUT);
    app_flow_close(&f);
    app_flow_close(&h);
    CU_ASSERT_EQUAL(b.used, 0);
}

int main(void)
{
    static const fx_test tests[] = {
        {"16 outstanding requests, then reading stops", test_outstanding_cap},
        {"global in-flight budget across connections", test_budget_shared},
        {"output high-water mark", test_output_high_water},
        {"answers charged until written; none started above the high-water mark",
         test_answers_charged},
        {"handshake, idle and slow-receive timeouts", test_timeouts},
    };
    return fx_cunit_run1("flow", tests, FX_LEN(tests));
}
