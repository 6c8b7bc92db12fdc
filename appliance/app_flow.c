/* Admission control and timeouts for one connection (see app_flow.h). */
#include "app_flow.h"

#include <string.h>

#define SLOW_GRACE_MS 1000 /* a frame's first second is never "too slow" */

bool app_budget_take(app_budget *b, uint64_t n)
{
    uint64_t u = atomic_load(&b->used);
    do {
        if (u + n > b->limit || u + n < u)
            return false;
    } while (!atomic_compare_exchange_weak(&b->used, &u, u + n));
    return true;
}

void app_budget_force(app_budget *b, uint64_t n)
{
    atomic_fetch_add(&b->used, n);
}

void app_budget_give(app_budget *b, uint64_t n)
{
    uint64_t u = atomic_load(&b->used), v;
    do
        v = n > u ? 0 : u - n;
    while (!atomic_compare_exchange_weak(&b->used, &u, v));
}

void app_flow_init(app_flow *f, const app_flow_limits *lim, app_budget *budget, int64_t now_ms)
{
    memset(f, 0, sizeof(*f));
    f->lim = lim;
    f->budget = budget;
    f->opened_ms = f->last_activity_ms = now_ms;
}

void app_flow_handshake_done(app_flow *f, int64_t now_ms)
{
    f->handshake_done = true;
    f->last_activity_ms = now_ms;
}

/* A frame is charged its length plus a floor, so empty frames still count. */
static uint64_t charge_of(uint64_t len)
{
    return len + 64;
}

bool app_flow_frame_header(app_flow *f, uint64_t len, int64_t now_ms)
{
    if (!f->in_frame) { /* header bytes normally start the frame (app_flow_bytes) */
        f->in_frame = true;
        f->frame_start_ms = now_ms;
        f->frame_bytes_seen = 0;
    }
    f->last_activity_ms = now_ms;
    f->frame_charge = 0;
    f->frame_waiting = charge_of(len);
    return app_flow_retry(f);
}

bool app_flow_retry(app_flow *f)
{
    if (!f->frame_waiting)
        return true;
    if (!app_budget_take(f->budget, f->frame_waiting)) {
        f->budget->waits++;
        return false;
    }
    f->frame_charge = f->frame_waiting;
    f->frame_waiting = 0;
    return true;
}

void app_flow_bytes(app_flow *f, uint64_t n, int64_t now_ms)
{
    if (!f->in_frame && n) { /* the first byte of a frame, header included, starts its clock */
        f->in_frame = true;
        f->frame_start_ms = now_ms;
        f->frame_bytes_seen = 0;
    }
    f->frame_bytes_seen += n;
    f->last_activity_ms = now_ms;
}

uint64_t app_flow_frame_done(app_flow *f, int64_t now_ms)
{
    uint64_t c = f->frame_charge;
    f->in_frame = false;
    f->frame_charge = 0;
    f->frame_waiting = 0;
    f->outstanding++;
    f->charged += c;
    f->last_activity_ms = now_ms;
    return c;
}

void app_flow_response_queued(app_flow *f, uint64_t bytes)
{
    f->out_queued += bytes;
    app_budget_force(f->budget, bytes); /* the answer exists: it counts until written */
}

void app_flow_written(app_flow *f, uint64_t bytes, int64_t now_ms)
{
    if (bytes > f->out_queued)
        bytes = f->out_queued;
    f->out_queued -= bytes;
    app_budget_give(f->budget, bytes);
    f->last_activity_ms = now_ms;
}

bool app_flow_may_start(const app_flow *f)
{
    return f->out_queued <= f->lim->output_high_water;
}

void app_flow_request_done(app_flow *f, uint64_t charge)
{
    if (f->outstanding)
        f->outstanding--;
    charge = charge > f->charged ? f->charged : charge;
    f->charged -= charge;
    app_budget_give(f->budget, charge);
}

bool app_flow_may_read(const app_flow *f)
{
    if (f->frame_waiting)
        return false; /* the budget is exhausted: do not buffer the body */
    if (f->outstanding >= f->lim->max_outstanding)
        return false;
    if (f->out_queued > f->lim->output_high_water)
        return false;
    return true;
}

app_flow_verdict app_flow_check(const app_flow *f, int64_t now_ms)
{
    if (!f->handshake_done)
        return now_ms - f->opened_ms > (int64_t)f->lim->handshake_timeout_ms
                   ? APP_FLOW_HANDSHAKE_TIMEOUT
                   : APP_FLOW_OK;
    /* A frame waiting for budget is our doing, not the peer's: never "slow". */
    if (f->in_frame && !f->frame_waiting && f->lim->min_recv_bytes_per_s) {
        int64_t el = now_ms - f->frame_start_ms;
        if (el > SLOW_GRACE_MS &&
            f->frame_bytes_seen * 1000 < (uint64_t)el * f->lim->min_recv_bytes_per_s)
            return APP_FLOW_TOO_SLOW;
    }
    /* Above the mark nothing is read, so the last activity is the last write progress. */
    if (f->out_queued > f->lim->output_high_water && f->lim->idle_timeout_s &&
        now_ms - f->last_activity_ms > (int64_t)f->lim->idle_timeout_s * 1000)
        return APP_FLOW_STALLED_READER;
    if (!f->in_frame && f->outstanding == 0 && f->out_queued == 0 && f->lim->idle_timeout_s &&
        now_ms - f->last_activity_ms > (int64_t)f->lim->idle_timeout_s * 1000)
        return APP_FLOW_IDLE_TIMEOUT;
    return APP_FLOW_OK;
}

void app_flow_close(app_flow *f)
{
    app_budget_give(f->budget, f->charged + f->frame_charge + f->out_queued);
    f->charged = f->frame_charge = f->out_queued = 0;
    f->frame_waiting = 0;
    f->outstanding = 0;
    f->in_frame = false;
}
