/*
 * app_flow.h - admission control and connection timeouts, sans-IO.
 *
 * The network thread tells a connection's app_flow what happened (bytes
 * arrived, a frame header announced its length, a frame completed, a
 * response was queued or flushed) and asks two questions: may I read from
 * this connection now (app_flow_may_read), and must it be closed for a
 * timeout (app_flow_check). No sockets, no clocks of its own: times are
 * passed in, so every rule is tested deterministically.
 *
 * Rules (the [server] keys that set them are in docs/CONFIG.md):
 *   - a global in-flight byte budget (app_budget) covers every request from
 *     the moment its frame header is read until it is answered, the working
 *     memory a worker reserves for it (app_dispatch), and its answer from
 *     the moment it is queued until it is written; a frame that does not fit
 *     waits, with reading paused (no buffering);
 *   - at most max_outstanding requests per connection (received, not yet
 *     answered); reading pauses at the cap;
 *   - queued response bytes above output_high_water pause reading and keep
 *     the connection's received requests from starting (app_flow_may_start):
 *     a client that does not read its answers holds at most about
 *     output_high_water + one answer of output;
 *   - a TLS handshake must finish within handshake_timeout_ms;
 *   - while a frame is arriving the average rate since its first byte must
 *     stay at least min_recv_bytes_per_s once a grace second has passed
 *     (slow-loris); a connection with nothing outstanding and no partial
 *     frame is closed after idle_timeout_s, and so is one whose unread
 *     answers stay above output_high_water with nothing written for
 *     idle_timeout_s (a stalled reader would otherwise hold its share of the
 *     budget for ever).
 * Not thread-safe: the network thread owns every app_flow. The budget is
 * shared with the workers through the app_budget_* calls (atomic).
 */
#ifndef APP_FLOW_H
#define APP_FLOW_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct app_budget {
    uint64_t limit;
    _Atomic uint64_t used;
    uint64_t waits; /* times a frame had to wait for the budget (network thread) */
} app_budget;

/* Take n bytes if they fit under the limit; false (nothing taken) otherwise. Thread-safe. */
bool app_budget_take(app_budget *b, uint64_t n);

/* Take n bytes even past the limit (bytes that already exist, e.g. a packed answer). Thread-safe.
 */
void app_budget_force(app_budget *b, uint64_t n);

/* Give n bytes back (never below 0). Thread-safe. */
void app_budget_give(app_budget *b, uint64_t n);

typedef struct app_flow_limits {
    uint32_t max_outstanding;
    uint64_t output_high_water;
    uint32_t handshake_timeout_ms;
    uint32_t idle_timeout_s;
    uint32_t min_recv_bytes_per_s;
} app_flow_limits;

typedef enum app_flow_verdict {
    APP_FLOW_OK = 0,
    APP_FLOW_HANDSHAKE_TIMEOUT,
    APP_FLOW_IDLE_TIMEOUT,
    APP_FLOW_TOO_SLOW,
    APP_FLOW_STALLED_READER, /* answers above the high-water mark, none written for idle_timeout_s
                              */
} app_flow_verdict;

typedef struct app_flow {
    const app_flow_limits *lim;
    app_budget *budget;
    bool handshake_done;
    int64_t opened_ms, last_activity_ms;
    /* the frame being received */
    bool in_frame;
    int64_t frame_start_ms;
    uint64_t frame_bytes_seen; /* bytes received so far, header included */
    uint64_t frame_charge;     /* budget held for it (0 until granted) */
    uint64_t frame_waiting;    /* announced length still waiting for budget (0: none) */
    /* requests received and not yet flushed */
    uint32_t outstanding;
    uint64_t charged;    /* budget held by outstanding requests */
    uint64_t out_queued; /* response bytes queued, not yet written */
} app_flow;

/* Start accounting for a connection opened at now_ms. */
void app_flow_init(app_flow *f, const app_flow_limits *lim, app_budget *budget, int64_t now_ms);

/* The TLS handshake finished at now_ms: the idle clock starts, the handshake deadline ends. */
void app_flow_handshake_done(app_flow *f, int64_t now_ms);

/*
 * A frame header announced `len` body bytes (the caller already refused
 * lengths over the frame cap). Tries to charge the budget: true when
 * granted (read on), false when the frame must wait (stop reading; call
 * app_flow_retry after budget is released).
 */
bool app_flow_frame_header(app_flow *f, uint64_t len, int64_t now_ms);

/* Retry a waiting frame's charge; true when granted now. */
bool app_flow_retry(app_flow *f);

/*
 * n bytes of a frame (its length header included) arrived; the first byte
 * of a frame starts its receive clock.
 */
void app_flow_bytes(app_flow *f, uint64_t n, int64_t now_ms);

/*
 * The current frame completed: it becomes an outstanding request holding
 * its charge. Returns the charge (to pass to app_flow_response_flushed).
 */
uint64_t app_flow_frame_done(app_flow *f, int64_t now_ms);

/* A response of `bytes` was queued for writing: charged to the budget (app_budget_force) until
 * written. */
void app_flow_response_queued(app_flow *f, uint64_t bytes);

/*
 * `bytes` of queued responses were written: their charge is given back.
 * When a whole response is flushed, also call app_flow_request_done with
 * its request's charge (if it still holds one).
 */
void app_flow_written(app_flow *f, uint64_t bytes, int64_t now_ms);

/*
 * May the next received request of this connection start? False while its
 * queued output is above output_high_water (it waits until the client
 * reads; reading from it has stopped too).
 */
bool app_flow_may_start(const app_flow *f);

/* A request's response is fully written (or abandoned): release its charge. */
void app_flow_request_done(app_flow *f, uint64_t charge);

/* May the network thread read from this connection now? */
bool app_flow_may_read(const app_flow *f);

/* Timeouts at now_ms. */
app_flow_verdict app_flow_check(const app_flow *f, int64_t now_ms);

/* The connection closes: give back every charge it holds (frames in flight and queued output too).
 */
void app_flow_close(app_flow *f);

#endif
